"""`surgery.load`: a model object, a local checkpoint directory or a zoo name -> the wrapped model."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from adapters import Adapter, wrap
from surgery.core.dtypes import parse_device, parse_dtype
from surgery.errors import SurgeryError
from surgery.files import read_json_object
from surgery.safe_weights import check_config_ints, read_model

# config.json "model_type" -> (class for an "architectures" entry naming a bare body, default class)
_HF_CLASSES = {
    "decision_transformer": ("DecisionTransformerModel", "DecisionTransformerModel"),
    "gpt2": ("GPT2Model", "GPT2LMHeadModel"),
    "gptj": ("GPTJModel", "GPTJForCausalLM"),
}
# config.json numbers a model is built from: (positive integers, positive integers or null); absent ones take
# transformers' defaults. (A decision transformer's are checked by surgery.behaviour.checkpoint.)
_CONFIG_INTS = {
    "decision_transformer": (("state_dim", "act_dim", "hidden_size", "n_layer", "n_head", "max_ep_len"), ("n_inner",)),
    "gpt2": (("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"), ("n_inner",)),
    "gptj": (("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"), ("n_inner", "rotary_dim")),
}


def load(source, *, metadata=None, tokenizer=None, dtype=None, device: str | torch.device | None = None) -> Adapter:
    """Wrap a model for analysis and patching.

    `source` is a model object (or an Adapter), a local Hugging Face checkpoint directory, the name
    of a model shipped in the zoo, or a model id already in the local Hugging Face cache. Nothing is
    ever downloaded. Checkpoints are read from safetensors only (pickle files are refused, never
    opened), every tensor checked against the config before any analysis (`surgery.safe_weights`),
    straight into `dtype` (a torch dtype or "bf16", "fp16", "float32"...; default: the checkpoint's)
    and onto `device`: GPT-J in bf16 needs 12 GB, not the 24 GB of float32. `metadata` (decision
    transformers: a DTMetadata, dict or JSON path) and `tokenizer` (LMs) are attached to the adapter.
    """
    dtype, device = parse_dtype(dtype), parse_device(device)
    if isinstance(source, (str, Path)):
        adapter = _load_path(source, metadata, dtype, device)
    else:
        adapter = wrap(source)
        if metadata is not None:
            adapter.metadata = _as_metadata(metadata)
    if tokenizer is not None:
        adapter.tokenizer = tokenizer
    if dtype is not None or device is not None:
        adapter.model.to(device=device, dtype=dtype)
    return adapter


def _load_path(source, metadata, dtype, device) -> Adapter:
    path = Path(source).expanduser()
    from surgery import zoo

    bare_zoo_name = str(source) in zoo.names() and not _looks_like_path(str(source))
    if path.is_dir() and bare_zoo_name:  # `zoo build --out .` makes exactly such a ./hopper
        if not (path / "config.json").is_file():
            warnings.warn(f"{source!r}: the folder ./{source} here is not a checkpoint (no config.json); loading the "
                          f"zoo model {source!r}", stacklevel=3)
            return _zoo_checkpoint(zoo.resolve(str(source)), metadata)
        warnings.warn(f"{source!r} is both a checkpoint folder here and a zoo model; loading the folder "
                      f"{path.resolve()} (write its path differently, e.g. ./{source}/, to silence this; move it "
                      "away to load the zoo model)", stacklevel=3)
    if path.is_dir():
        return _load_dir(path, metadata, dtype, device)
    if path.exists():
        raise SurgeryError(f"{path} is a file; expected a checkpoint directory holding config.json")
    if _looks_like_path(str(source)):
        raise FileNotFoundError(f"model path {str(source)!r} does not exist")
    if str(source) in zoo.names():
        return _zoo_checkpoint(zoo.resolve(str(source)), metadata)
    cached = _hf_cache_snapshot(str(source))
    if cached is not None:
        return _load_dir(cached, metadata, dtype, device)
    hint = f"; zoo models: {', '.join(zoo.names())}" if zoo.names() else ""
    raise FileNotFoundError(f"{source!r} is neither a checkpoint directory, a zoo model name nor a model in the "
                            f"local Hugging Face cache (nothing is downloaded; fetch it yourself first, e.g. "
                            f"`huggingface-cli download {source}`){hint}")


def _looks_like_path(name: str) -> bool:
    """Absolute, relative-looking, or deeper than a hub id's "org/name": not a zoo name or a hub id."""
    return name.startswith((".", "~", "/", os.sep)) or name.count("/") > 1


def _hf_cache_snapshot(model_id: str) -> Path | None:
    """The local snapshot directory of a cached Hugging Face model id, or None (never downloads)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model_id, local_files_only=True))
    except Exception:  # not cached, not a valid id, or no huggingface_hub: the caller says what would work
        return None


def _load_dir(path: Path, metadata, dtype=None, device=None) -> Adapter:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face checkpoint directory")
    config = read_json_object(config_file)
    model_type = config.get("model_type")
    if model_type not in _HF_CLASSES:
        raise SurgeryError(f"{path}: model_type {model_type!r} is not supported; "
                           f"supported: {', '.join(sorted(_HF_CLASSES))}")
    if model_type == "decision_transformer" and (metadata is not None or (path / "metadata.json").is_file()):
        return _zoo_checkpoint(path, metadata)

    import transformers

    bare, default = _HF_CLASSES[model_type]
    cls = getattr(transformers, bare if bare in (config.get("architectures") or []) else default)
    check_config_ints(config, config_file, *_CONFIG_INTS[model_type])
    try:
        hf_config = cls.config_class.from_dict(config)
    except (TypeError, ValueError) as e:
        raise SurgeryError(f"{config_file} is not a valid {cls.config_class.__name__}: {e}") from None
    adapter = wrap(read_model(cls, hf_config, path, dtype=dtype, device=device))
    if metadata is not None:
        adapter.metadata = _as_metadata(metadata)
    if model_type != "decision_transformer" and any((path / f).is_file() for f in ("tokenizer.json", "vocab.json")):
        try:
            adapter.tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        except Exception as e:  # noqa: BLE001  a malformed tokenizer.json fails as KeyError, TypeError, ... deep in HF
            raise SurgeryError(f"{path}: its tokenizer files cannot be read: {type(e).__name__}: {e}") from None
    return adapter


def _zoo_checkpoint(path: Path, metadata):
    """A decision transformer with its metadata.json, through the checked checkpoint reader."""
    from surgery.behaviour.checkpoint import load_checkpoint

    model, meta = load_checkpoint(path, metadata=metadata)
    adapter = wrap(model)
    adapter.metadata = meta
    return adapter


def _as_metadata(metadata):
    from surgery.behaviour.metadata import DTMetadata

    if isinstance(metadata, DTMetadata):
        return metadata
    if isinstance(metadata, dict):
        return DTMetadata.from_dict(metadata)
    return DTMetadata.load(metadata)
