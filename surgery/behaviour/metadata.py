"""The metadata a decision-transformer checkpoint needs beyond its weights, stored as metadata.json."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from surgery.errors import SurgeryError
from surgery.files import read_json_object

METADATA_FILE = "metadata.json"


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# Annotation -> (check of a JSON value, what it should be): JSON gives strings, numbers, lists and objects.
_KINDS = {
    "str": (lambda x: isinstance(x, str), "a string"),
    "int": (lambda x: isinstance(x, int) and not isinstance(x, bool), "an integer"),
    "bool": (lambda x: isinstance(x, bool), "true or false"),
    "float": (_number, "a number"),
    "list[float]": (lambda x: isinstance(x, list) and all(map(_number, x)), "a list of numbers"),
    "list[str]": (lambda x: isinstance(x, list) and all(isinstance(v, str) for v in x), "a list of strings"),
    "dict": (lambda x: isinstance(x, dict), "a JSON object"),
}


@dataclass
class DTMetadata:
    """Everything needed to act with a decision transformer in its environment."""

    env_id: str
    """gymnasium id, e.g. "Hopper-v5"."""
    state_dim: int
    """Observation size."""
    act_dim: int
    """Action size; for discrete actions the number of actions (one-hot in, logits out)."""
    discrete: bool = False
    """True for one-hot actions and logits out (LunarLander), False for tanh-squashed continuous actions."""
    state_mean: list[float] = field(default_factory=list)
    """Per-dimension mean used to normalise states before the model sees them."""
    state_std: list[float] = field(default_factory=list)
    """Per-dimension std used to normalise states (already floored away from zero)."""
    return_scale: float = 1.0
    """Returns-to-go are divided by this before the model sees them (the DT paper uses 1000 for MuJoCo)."""
    target_returns: list[float] = field(default_factory=list)
    """Returns to condition on at evaluation, in the environment's units; the first is the default."""
    context_len: int = 20
    """Number of timesteps the model sees (K in the DT paper)."""
    max_ep_len: int = 1000
    """Size of the timestep embedding table."""
    state_names: list[str] = field(default_factory=list)
    """Human names of the observation dimensions (labels in reports)."""
    action_names: list[str] = field(default_factory=list)
    """Human names of the action dimensions."""
    dataset: str = ""
    """Which dataset the model was trained on."""
    seeds: dict = field(default_factory=dict)
    """Seeds used for data collection, training and evaluation."""
    evaluation: dict = field(default_factory=dict)
    """Evaluation results recorded when the checkpoint was made (episodes, seed, returns, score)."""
    notes: str = ""
    """Free text: how it was made, caveats."""

    def validate(self) -> "DTMetadata":
        """Raise ValueError on an inconsistent record; return self."""
        problems = []
        if self.state_dim <= 0 or self.act_dim <= 0:
            problems.append(f"state_dim={self.state_dim} and act_dim={self.act_dim} must be positive")
        for name in ("state_mean", "state_std"):
            v = getattr(self, name)
            if v and len(v) != self.state_dim:
                problems.append(f"{name} has {len(v)} entries, state_dim is {self.state_dim}")
            if any(not math.isfinite(x) for x in v):
                problems.append(f"{name} has non-finite entries")
        if any(s <= 0 for s in self.state_std):
            problems.append("state_std must be positive")
        if not (self.return_scale > 0 and math.isfinite(self.return_scale)):
            problems.append(f"return_scale must be a positive number, got {self.return_scale}")
        for name, n in (("state_names", self.state_dim), ("action_names", self.act_dim)):
            v = getattr(self, name)
            if v and len(v) != n:
                problems.append(f"{name} has {len(v)} entries, expected {n}")
        if problems:
            raise SurgeryError("invalid decision-transformer metadata: " + "; ".join(problems))
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / METADATA_FILE
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def from_dict(cls, d: dict) -> "DTMetadata":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SurgeryError(f"unknown metadata fields {unknown}; valid fields: {sorted(known)}")
        missing = [n for n in ("env_id", "state_dim", "act_dim") if n not in d]
        if missing:
            raise SurgeryError(f"metadata is missing required fields {missing}")
        wrong = [f"{f.name} must be {_KINDS[f.type][1]}, got {d[f.name]!r}" for f in fields(cls)
                 if f.name in d and not _KINDS[f.type][0](d[f.name])]
        if wrong:
            raise SurgeryError("invalid decision-transformer metadata: " + "; ".join(wrong))
        return cls(**d).validate()

    @classmethod
    def load(cls, path: str | Path) -> "DTMetadata":
        """Read metadata.json (or a directory holding one), with a clear error if absent or corrupt."""
        path = Path(path)
        if path.is_dir():
            path = path / METADATA_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no decision-transformer metadata at {path}")
        d = read_json_object(path)
        try:
            return cls.from_dict(d)
        except SurgeryError as e:
            raise SurgeryError(f"{path}: {e}") from None
