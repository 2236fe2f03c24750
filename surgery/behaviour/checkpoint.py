"""Save and load decision-transformer checkpoints: HF config + safetensors + metadata.json, never pickle."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from surgery.behaviour.metadata import METADATA_FILE, DTMetadata
from surgery.errors import SurgeryError

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
TORCH_FILE = "pytorch_model.bin"  # older HF checkpoints (e.g. edbeeching/decision-transformer-gym-*)
# Buffers that transformers 4.x saved with GPT-2 blocks and newer versions no longer have.
_LEGACY_BUFFERS = (".attn.bias", ".attn.masked_bias")


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
    state = _read_weights(path)
    model = DecisionTransformerModel(config)
    _check_weights(model, state, path)
    model.load_state_dict({k: v for k, v in state.items() if not k.endswith(_LEGACY_BUFFERS)}, strict=False)
    return model.eval(), meta


def _read_config(file: Path) -> dict:
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint has no {CONFIG_FILE}: expected {file}")
    try:
        d = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SurgeryError(f"{file} is not valid JSON: {e}") from None
    if not isinstance(d, dict) or d.get("model_type") != "decision_transformer":
        kind = d.get("model_type") if isinstance(d, dict) else type(d).__name__
        raise SurgeryError(f"{file} is not a decision-transformer config (model_type={kind!r}, expected 'decision_transformer')")
    for key in ("state_dim", "act_dim", "hidden_size", "n_layer", "max_ep_len"):
        if not isinstance(d.get(key), int) or d[key] <= 0:
            raise SurgeryError(f"{file}: {key} must be a positive integer, got {d.get(key)!r}")
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


def _read_weights(path: Path) -> dict:
    st, pt = path / SAFETENSORS_FILE, path / TORCH_FILE
    try:
        if st.is_file():
            from safetensors.torch import load_file

            return load_file(st)
        if pt.is_file():
            # weights_only refuses anything but tensors and plain containers: no code runs.
            return torch.load(pt, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors and torch raise many kinds on a damaged file
        bad = st if st.is_file() else pt
        raise SurgeryError(f"{bad} is corrupt or not a weights file: {type(e).__name__}: {e}") from None
    raise FileNotFoundError(f"{path} has no weights: expected {SAFETENSORS_FILE} (or {TORCH_FILE})")


def _check_weights(model, state: dict, path: Path) -> None:
    """Every parameter present with the config's shape and finite values; nothing unknown."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SurgeryError(f"weights in {path} are not a mapping of names to tensors")
    want = model.state_dict()
    have = {k: v for k, v in state.items() if not k.endswith(_LEGACY_BUFFERS)}
    missing, unknown = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    wrong = [f"{k}: file {tuple(have[k].shape)} vs config {tuple(want[k].shape)}"
             for k in sorted(set(want) & set(have)) if have[k].shape != want[k].shape]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensors (e.g. {missing[:3]})")
    if unknown:
        problems.append(f"{len(unknown)} unexpected tensors (e.g. {unknown[:3]})")
    if wrong:
        problems.append("shapes differ from config.json: " + "; ".join(wrong[:5]))
    nonfinite = [k for k, v in have.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if nonfinite:
        problems.append(f"non-finite values in {nonfinite[:3]}")
    if problems:
        raise SurgeryError(f"weights in {path} do not fit its {CONFIG_FILE}: " + "; ".join(problems))
