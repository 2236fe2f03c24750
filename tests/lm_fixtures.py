"""Tiny language models and a tokenizer built locally and round-tripped through disk (nothing is downloaded)."""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from tests.conftest import build

VOCAB = 50  # tests.conftest.build's vocab_size


def make_tokenizer(directory: Path):
    """A word-level tokenizer over `w0 .. w49`, saved to and loaded back from `directory`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(vocab={f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="w0", bos_token="w1", eos_token="w1", pad_token="w2")
    tok.save_pretrained(directory)
    # Loaded from disk, as a user's would be (TransformerLens needs the name_or_path a saved one carries).
    return PreTrainedTokenizerFast.from_pretrained(directory)


def saved_model(kind: str, directory: Path, square: bool = True, seed: int = 0, dtype=None):
    """A tiny random GPT-2 / GPT-J saved with save_pretrained and loaded back with from_pretrained."""
    import transformers

    build(kind, square=square, seed=seed).save_pretrained(directory)
    cls = {"gpt2": transformers.GPT2LMHeadModel, "gptj": transformers.GPTJForCausalLM}[kind]
    kwargs = {} if dtype is None else {"dtype": dtype}
    return cls.from_pretrained(directory, local_files_only=True, **kwargs).eval()


TL_NAMES = {"gpt2": "gpt2", "gptj": "EleutherAI/gpt-j-6b"}
"""The architecture names TransformerLens picks its adapter by; with hf_model= nothing is fetched."""


def bridge_of(model, tokenizer):
    """(TransformerBridge over `model`, an untouched deep copy of `model`): booting rewires the HF modules."""
    from importlib.metadata import version

    import pytest
    from transformer_lens.model_bridge import TransformerBridge

    if int(version("transformer-lens").split(".")[0]) < 4:
        pytest.skip("TransformerLens 3.x's bridge still asks the Hub for the config when given hf_model=")
    reference = copy.deepcopy(model)
    kind = "gptj" if type(model).__name__.startswith("GPTJ") else "gpt2"
    bridge = TransformerBridge.boot_transformers(TL_NAMES[kind], hf_model=model, tokenizer=tokenizer, device="cpu")
    return bridge.eval(), reference


def token_batch(batch: int = 2, seq: int = 6, seed: int = 3) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def has_hooked_transformer() -> bool:
    """Whether the installed TransformerLens still has HookedTransformer (removed in 4.0)."""
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        return False
    return True


def hooked_of(model, tokenizer):
    """(HookedTransformer holding `model`'s weights unprocessed, `model`), through TL's own weight converters."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights, convert_gptj_weights

    c = model.config
    gptj = type(model).__name__.startswith("GPTJ")
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, n_ctx=c.n_positions, d_head=c.n_embd // c.n_head, n_heads=c.n_head,
        d_mlp=c.n_inner, d_vocab=c.vocab_size, act_fn="gelu_new", normalization_type="LN",
        eps=c.layer_norm_epsilon, original_architecture=type(model).__name__,
        **(dict(parallel_attn_mlp=True, positional_embedding_type="rotary", rotary_dim=c.rotary_dim,
                rotary_adjacent_pairs=True) if gptj else {}))
    hooked = HookedTransformer(cfg, tokenizer=tokenizer)
    sd = (convert_gptj_weights if gptj else convert_gpt2_weights)(model, cfg)
    hooked.load_and_process_state_dict(sd, fold_ln=False, center_writing_weights=False, center_unembed=False,
                                       fold_value_biases=False)
    return hooked.eval(), model
