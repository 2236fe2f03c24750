"""`surgery.load`: a model object, a local checkpoint directory or a zoo name -> the wrapped model."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from adapters import Adapter, wrap
from surgery.core.dtypes import parse_dtype
from surgery.errors import SurgeryError

# config.json "model_type" -> (class for an "architectures" entry naming a bare body, default class)
_HF_CLASSES = {
    "decision_transformer": ("DecisionTransformerModel", "DecisionTransformerModel"),
    "gpt2": ("GPT2Model", "GPT2LMHeadModel"),
    "gptj": ("GPTJModel", "GPTJForCausalLM"),
}


def load(source, *, metadata=None, tokenizer=None, dtype=None, device: str | torch.device | None = None) -> Adapter:
    """Wrap a model for analysis and patching.

    `source` is a model object (or an Adapter), a local Hugging Face checkpoint directory, the name
    of a model shipped in the zoo, or a model id already in the local Hugging Face cache. Nothing is
    ever downloaded. Checkpoints are read straight into `dtype` (a torch dtype or "bf16", "fp16",
    "float32"...): GPT-J in bf16 needs 12 GB, not the 24 GB of float32. `metadata` (decision
    transformers: a DTMetadata, dict or JSON path) and `tokenizer` (LMs) are attached to the adapter.
    """
    dtype = parse_dtype(dtype)
    if isinstance(source, (str, Path)):
        adapter = _load_path(source, metadata, dtype)
    else:
        adapter = wrap(source)
        if metadata is not None:
            adapter.metadata = _as_metadata(metadata)
    if tokenizer is not None:
        adapter.tokenizer = tokenizer
    if dtype is not None or device is not None:
        adapter.model.to(device=device, dtype=dtype)
    return adapter


def _load_path(source, metadata, dtype) -> Adapter:
    path = Path(source).expanduser()
    if path.is_dir():
        return _load_dir(path, metadata, dtype)
    if path.exists():
        raise SurgeryError(f"{path} is a file; expected a checkpoint directory holding config.json")
    if _looks_like_path(str(source)):
        raise FileNotFoundError(f"model path {str(source)!r} does not exist")
    from surgery import zoo

    if str(source) in zoo.names():
        return _zoo_checkpoint(zoo.resolve(str(source)), metadata)
    cached = _hf_cache_snapshot(str(source))
    if cached is not None:
        return _load_dir(cached, metadata, dtype)
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


def _load_dir(path: Path, metadata, dtype=None) -> Adapter:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face checkpoint directory")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise SurgeryError(f"{config_file} is not valid JSON: {e}") from None
    model_type = config.get("model_type")
    if model_type not in _HF_CLASSES:
        raise SurgeryError(f"{path}: model_type {model_type!r} is not supported; "
                           f"supported: {', '.join(sorted(_HF_CLASSES))}")
    if model_type == "decision_transformer" and (metadata is not None or (path / "metadata.json").is_file()):
        return _zoo_checkpoint(path, metadata)

    import transformers

    bare, default = _HF_CLASSES[model_type]
    cls_name = bare if bare in config.get("architectures", []) else default
    # transformers 5 calls it `dtype`, 4.x `torch_dtype`.
    key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    kwargs = {} if dtype is None else {key: dtype}
    model = getattr(transformers, cls_name).from_pretrained(path, local_files_only=True, **kwargs)
    model.eval()
    adapter = wrap(model)
    if metadata is not None:
        adapter.metadata = _as_metadata(metadata)
    if model_type != "decision_transformer" and any((path / f).is_file() for f in ("tokenizer.json", "vocab.json")):
        adapter.tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
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
