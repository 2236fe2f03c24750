"""Side-by-side videos (GIF and MP4) of one episode with and without an edit, rendered headless.

MuJoCo renders off-screen through EGL (`MUJOCO_GL=egl`, the default set here) or, where EGL is
missing, OSMesa (`apt-get install -y libosmesa6`, then `MUJOCO_GL=osmesa`). The episode is played
by the same batched engine as every evaluation (`surgery.evaluate`), on a rendering environment.
"""
from __future__ import annotations

import os

from surgery.errors import SurgeryError

os.environ.setdefault("MUJOCO_GL", "egl")  # read when MuJoCo first renders; no display needed
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # Box2D environments draw with pygame: no window either

import tempfile  # noqa: E402
from contextlib import nullcontext  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["Clip", "record_episode", "side_by_side", "write_video", "edit_video"]


@dataclass
class Clip:
    """Frames of one episode: frames[i] shows the state after env step steps[i] (0 = the reset state)."""

    frames: np.ndarray
    """uint8 [T, H, W, 3]."""
    steps: list
    record: object
    """The episode's EpisodeRecord (return, length, failed ...)."""


class _Recorder:
    """An environment factory whose environments render every `every`-th step (and the last one)."""

    def __init__(self, env_id: str, size: tuple[int, int], every: int, limit: int | None, camera: str | None):
        self.env_id, self.size, self.every, self.limit, self.camera = env_id, size, every, limit, camera
        self.last = None

    def __call__(self):
        from surgery.behaviour.envs import env_info

        info = env_info(self.env_id)
        kwargs = dict(info.make_kwargs) if info else {}
        width, height = self.size
        # MuJoCo's default free camera stays where the agent started; the models' "track" camera follows it.
        camera = {} if self.camera is None else {"camera_name": self.camera}
        try:
            env = gym.make(self.env_id, render_mode="rgb_array", width=width, height=height, **camera, **kwargs)
        except TypeError:  # not a MuJoCo environment: it renders at its own size, with its own view
            env = gym.make(self.env_id, render_mode="rgb_array", **kwargs)
        self.last = _Recording(env, self.every, self.limit)
        return self.last


class _Recording(gym.Wrapper):
    """Keeps a rendered frame after reset, after every `every`-th step, and after the final one."""

    def __init__(self, env, every: int, limit: int | None):
        super().__init__(env)
        self.every, self.limit = every, limit
        self.frames, self.steps, self.t = [], [], 0

    def reset(self, **kwargs):
        out = self.env.reset(**kwargs)
        self.frames, self.steps, self.t = [self.env.render()], [0], 0
        return out

    def step(self, action):
        out = self.env.step(action)
        self.t += 1
        ended = out[2] or out[3] or (self.limit is not None and self.t >= self.limit)
        if self.t % self.every == 0 or ended:
            self.frames.append(self.env.render()), self.steps.append(self.t)
        return out


def record_episode(model, edit=None, *, seed: int = 0, target_return: float | None = None,
                   max_steps: int | None = None, size: tuple[int, int] = (256, 256), every: int = 1,
                   metadata=None, camera: str | None = "track") -> Clip:
    """Play episode 0 of run `seed` (optionally under `edit`, a context manager such as a patch) and keep its frames.

    camera: a MuJoCo camera name ("track" follows the body in Hopper, HalfCheetah and Walker2d; a
    model without that camera renders from the default view), or None for the default view.
    """
    from surgery.behaviour.evaluation import evaluate

    if every < 1:
        raise SurgeryError(f"every must be at least 1, got {every}")
    md = metadata or getattr(model, "metadata", None)
    if md is None:
        raise SurgeryError("record_episode needs the model's metadata (an adapter from surgery.load, or metadata=)")
    recorder = _Recorder(md.env_id, size, every, max_steps, camera)
    with edit if edit is not None else nullcontext():
        result = evaluate(model, episodes=1, seed=seed, target_return=target_return, env=recorder,
                          metadata=metadata, max_steps=max_steps, progress=False)
    rec = recorder.last
    return Clip(np.stack(rec.frames).astype(np.uint8), list(rec.steps), result.records[0])


def side_by_side(left: Clip, right: Clip, labels: tuple[str, str] = ("baseline", "edited"),
                 title: str | None = None) -> np.ndarray:
    """One video of two clips: the shorter one holds its last frame, dimmed and marked with how it ended."""
    n = max(len(left.frames), len(right.frames))
    h = max(left.frames.shape[1], right.frames.shape[1])
    panels = [_panel(c, n, h, name) for c, name in zip((left, right), labels)]
    gap = np.full((n, h, 4, 3), 255, np.uint8)
    frames = np.concatenate([panels[0], gap, panels[1]], axis=2)
    if title:
        frames = np.stack([_caption(f, title) for f in frames])
    return _even(frames)


def _panel(clip: Clip, n: int, height: int, name: str) -> np.ndarray:
    """The clip padded to n frames and height rows, each frame labelled with the step and the return so far."""
    from PIL import Image, ImageDraw

    rec = clip.record
    font = _font(max(10, height // 18))
    out = []
    for i in range(n):
        j = min(i, len(clip.frames) - 1)
        frame = clip.frames[j]
        if frame.shape[0] < height:
            frame = np.pad(frame, ((0, height - frame.shape[0]), (0, 0), (0, 0)), constant_values=255)
        over = i >= len(clip.frames)
        if over:
            frame = (frame * 0.55).astype(np.uint8)
        img = Image.fromarray(frame)
        draw = ImageDraw.Draw(img)
        draw.text((6, 4), name, fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0), font=font)
        status = f"step {clip.steps[j]}"
        if over or j == len(clip.frames) - 1:
            status += f"  {'FAILED' if rec.failed else 'ended'} at step {rec.length}, return {rec.episode_return:.0f}"
        draw.text((6, img.height - font.size - 6), status, fill=(255, 255, 255), stroke_width=2,
                  stroke_fill=(0, 0, 0), font=font)
        out.append(np.asarray(img))
    return np.stack(out)


def _caption(frame: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    font = _font(12)
    band = font.size + 8
    img = Image.new("RGB", (frame.shape[1], frame.shape[0] + band), (255, 255, 255))
    img.paste(Image.fromarray(frame), (0, band))
    ImageDraw.Draw(img).text((6, 4), text[:160], fill=(0, 0, 0), font=font)
    return np.asarray(img)


def _font(size: int):
    """Pillow's bundled font at a readable size (a scalable one from Pillow 10.1; the bitmap one before)."""
    from PIL import ImageFont

    try:
        font = ImageFont.load_default(size=size)
    except TypeError:
        font = ImageFont.load_default()
    if not hasattr(font, "size"):
        font.size = 11
    return font


def _even(frames: np.ndarray, block: int = 16) -> np.ndarray:
    """Pad height and width to multiples of 16: H.264 players want even sizes, ffmpeg wants blocks."""
    h, w = frames.shape[1:3]
    ph, pw = (-h) % block, (-w) % block
    if ph or pw:
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), constant_values=255)
    return frames


def write_video(frames: np.ndarray, path: str | Path, fps: float = 30.0) -> Path:
    """Write uint8 frames [T, H, W, 3] as a looping GIF (.gif) or an H.264 MP4 (.mp4), atomically."""
    import imageio.v2 as iio

    from surgery.files import publish

    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise SurgeryError(f"frames must be uint8 [T, H, W, 3] with T >= 1, got {frames.dtype} {frames.shape}")
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise SurgeryError(f"{path}: the video format is chosen by the suffix, .gif or .mp4")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=suffix)
    os.close(fd)
    try:
        if suffix == ".gif":
            # Pillow would merge identical consecutive frames; every frame here carries its step, so none are.
            iio.mimwrite(tmp, list(frames), format="GIF", duration=1000.0 / fps, loop=0)
        else:
            with iio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=7,
                                pixelformat="yuv420p", macro_block_size=16) as w:
                for f in frames:
                    w.append_data(_even(f[None])[0])
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _steps_per_second(env_id: str) -> float:
    """Environment steps per simulated second (gymnasium's render_fps), 30 where it is not declared."""
    env = gym.make(env_id)
    try:
        return float(env.metadata.get("render_fps") or 30)
    finally:
        env.close()


def edit_video(model, edits, out: str | Path, *, seed: int = 0, target_return: float | None = None,
               max_steps: int | None = None, title: str | None = None, size: tuple[int, int] = (256, 256),
               every: int | None = None, fps: float = 30.0, name: str = "video", camera: str | None = "track") -> dict:
    """Render episode 0 of run `seed` without and with `edits`; write out/NAME.gif and out/NAME.mp4.

    every: keep every n-th step; default: about real time at `fps` (Hopper runs 125 steps per simulated
    second, so every 4th; HalfCheetah 20, so every one).
    """
    from surgery.core.patching import Patch

    if every is None:
        every = max(1, round(_steps_per_second(model.metadata.env_id) / fps))
    run = dict(seed=seed, target_return=target_return, max_steps=max_steps, size=size, every=every, camera=camera)
    base = record_episode(model, **run)
    edited = record_episode(model, Patch(model.model, list(edits)), **run)
    frames = side_by_side(base, edited, ("baseline", "edited"), title)
    out = Path(out)
    return {"video_gif": write_video(frames, out / f"{name}.gif", fps),
            "video_mp4": write_video(frames, out / f"{name}.mp4", fps)}
