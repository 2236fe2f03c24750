"""Save and load decision-transformer checkpoints: HF config + safetensors + metadata.json, never pickle.

The weights are read and checked by `surgery.safe_weights` (missing, unexpected, misshapen, non-finite
tensors, damaged files and pickles are refused), the same reader as every other checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import torch

from surgery.behaviour.metadata import METADATA_FILE, DTMetadata
from surgery.errors import SurgeryError
from surgery.files import read_json_object
from surgery.safe_weights import check_config_ints, read_model

CONFIG_FILE = "config.json"


def save_checkpoint(model, meta: DTMetadata, directory: str | Path) -> Path:
    """Write config.json, model.safetensors and metadata.json into directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    check_match(model.config, meta.validate(), directory / METADATA_FILE)
    model.save_pretrained(directory, safe_serialization=True)
    meta.save(directory)
    return directory


def load_checkpoint(path: str | Path, metadata=None):
    """Load a HF decision-transformer checkpoint directory; returns (model in eval mode, DTMetadata).

    metadata: None (read metadata.json in the directory), a path to a JSON file, a dict, or a DTMetadata.
    """
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint directory at {path}")
    config = DecisionTransformerConfig.from_dict(_read_config(path / CONFIG_FILE))
    meta = _resolve_metadata(path, metadata)
    check_match(config, meta, path / METADATA_FILE if metadata is None else metadata)
    # Float32 whatever the file holds: rollouts and their statistics were measured in it.
    return read_model(DecisionTransformerModel, config, path, dtype=torch.float32), meta


def _read_config(file: Path) -> dict:
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint has no {CONFIG_FILE}: expected {file}")
    d = read_json_object(file)
    if d.get("model_type") != "decision_transformer":
        kind = d.get("model_type")
        raise SurgeryError(f"{file} is not a decision-transformer config (model_type={kind!r}, expected 'decision_transformer')")
    for key in ("state_dim", "act_dim", "hidden_size", "n_layer", "max_ep_len"):
        if key not in d:
            raise SurgeryError(f"{file}: {key} must be a positive integer, got nothing")
    check_config_ints(d, file, ("state_dim", "act_dim", "hidden_size", "n_layer", "max_ep_len", "n_head",
                                "n_positions"), ("n_inner",))
    return d


def _resolve_metadata(path: Path, metadata) -> DTMetadata:
    if metadata is None:
        if not (path / METADATA_FILE).is_file():
            raise FileNotFoundError(
                f"{path} has no {METADATA_FILE}; pass the metadata (a JSON file, dict or DTMetadata) "
                "with env_id, state_dim, act_dim, state_mean, state_std, return_scale, target_returns")
        return DTMetadata.load(path / METADATA_FILE)
    if isinstance(metadata, DTMetadata):
        return metadata.validate()
    if isinstance(metadata, dict):
        return DTMetadata.from_dict(metadata)
    if isinstance(metadata, (str, Path)):
        return DTMetadata.load(metadata)
    raise SurgeryError(f"metadata must be None, a path, a dict or a DTMetadata, got {type(metadata).__name__}")


def check_match(config, meta: DTMetadata, where) -> None:
    """Raise ValueError if the metadata disagrees with the model config."""
    problems = [
        f"{name}={getattr(meta, name)} but config.{cname}={getattr(config, cname)}"
        for name, cname in (("state_dim", "state_dim"), ("act_dim", "act_dim"), ("max_ep_len", "max_ep_len"))
        if getattr(meta, name) != getattr(config, cname)
    ]
    if meta.discrete and config.action_tanh:
        problems.append("discrete=True but config.action_tanh=True (discrete models output logits)")
    if 3 * meta.context_len > config.n_positions:
        problems.append(f"context_len={meta.context_len} needs {3 * meta.context_len} positions, config.n_positions={config.n_positions}")
    if problems:
        raise SurgeryError(f"metadata {where} does not match the checkpoint: " + "; ".join(problems))
