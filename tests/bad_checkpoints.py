"""Damaged checkpoint directories, one defect at a time, for the loader and CLI tests (and the case table)."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch

from tests.conftest import build

TENSOR_DEFECTS = ("missing", "more_blocks", "unexpected", "shape", "nan", "inf")
"""Defects of the tensors themselves: the file reads fine, its contents do not fit the config."""
FILE_DEFECTS = ("truncated", "empty", "garbage", "bad_offsets", "dangling_link", "no_weights")
"""Defects of model.safetensors as a file."""
SHARD_DEFECTS = ("missing_shard", "shard_lacks_tensor", "index_not_json", "pickle_shard")
"""Defects of a sharded checkpoint (model.safetensors.index.json + shards)."""
PICKLE_FILES = ("pytorch_model.bin", "model.pt", "model.pth", "model.ckpt", "pytorch_model.bin.index.json")
"""Pickle checkpoints (alone in the directory, no safetensors): refused, never unpickled."""
DEFECTS = TENSOR_DEFECTS + FILE_DEFECTS + SHARD_DEFECTS + tuple(f"pickle:{f}" for f in PICKLE_FILES)

EXTRA = "h.0.mlp.extra.weight"  # the suffix of the tensor "unexpected" adds


class Boom:
    """Unpickling this creates `marker`: proof that pickle code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def target(state_keys) -> str:
    """The tensor a defect damages: block 1's MLP input weight (every kind has one)."""
    return next(k for k in sorted(state_keys) if k.endswith((".h.1.mlp.c_fc.weight", ".h.1.mlp.fc_in.weight")))


def save(kind: str, directory: Path, sharded: bool = False) -> Path:
    """A good tiny checkpoint (`kind` as in tests.conftest.build; "dt" gets a metadata.json)."""
    directory.mkdir(parents=True, exist_ok=True)
    build(kind).save_pretrained(directory, **({"max_shard_size": "20KB"} if sharded else {}))
    if kind == "dt":
        from surgery.behaviour.metadata import DTMetadata

        DTMetadata(env_id="Hopper-v5", state_dim=5, act_dim=3, max_ep_len=40).save(directory)
    return directory


def damage(directory: Path, defect: str, marker: Path | None = None) -> str | None:
    """Apply `defect` to a saved checkpoint in place; returns the name of the tensor damaged (None: a file defect)."""
    from safetensors.torch import load_file, save_file

    st = directory / "model.safetensors"
    if defect in SHARD_DEFECTS:
        return _damage_shards(directory, defect, marker or directory / "PWNED")
    if defect.startswith("pickle:"):
        name = defect.split(":", 1)[1]
        state = load_file(st)
        st.unlink()
        if name.endswith(".index.json"):  # a sharded pickle checkpoint: the index and its one shard
            shard = "pytorch_model-00001-of-00001.bin"
            (directory / name).write_text(json.dumps({"weight_map": {k: shard for k in state}}))
            name = shard
        with open(directory / name, "wb") as f:  # what torch.save would write, plus a payload
            pickle.dump({**state, "payload": Boom(marker or directory / "PWNED")}, f)
        return None
    if defect in FILE_DEFECTS:
        data = st.read_bytes()
        if defect == "truncated":
            st.write_bytes(data[: len(data) * 2 // 3])
        elif defect == "empty":
            st.write_bytes(b"")
        elif defect == "garbage":
            st.write_bytes(b"this is not a safetensors file at all" * 10)
        elif defect == "bad_offsets":  # a header whose byte range disagrees with the tensor's shape
            n = int.from_bytes(data[:8], "little")
            header = json.loads(data[8:8 + n])
            name = target(k for k in header if k != "__metadata__")
            header[name]["shape"] = [header[name]["shape"][0] // 2, header[name]["shape"][1]]
            raw = json.dumps(header).encode().ljust(n)
            st.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n:])
            return name
        elif defect == "dangling_link":  # a Hugging Face cache whose blob never arrived
            st.unlink()
            st.symlink_to(directory / "blobs-never-downloaded")
        else:
            st.unlink()
        return None
    state = load_file(st)
    name = target(state)
    if defect == "missing":
        del state[name]
    elif defect == "more_blocks":
        config = json.loads((directory / "config.json").read_text())
        config["n_layer"] += 1
        (directory / "config.json").write_text(json.dumps(config))
        return name.replace(".h.1.", f".h.{config['n_layer'] - 1}.")
    elif defect == "unexpected":
        name = name.split("h.1.")[0] + EXTRA
        state[name] = torch.zeros(3)
    elif defect == "shape":
        state[name] = torch.zeros(state[name].shape[0] + 1, state[name].shape[1])
    else:
        state[name] = state[name].clone()
        state[name][0, 0] = float("nan") if defect == "nan" else float("inf")
    save_file(state, st, metadata={"format": "pt"})
    return name


def _damage_shards(directory: Path, defect: str, marker: Path) -> str | None:
    from safetensors.torch import load_file, save_file

    index_file = directory / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    name = sorted(k for k, v in index["weight_map"].items() if v == shard)[0]
    if defect == "missing_shard":
        (directory / shard).unlink()
    elif defect == "pickle_shard":  # the index names a pickle where a .safetensors shard belongs
        pickled = shard.replace(".safetensors", ".bin")
        (directory / pickled).write_bytes(pickle.dumps({"payload": Boom(marker)}))
        index["weight_map"] = {k: pickled if v == shard else v for k, v in index["weight_map"].items()}
        index_file.write_text(json.dumps(index))
        return None
    elif defect == "shard_lacks_tensor":
        state = load_file(directory / shard)
        del state[name]
        save_file(state, directory / shard, metadata={"format": "pt"})
    else:
        index_file.write_text("{not json")
        return None
    return name


def bad_checkpoint(kind: str, directory: Path, defect: str, marker: Path | None = None) -> str | None:
    """Save a tiny `kind` checkpoint in `directory` (sharded for shard defects) and damage it; returns the tensor."""
    save(kind, directory, sharded=defect in SHARD_DEFECTS)
    return damage(directory, defect, marker)
