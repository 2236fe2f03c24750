"""GPT-2 / GPT-J of published shapes with random weights (benchmarks, width comparisons); real ones: surgery.load."""
from __future__ import annotations

from surgery.errors import SurgeryError

SHAPES = {  # name: (model_type, d_model, n_heads, d_mlp, n_blocks, vocab)
    "gpt2-small": ("gpt2", 768, 12, 3072, 12, 50257),
    "gpt2-medium": ("gpt2", 1024, 16, 4096, 24, 50257),
    "gpt2-large": ("gpt2", 1280, 20, 5120, 36, 50257),
    "gpt2-xl": ("gpt2", 1600, 25, 6400, 48, 50257),
    "gptj-6b": ("gptj", 4096, 16, 16384, 28, 50400),
}
"""The published shapes, for models with random weights (benchmarks, the width comparison)."""


def random_lm(shape: str, n_blocks: int | None = None, device="cpu", dtype="float32", seed: int = 0):
    """A GPT-2/GPT-J of a published shape with N(0, 0.02) weights, allocated straight in `dtype` on `device`.

    `n_blocks` (default: the shape's) lets a one-block model stand in for a full one that would not
    fit (GPT-J-6B in float32 is 24 GB). No float32 detour: GPT-J in bf16 costs 12 GB, not 36.
    The rotary tables are left unset: for weight analysis only, not for running the forward.
    """
    import torch
    import transformers as tf

    from surgery.core.dtypes import parse_device, parse_dtype
    from surgery.safe_weights import retie, tied_aliases

    if shape not in SHAPES:
        raise SurgeryError(f"shape={shape!r} is not known; valid: {', '.join(SHAPES)}")
    kind, d, h, d_mlp, L, vocab = SHAPES[shape]
    if n_blocks is not None and (isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or not 1 <= n_blocks <= L):
        raise SurgeryError(f"n_blocks={n_blocks!r} is not a number of blocks of {shape} (valid: 1..{L}, or None: all)")
    device, dtype = parse_device(device) or torch.device("cpu"), parse_dtype(dtype) or torch.float32
    n = L if n_blocks is None else n_blocks
    if kind == "gpt2":
        model_cls, cfg = tf.GPT2LMHeadModel, tf.GPT2Config(vocab_size=vocab, n_embd=d, n_head=h, n_inner=d_mlp, n_layer=n)
    else:
        model_cls = tf.GPTJForCausalLM
        cfg = tf.GPTJConfig(vocab_size=vocab, n_embd=d, n_head=h, n_inner=d_mlp, n_layer=n, rotary_dim=64)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):  # no memory until to_empty, then only in the final dtype
            model = model_cls(cfg)
    finally:
        torch.set_default_dtype(old)
    model.tie_weights()  # GPT-2 ties lm_head to wte (transformers 5 does not at construction on meta)
    aliases = tied_aliases(model)
    model = model.to_empty(device=device).eval()
    retie(model, aliases)  # to_empty gives every module its own new tensor: share the tied ones again
    randomize(model, seed)
    return model


def randomize(model, seed: int = 0) -> None:
    """Redraw weights N(0, 0.02) (HF's GPT init scale), LayerNorm gains 1, biases 0, in place."""
    import torch

    g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.02, generator=g)
            else:
                p.fill_(1.0 if "ln" in name and name.endswith("weight") else 0.0)
