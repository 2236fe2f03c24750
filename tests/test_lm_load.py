"""Loading LMs from disk in the dtype asked, and random models of published shapes."""
from __future__ import annotations

import pytest
import torch

import surgery
from surgery.core.dtypes import parse_dtype
from surgery.errors import SurgeryError
from surgery.lm import shapes as lm_load
from tests.lm_fixtures import make_tokenizer, saved_model


@pytest.mark.parametrize("kind", ["gpt2", "gptj"])
@pytest.mark.parametrize("dtype", [None, "bf16", "fp16"])
def test_load_from_a_directory_in_the_dtype_asked(tmp_path, kind, dtype):
    ref = saved_model(kind, tmp_path)  # saves the tiny model there; this is the float32 original
    make_tokenizer(tmp_path)
    a = surgery.load(tmp_path, dtype=dtype)
    want = parse_dtype(dtype) or torch.float32
    assert a.mlp_in(0).dtype == want and a.tokenizer is not None
    assert a.embedding_sets()["token_out"].labels[5] == "w5"
    # Same weights, rounded once to the dtype: the decomposition sees the stored values.
    W = surgery.wrap(ref).mlp_in(1).detach()
    torch.testing.assert_close(a.mlp_in(1).detach().float(), W.to(want).float(), atol=0, rtol=0)
    svd = surgery.decompose(a, block=1, weight="OV", method="gram", k=3)
    torch.testing.assert_close(svd.S, surgery.decompose(ref, block=1, weight="OV", k=3).S, rtol=1e-2, atol=1e-4)


def test_missing_model_is_not_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(FileNotFoundError, match=r"'EleutherAI/gpt-j-6b' is neither a checkpoint directory, a zoo "
                                                r"model name nor a model in the local Hugging Face cache \(nothing is "
                                                r"downloaded"):
        surgery.load("EleutherAI/gpt-j-6b")


def test_bad_dtype():
    with pytest.raises(ValueError, match=r"dtype='int8' is not known; valid: float32, fp32, float16, fp16, bfloat16, bf16"):
        parse_dtype("int8")


@pytest.mark.parametrize("shape", ["gpt2-small", pytest.param("gptj-6b", marks=pytest.mark.slow)])
def test_random_model_of_a_published_shape(shape):
    """One block of the real shape, allocated straight in bf16 (GPT-J: 1.2 GB, not 2.4 GB)."""
    m = lm_load.random_lm(shape, n_blocks=1, dtype="bf16")
    a = surgery.wrap(m)
    kind, d, h, d_mlp, _, vocab = lm_load.SHAPES[shape]
    assert (a.n_blocks, a.d_model, a.n_heads, a.d_mlp) == (1, d, h, d_mlp)
    assert a.mlp_in(0).dtype == torch.bfloat16 and a.embedding_sets()["token_out"].vectors.shape == (vocab, d)
    std = a.mlp_in(0).float().std().item()
    assert 0.019 < std < 0.021
    assert (m.lm_head.weight is m.transformer.wte.weight) == m.config.tie_word_embeddings == (kind == "gpt2")


@pytest.mark.parametrize("dtype", ["float32", "bf16"])
def test_random_gpt2_head_is_tied_as_its_config_says(dtype):
    m = lm_load.random_lm("gpt2-small", n_blocks=1, dtype=dtype)
    assert m.config.tie_word_embeddings
    assert m.lm_head.weight is m.transformer.wte.weight
    assert m.lm_head.weight.data_ptr() == m.transformer.wte.weight.data_ptr()
    a = surgery.wrap(m)
    sets = a.embedding_sets()
    assert torch.equal(sets["token_in"].vectors, sets["token_out"].vectors)
    with torch.no_grad():  # an edit of the token embeddings is seen by the output head too
        m.transformer.wte.weight[7] = 0.5
    assert torch.equal(a.embedding_sets()["token_out"].vectors[7], torch.full((768,), 0.5, dtype=m.dtype))


@pytest.mark.parametrize("device, blocks, message", [
    ("bogus", 1, "device='bogus' is not a device"),
    ("cpu", 0, r"n_blocks=0 is not a number of blocks of gpt2-small \(valid: 1..12, or None: all\)"),
    ("cpu", 13, r"n_blocks=13 is not a number of blocks of gpt2-small"),  # more than the shape: memory, no meaning
])
def test_random_model_bad_input(device, blocks, message):
    with pytest.raises(SurgeryError, match=message):
        lm_load.random_lm("gpt2-small", n_blocks=blocks, device=device)
