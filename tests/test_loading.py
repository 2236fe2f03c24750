"""`surgery.load`: model objects, checkpoint directories, clear errors."""
from __future__ import annotations

import json

import pytest
import torch

import surgery
from tests.conftest import build, example_inputs, outputs


@pytest.mark.parametrize("kind, cls", [("dt", "DecisionTransformerModel"), ("gpt2", "GPT2LMHeadModel"),
                                       ("gpt2-body", "GPT2Model"), ("gptj", "GPTJForCausalLM"),
                                       ("gptj-body", "GPTJModel")])
def test_checkpoint_saved_and_loaded_by_path(tmp_path, kind, cls):
    model = build(kind)
    model.save_pretrained(tmp_path)
    a = surgery.load(tmp_path)
    assert type(a.model).__name__ == cls
    loaded = a.model.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded[k], v), k
    inputs = example_inputs(model)
    assert all(torch.equal(x, y) for x, y in zip(outputs(model, inputs), outputs(a.model, inputs)))


def test_dt_checkpoint_with_metadata_file(tmp_path):
    from surgery.behaviour.metadata import DTMetadata

    model = build("dt")
    model.save_pretrained(tmp_path)
    DTMetadata(env_id="Hopper-v5", state_dim=5, act_dim=3, max_ep_len=40, action_names=["x", "y", "z"]).save(tmp_path)
    a = surgery.load(tmp_path)
    assert a.metadata.env_id == "Hopper-v5"
    assert list(a.embedding_sets()["action_out"].labels) == ["x", "y", "z"]


def test_load_options(tmp_path):
    model = build("gpt2")
    a = surgery.load(model, dtype=torch.bfloat16)
    assert a.model is model and model.transformer.h[0].mlp.c_fc.weight.dtype == torch.bfloat16


def test_missing_and_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="model path '.*nope' does not exist"):
        surgery.load(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="'nope' is neither a checkpoint directory, a zoo model name nor a "
                                                "model in the local Hugging Face cache.*zoo models: .*hopper"):
        surgery.load("nope")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        surgery.load(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        surgery.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type 'llama' is not supported; supported: decision_transformer, gpt2, gptj"):
        surgery.load(tmp_path)
    f = tmp_path / "weights.bin"
    f.write_bytes(b"")
    with pytest.raises(ValueError, match="is a file; expected a checkpoint directory"):
        surgery.load(f)


def test_broken_config_and_tokenizer_files_are_named_not_tracebacks(tmp_path):
    model = build("gpt2")
    model.save_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"x": 1}))  # JSON, but no tokenizer
    with pytest.raises(ValueError, match="its tokenizer files cannot be read: KeyError"):
        surgery.load(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "activation_function": "nosuch"}))
    with pytest.raises(ValueError, match="does not describe a buildable GPT2LMHeadModel: KeyError: 'nosuch'"):
        surgery.load(tmp_path)


def test_a_folder_named_like_a_zoo_model_is_not_taken_silently(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hopper").mkdir()  # what `zoo build --out .` leaves behind, before it has written anything
    with pytest.warns(UserWarning, match="not a checkpoint .* loading the zoo model 'hopper'"):
        assert surgery.load("hopper").metadata.env_id == "Hopper-v5"
    build("dt").save_pretrained(tmp_path / "hopper")  # a checkpoint of that name: taken, and said so
    with pytest.warns(UserWarning, match="both a checkpoint folder here and a zoo model; loading the folder"):
        assert surgery.load("hopper").model.config.n_layer == build("dt").config.n_layer


def test_raw_model_objects_work_everywhere():
    model = build("gptj")
    with surgery.patch(model, block=1, weight="V", idx=0, op="zero"):
        S = surgery.decompose(model, block=1, weight="V").S
    assert S[-1] < 1e-5
