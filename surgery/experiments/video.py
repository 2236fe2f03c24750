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

import sys  # noqa: E402
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

    def __init__(self, env_id: str, size: tuple[int, int], every: int, limit: int | None, camera: str | None,
                 on_frame=None):
        self.env_id, self.size, self.every, self.limit, self.camera = env_id, size, every, limit, camera
        self.on_frame = on_frame
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
        self.last = _Recording(env, self.every, self.limit, self.on_frame)
        return self.last


class _Recording(gym.Wrapper):
    """Keeps a rendered frame after reset, after every `every`-th step, and after the final one."""

    def __init__(self, env, every: int, limit: int | None, on_frame=None):
        super().__init__(env)
        self.every, self.limit, self.on_frame = every, limit, on_frame or (lambda: None)
        self.frames, self.steps, self.t = [], [], 0

    def reset(self, **kwargs):
        out = self.env.reset(**kwargs)
        self.frames, self.steps, self.t = [self.env.render()], [0], 0
        self.on_frame()
        return out

    def step(self, action):
        out = self.env.step(action)
        self.t += 1
        ended = out[2] or out[3] or (self.limit is not None and self.t >= self.limit)
        if self.t % self.every == 0 or ended:
            self.frames.append(self.env.render()), self.steps.append(self.t)
            self.on_frame()
        return out


def record_episode(model, edit=None, *, seed: int = 0, target_return: float | None = None,
                   max_steps: int | None = None, size: tuple[int, int] = (256, 256), every: int = 1,
                   metadata=None, camera: str | None = "track", on_frame=None) -> Clip:
    """Play episode 0 of run `seed` (optionally under `edit`, a context manager such as a patch) and keep its frames.

    camera: a MuJoCo camera name ("track" follows the body in Hopper, HalfCheetah and Walker2d; a
    model without that camera renders from the default view), or None for the default view.
    on_frame: called with no argument after each frame is rendered (progress).
    """
    from surgery.behaviour.evaluation import evaluate

    if every < 1:
        raise SurgeryError(f"every must be at least 1, got {every}")
    md = metadata or getattr(model, "metadata", None)
    if md is None:
        raise SurgeryError("record_episode needs the model's metadata (an adapter from surgery.load, or metadata=)")
    recorder = _Recorder(md.env_id, size, every, max_steps, camera, on_frame)
    with edit if edit is not None else nullcontext():
        result = evaluate(model, episodes=1, seed=seed, target_return=target_return, env=recorder,
                          metadata=metadata, max_steps=max_steps, progress=False)
    rec = recorder.last
    return Clip(np.stack(rec.frames).astype(np.uint8), list(rec.steps), result.records[0])


def side_by_side(left: Clip, right: Clip, labels: tuple[str, str] = ("baseline", "edited"),
                 title: str | None = None, on_frame=None) -> np.ndarray:
    """One video of two clips: the shorter one holds its last frame, dimmed and marked with how it ended.

    on_frame: called with no argument after each of the two panels' frames is drawn (progress).
    """
    n = max(len(left.frames), len(right.frames))
    h = max(left.frames.shape[1], right.frames.shape[1])
    panels = [_panel(c, n, h, name, on_frame) for c, name in zip((left, right), labels)]
    gap = np.full((n, h, 4, 3), 255, np.uint8)
    frames = np.concatenate([panels[0], gap, panels[1]], axis=2)
    if title:
        caption = _captioner(frames.shape[2], title)
        frames = np.stack([caption(f) for f in frames])
    return _even(frames)


def _panel(clip: Clip, n: int, height: int, name: str, on_frame=None) -> np.ndarray:
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
        width = img.width - 2 * _MARGIN
        _outlined(draw, _wrap(draw, name, font, width), (_MARGIN, 4), font)
        status = f"step {clip.steps[j]}"
        if over or j == len(clip.frames) - 1:  # the last frame's step is the episode's length
            status = f"{'FAILED' if rec.failed else 'ended'} at step {rec.length}; return {rec.episode_return:.0f}"
        lines = _wrap(draw, status, font, width, sep="; ")  # the end caption is the longest: wrapped, not cut off
        lines = lines[-max(1, (img.height - 2 * _line_height(font)) // _line_height(font)):]  # a tiny panel: the end
        _outlined(draw, lines, (_MARGIN, img.height - len(lines) * _line_height(font) - 4), font)
        out.append(np.asarray(img))
        if on_frame is not None:
            on_frame()
    return np.stack(out)


_MARGIN = 6  # pixels between text and a panel's edge; the outline is 2 of them


def _line_height(font) -> int:
    return font.size + 4


def _outlined(draw, lines: list[str], xy: tuple[int, int], font) -> None:
    """White text with a black outline, readable on any frame, one line under the other."""
    x, y = xy
    for i, line in enumerate(lines):
        draw.text((x, y + i * _line_height(font)), line, fill=(255, 255, 255), stroke_width=2,
                  stroke_fill=(0, 0, 0), font=font)


def _wrap(draw, text: str, font, width: int, sep: str = " ") -> list[str]:
    """`text` in lines no wider than `width` pixels, broken at `sep` (a part too long for a line is
    broken between words, a word too long between characters)."""
    fits = lambda t: draw.textlength(t, font=font) <= width  # noqa: E731
    lines, line = [], ""
    for part in text.split(sep):
        candidate = f"{line}{sep}{part}" if line else part
        if fits(candidate):
            line = candidate
            continue
        if line:
            lines.append(line)
        line = ""
        if fits(part):
            line = part
        elif sep != " " and " " in part:
            *full, line = _wrap(draw, part, font, width)
            lines += full
        else:  # one word wider than the line
            while part and not fits(part):
                cut = max([k for k in range(1, len(part)) if fits(part[:k])], default=1)
                lines.append(part[:cut])
                part = part[cut:]
            line = part
    return lines + [line] if line else lines


def _caption(frame: np.ndarray, text: str) -> np.ndarray:
    return _captioner(frame.shape[1], text)(frame)


def _captioner(width: int, text: str):
    """A function putting `text` above a frame of `width` pixels, wrapped to fit (computed once per video)."""
    from PIL import Image, ImageDraw

    font = _font(12)
    lines = _wrap(ImageDraw.Draw(Image.new("RGB", (1, 1))), text, font, width - 2 * _MARGIN)
    band = len(lines) * _line_height(font) + 6

    def caption(frame: np.ndarray) -> np.ndarray:
        img = Image.new("RGB", (frame.shape[1], frame.shape[0] + band), (255, 255, 255))
        img.paste(Image.fromarray(frame), (0, band))
        draw = ImageDraw.Draw(img)
        for i, line in enumerate(lines):
            draw.text((_MARGIN, 4 + i * _line_height(font)), line, fill=(0, 0, 0), font=font)
        return np.asarray(img)

    return caption


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


def write_video(frames: np.ndarray, path: str | Path, fps: float = 30.0, on_frame=None) -> Path:
    """Write uint8 frames [T, H, W, 3] as a looping GIF (.gif) or an H.264 MP4 (.mp4), atomically.

    on_frame: called with no argument per frame written (for the GIF, all at the end: it is written at once).
    """
    on_frame = on_frame or (lambda: None)
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
            for _ in frames:
                on_frame()
        else:
            with iio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=7,
                                pixelformat="yuv420p", macro_block_size=16) as w:
                for f in frames:
                    w.append_data(_even(f[None])[0])
                    on_frame()
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


def _time_limit(env_id: str) -> int | None:
    """The environment's own step limit (None where it has none)."""
    try:
        return gym.spec(env_id).max_episode_steps
    except gym.error.Error:
        return None


def edit_video(model, edits, out: str | Path, *, seed: int = 0, target_return: float | None = None,
               max_steps: int | None = None, title: str | None = None, size: tuple[int, int] = (256, 256),
               every: int | None = None, fps: float = 30.0, name: str = "video", camera: str | None = "track",
               progress: bool | None = None) -> dict:
    """Render episode 0 of run `seed` without and with `edits`; write out/NAME.gif and out/NAME.mp4.

    every: keep every n-th step; default: about real time at `fps` (Hopper runs 125 steps per simulated
    second, so every 4th; HalfCheetah 20, so every one).
    progress: a progress bar over the frames rendered, composed and encoded (surgery.progress); the
    default shows it when stderr is a terminal (a full Hopper video takes about a minute).
    """
    from surgery.core.patching import Patch
    from surgery.progress import progress as progress_bar

    if every is None:
        every = max(1, round(_steps_per_second(model.metadata.env_id) / fps))
    enabled = sys.stderr.isatty() if progress is None else progress
    limit = max_steps or _time_limit(model.metadata.env_id) or model.metadata.max_ep_len
    run = dict(seed=seed, target_return=target_return, max_steps=max_steps, size=size, every=every, camera=camera)
    out = Path(out)
    # Two bars, because a frame costs far more to render (a simulator step and a forward pass per step
    # kept) than to draw and encode: one ETA over both phases was off by minutes (measured).
    with progress_bar(total=2 * (limit // every + 2), desc="video: rendering", unit="frame", enabled=enabled) as bar:
        tick = lambda: bar.update(1)  # noqa: E731
        base = record_episode(model, **run, on_frame=tick)
        edited = record_episode(model, Patch(model.model, list(edits)), **run, on_frame=tick)
        bar.total = bar.n  # the longest possible episodes were assumed; these are the ones played
    n = max(len(base.frames), len(edited.frames))
    with progress_bar(total=4 * n, desc="video: writing", unit="frame", enabled=enabled) as bar:
        tick = lambda: bar.update(1)  # noqa: E731
        frames = side_by_side(base, edited, ("baseline", "edited"), title, on_frame=tick)  # two panels per frame
        return {"video_gif": write_video(frames, out / f"{name}.gif", fps, on_frame=tick),
                "video_mp4": write_video(frames, out / f"{name}.mp4", fps, on_frame=tick)}
