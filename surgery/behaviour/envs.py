"""What the project knows about each environment: human names and D4RL reference returns."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EnvInfo:
    """Names for an environment's observation and action dimensions, and score references."""

    env_id: str
    state_names: tuple[str, ...]
    action_names: tuple[str, ...]
    discrete: bool = False
    # D4RL normalisation: 100 * (return - random) / (expert - random); None where D4RL has none.
    ref_random: float | None = None
    ref_expert: float | None = None
    make_kwargs: dict = field(default_factory=dict)

    def normalized_score(self, ret: float) -> float | None:
        """D4RL-normalised score of a return, or None where no reference exists."""
        if self.ref_random is None or self.ref_expert is None:
            return None
        return 100.0 * (ret - self.ref_random) / (self.ref_expert - self.ref_random)


# Observation layouts follow gymnasium's documentation of the v5 environments
# (positions first, then velocities; the x position is excluded by default).
HOPPER = EnvInfo(
    env_id="Hopper-v5",
    state_names=(
        "rootz", "rooty", "thigh", "leg", "foot",
        "vel_rootx", "vel_rootz", "vel_rooty", "vel_thigh", "vel_leg", "vel_foot",
    ),
    action_names=("thigh", "leg", "foot"),
    ref_random=-20.272305,
    ref_expert=3234.3,
)

HALFCHEETAH = EnvInfo(
    env_id="HalfCheetah-v5",
    state_names=(
        "rootz", "rooty", "bthigh", "bshin", "bfoot", "fthigh", "fshin", "ffoot",
        "vel_rootx", "vel_rootz", "vel_rooty",
        "vel_bthigh", "vel_bshin", "vel_bfoot", "vel_fthigh", "vel_fshin", "vel_ffoot",
    ),
    action_names=("bthigh", "bshin", "bfoot", "fthigh", "fshin", "ffoot"),
    ref_random=-280.178953,
    ref_expert=12135.0,
)

LUNARLANDER = EnvInfo(
    env_id="LunarLander-v3",
    state_names=("x", "y", "vx", "vy", "angle", "vangle", "left_leg", "right_leg"),
    action_names=("noop", "fire_left", "fire_main", "fire_right"),
    discrete=True,
)

ENVS: dict[str, EnvInfo] = {e.env_id: e for e in (HOPPER, HALFCHEETAH, LUNARLANDER)}


def env_info(env_id: str) -> EnvInfo | None:
    """The EnvInfo for an environment id, matching the family when the version differs."""
    if env_id in ENVS:
        return ENVS[env_id]
    family = env_id.split("-")[0]
    return next((e for e in ENVS.values() if e.env_id.split("-")[0] == family), None)
