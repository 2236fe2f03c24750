"""Every loading path refuses damaged weights in one line naming the file and tensor; nothing is ever unpickled."""
from __future__ import annotations

import json

import pytest
import torch

import surgery
from surgery.errors import SurgeryError
from tests.bad_checkpoints import DEFECTS, EXTRA, bad_checkpoint, save
from tests.conftest import build, example_inputs, outputs

LOADERS = ["dt", "gpt2", "gptj", "hfcache", "zoo"]
"""A decision-transformer directory, GPT-2 and GPT-J directories, a model id in the HF cache, a zoo name."""


def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in tmp_path; returns the snapshot directory of the id 'org/tiny'."""
    import huggingface_hub.constants as hub

    repo = tmp_path / "hub" / "models--org--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return repo / "snapshots" / ("0" * 40)


def damaged_source(loader, defect, tmp_path, monkeypatch):
    """(what to pass to surgery.load, the tensor damaged or None, the pickle payload's marker file)."""
    marker = tmp_path / "PWNED"
    if loader == "hfcache":
        return "org/tiny", bad_checkpoint("gpt2", hf_cache(tmp_path, monkeypatch), defect, marker), marker
    if loader == "zoo":
        from surgery import zoo

        monkeypatch.setattr(zoo, "MODELS_DIR", tmp_path / "zoo")
        return "tiny", bad_checkpoint("dt", tmp_path / "zoo" / "tiny", defect, marker), marker
    return tmp_path / "ckpt", bad_checkpoint(loader, tmp_path / "ckpt", defect, marker), marker


def expected_file(defect: str) -> str:
    """The file a refusal of `defect` must name."""
    if defect.startswith("pickle:"):
        return "pytorch_model-00001-of-00001.bin" if defect.endswith("index.json") else defect.split(":")[1]
    return {"missing_shard": "model-00003-of-00003.safetensors", "shard_lacks_tensor": "model-00003-of-00003",
            "index_not_json": "model.safetensors.index.json", "no_weights": "has no weights",
            "pickle_shard": "model-00003-of-00003.bin", "dangling_link": "model.safetensors is a broken link",
            }.get(defect, "model.safetensors")


@pytest.mark.parametrize("defect", DEFECTS)
@pytest.mark.parametrize("loader", LOADERS)
def test_damaged_weights_are_refused_in_one_line(loader, defect, tmp_path, monkeypatch):
    source, tensor, marker = damaged_source(loader, defect, tmp_path, monkeypatch)
    kind = FileNotFoundError if defect == "no_weights" else SurgeryError
    with pytest.raises(kind) as e:
        surgery.load(source)
    message = str(e.value)
    assert "\n" not in message and expected_file(defect) in message, message
    if defect == "more_blocks":
        assert ".h.2." in message and "config.json has 3 blocks, the file 2" in message, message
    elif tensor is not None:
        assert repr(tensor) in message, message
    if defect.startswith("pickle"):
        assert "pickle" in message and "convert it to model.safetensors yourself" in message
    assert "weights_only" not in message
    assert not marker.exists(), "pickle code ran"


@pytest.mark.parametrize("kind", ["dt", "gpt2", "gptj"])
def test_sharded_checkpoint_loads_bitwise(kind, tmp_path):
    save(kind, tmp_path, sharded=True)
    model = build(kind)
    loaded = surgery.load(tmp_path).model
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ref = model.state_dict()
    assert loaded.state_dict().keys() == ref.keys()
    assert all(torch.equal(v, ref[k]) for k, v in loaded.state_dict().items())
    inputs = example_inputs(model)
    assert all(torch.equal(x, y) for x, y in zip(outputs(model, inputs), outputs(loaded, inputs)))


def _resave(directory, rename=lambda k: k, extra=None):
    from safetensors.torch import load_file, save_file

    state = {rename(k): v for k, v in load_file(directory / "model.safetensors").items()}
    state.update(extra or {})
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})


def test_openai_style_gpt2_checkpoint(tmp_path):
    """No `transformer.` prefix, the old attention buffers saved, lm_head absent: what the hub's gpt2 holds."""
    save("gpt2", tmp_path)
    model = build("gpt2")  # the same seed: the model saved
    _resave(tmp_path, lambda k: k.removeprefix("transformer."),
            {f"h.{i}.attn.bias": torch.tril(torch.ones(1, 1, 32, 32)) for i in range(2)}
            | {f"h.{i}.attn.masked_bias": torch.tensor(-1e4) for i in range(2)})
    loaded = surgery.load(tmp_path).model
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    assert torch.equal(loaded.transformer.h[1].mlp.c_fc.weight, model.transformer.h[1].mlp.c_fc.weight)
    inputs = example_inputs(model)
    assert all(torch.equal(x, y) for x, y in zip(outputs(model, inputs), outputs(loaded, inputs)))


def test_tied_copy_in_the_file_must_equal_its_original(tmp_path):
    model = build("gpt2")
    save("gpt2", tmp_path)
    _resave(tmp_path, extra={"lm_head.weight": model.lm_head.weight.detach().clone()})
    assert surgery.load(tmp_path).model.lm_head.weight is not None  # an equal copy is fine
    _resave(tmp_path, extra={"lm_head.weight": model.lm_head.weight.detach() + 1})
    with pytest.raises(SurgeryError, match=r"model.safetensors: tensor 'lm_head.weight' differs from "
                                           r"'transformer.wte.weight', but the config ties them"):
        surgery.load(tmp_path)


def test_head_checkpoint_read_as_a_bare_body(tmp_path):
    model = build("gpt2")
    save("gpt2", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "architectures": ["GPT2Model"]}))
    loaded = surgery.load(tmp_path).model
    assert type(loaded).__name__ == "GPT2Model"
    assert torch.equal(loaded.h[0].attn.c_attn.weight, model.transformer.h[0].attn.c_attn.weight)


@pytest.mark.parametrize("kind", ["gpt2", "gptj"])
def test_tying_follows_the_config(kind, tmp_path):
    save(kind, tmp_path)
    m = surgery.load(tmp_path, dtype="bf16").model
    tied = m.lm_head.weight is m.transformer.wte.weight
    assert tied == (kind == "gpt2") and m.lm_head.weight.dtype == torch.bfloat16


def test_stored_dtype_is_kept_and_overflow_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    save("gptj", tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    save_file({k: v.bfloat16() for k, v in state.items()}, tmp_path / "model.safetensors", metadata={"format": "pt"})
    assert surgery.load(tmp_path).mlp_in(0).dtype == torch.bfloat16  # dtype=None: the checkpoint's
    state["transformer.h.0.mlp.fc_out.weight"][3, 4] = 1e6  # finite in float32, inf in float16
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    assert surgery.load(tmp_path, dtype="bf16").mlp_in(0).dtype == torch.bfloat16
    with pytest.raises(SurgeryError, match=r"tensor 'transformer.h.0.mlp.fc_out.weight' is finite as stored \(torch."
                                           r"float32\) but overflows torch.float16 \(largest \|value\| 1e\+06\)"):
        surgery.load(tmp_path, dtype="fp16")


def test_pickle_beside_safetensors_is_ignored(tmp_path):
    """HF repositories often ship both: the safetensors are read, the pickle never opened."""
    from tests.bad_checkpoints import Boom

    save("gpt2", tmp_path)
    import pickle

    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps({"x": Boom(tmp_path / "PWNED")}))
    surgery.load(tmp_path)
    assert not (tmp_path / "PWNED").exists()


def test_unexpected_tensor_name_is_the_files(tmp_path):
    save("gpt2", tmp_path)
    _resave(tmp_path, extra={"transformer." + EXTRA: torch.zeros(2)})
    with pytest.raises(SurgeryError, match=r"1 unexpected tensor \('transformer.h.0.mlp.extra.weight'\)"):
        surgery.load(tmp_path)


def test_bad_config_numbers_are_one_line(tmp_path):
    save("gpt2", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key, value in (("n_layer", "two"), ("n_embd", -24), ("n_head", 5), ("vocab_size", 0)):
        (tmp_path / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(SurgeryError, match=f"config.json: {key}") as e:
            surgery.load(tmp_path)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("device, message", [
    ("bogus", r"device='bogus' is not a device; valid: cpu"),
    ("cuda:x", r"device='cuda:x' is not a device"),
    ("meta", r"device='meta' holds no data"),
])
def test_bad_devices(tmp_path, device, message):
    save("gpt2", tmp_path)
    with pytest.raises(SurgeryError, match=message):
        surgery.load(tmp_path, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line(tmp_path):
    save("gpt2", tmp_path)
    with pytest.raises(SurgeryError, match=r"device='cuda' is not available: this torch .* has no CUDA; valid: cpu"):
        surgery.load(tmp_path, device="cuda")
    with pytest.raises(SurgeryError, match="is not available"):
        surgery.load(build("gpt2"), device="cuda:1")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_read_straight_onto_cuda(tmp_path):
    save("gptj", tmp_path)
    m = surgery.load(tmp_path, dtype="bf16", device="cuda").model
    assert {p.device.type for p in m.parameters()} == {"cuda"} and m.lm_head.weight.dtype == torch.bfloat16
    with pytest.raises(SurgeryError, match="is not available"):
        surgery.load(tmp_path, device=f"cuda:{torch.cuda.device_count()}")
