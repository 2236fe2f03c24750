"""`surgery.load`: a model object, a local checkpoint directory or a zoo name -> the wrapped model."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from adapters import Adapter, wrap

# config.json "model_type" -> (class for an "architectures" entry naming a bare body, default class)
_HF_CLASSES = {
    "decision_transformer": ("DecisionTransformerModel", "DecisionTransformerModel"),
    "gpt2": ("GPT2Model", "GPT2LMHeadModel"),
    "gptj": ("GPTJModel", "GPTJForCausalLM"),
}


def load(source, *, metadata=None, tokenizer=None, dtype: torch.dtype | None = None,
         device: str | torch.device | None = None) -> Adapter:
    """Wrap a model for analysis and patching.

    `source` is a model object (or an Adapter), a local Hugging Face checkpoint directory, or the
    name of a model shipped in the zoo. Nothing is ever downloaded. `metadata` (decision
    transformers: a DTMetadata, dict or JSON path) and `tokenizer` (LMs) are attached to the adapter.
    """
    if isinstance(source, (str, Path)):
        adapter = _load_path(source, metadata)
    else:
        adapter = wrap(source)
        if metadata is not None:
            adapter.metadata = _as_metadata(metadata)
    if tokenizer is not None:
        adapter.tokenizer = tokenizer
    if dtype is not None or device is not None:
        adapter.model.to(device=device, dtype=dtype)
    return adapter


def _load_path(source, metadata) -> Adapter:
    path = Path(source).expanduser()
    if path.is_dir():
        return _load_dir(path, metadata)
    if path.exists():
        raise ValueError(f"{path} is a file; expected a checkpoint directory holding config.json")
    zoo = _zoo_names()
    if str(source) in zoo:
        from surgery import zoo as zoo_module
        return _zoo_checkpoint(zoo_module.resolve(str(source)), metadata)
    hint = f"; zoo models: {', '.join(zoo)}" if zoo else ""
    raise FileNotFoundError(f"{source!r} is neither a checkpoint directory nor a zoo model name{hint}")


def _load_dir(path: Path, metadata) -> Adapter:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face checkpoint directory")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_file} is not valid JSON: {e}") from None
    model_type = config.get("model_type")
    if model_type not in _HF_CLASSES:
        raise ValueError(f"{path}: model_type {model_type!r} is not supported; "
                         f"supported: {', '.join(sorted(_HF_CLASSES))}")
    if model_type == "decision_transformer" and (metadata is not None or (path / "metadata.json").is_file()):
        return _zoo_checkpoint(path, metadata)

    import transformers

    bare, default = _HF_CLASSES[model_type]
    cls_name = bare if bare in config.get("architectures", []) else default
    model = getattr(transformers, cls_name).from_pretrained(path, local_files_only=True)
    model.eval()
    adapter = wrap(model)
    if metadata is not None:
        adapter.metadata = _as_metadata(metadata)
    if model_type != "decision_transformer" and any((path / f).is_file() for f in ("tokenizer.json", "vocab.json")):
        adapter.tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    return adapter


def _zoo_checkpoint(path: Path, metadata):
    """A decision transformer with its metadata, through the zoo's checked loader."""
    from surgery import zoo

    model, meta = zoo.load_checkpoint(path, metadata=metadata)
    adapter = wrap(model)
    adapter.metadata = meta
    return adapter


def _zoo_names() -> list[str]:
    try:
        from surgery import zoo
    except ImportError:
        return []
    return zoo.names() if hasattr(zoo, "names") else []


def _as_metadata(metadata):
    from surgery.zoo.metadata import DTMetadata

    if isinstance(metadata, DTMetadata):
        return metadata
    if isinstance(metadata, dict):
        return DTMetadata.from_dict(metadata)
    return DTMetadata.load(metadata)
