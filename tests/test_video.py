"""Side-by-side videos rendered headless with MuJoCo: the right number of frames in the GIF and the MP4."""
from __future__ import annotations

import imageio.v2 as iio
import numpy as np
import pytest

from surgery.behaviour.hf_loop import untrained_dt
from surgery.core.patching import Patch
from surgery.experiments import video
from surgery.loading import load


@pytest.fixture(scope="module")
def hopper():
    model, md = untrained_dt("Hopper-v5")
    return load(model, metadata=md)


def test_frames_follow_the_episode(hopper):
    clip = video.record_episode(hopper, seed=0, max_steps=7, size=(48, 40))
    assert clip.frames.shape == (8, 40, 48, 3) and clip.steps == list(range(8))  # the reset frame, then each step
    assert clip.record.length == 7 and clip.frames.std() > 0
    sparse = video.record_episode(hopper, seed=0, max_steps=7, size=(48, 40), every=3)
    assert sparse.steps == [0, 3, 6, 7]  # every third step, and always the last one
    np.testing.assert_array_equal(sparse.frames[1], clip.frames[3])  # the same episode, the same pictures


def test_gif_and_mp4_have_one_frame_per_step_of_the_longer_episode(hopper, tmp_path):
    edit = Patch(hopper.model, [dict(block=b, weight="K", op="keep_top", value=0) for b in range(3)])
    base = video.record_episode(hopper, seed=0, max_steps=9, size=(64, 64))
    short = video.record_episode(hopper, edit, seed=0, max_steps=4, size=(64, 64))
    frames = video.side_by_side(base, short, title="test")
    assert len(frames) == 10 and frames.shape[1] % 16 == 0 and frames.shape[2] % 16 == 0
    gif = video.write_video(frames, tmp_path / "v.gif", fps=10)
    mp4 = video.write_video(frames, tmp_path / "v.mp4", fps=10)
    assert iio.get_reader(gif).get_length() == 10
    reader = iio.get_reader(mp4)
    assert reader.count_frames() == 10 and reader.get_meta_data()["fps"] == 10
    assert not list(tmp_path.glob(".*"))  # written through temporary files, none left behind


def test_edit_video_writes_both_files(hopper, tmp_path):
    files = video.edit_video(hopper, [dict(block=1, weight="K", idx=0)], tmp_path, max_steps=5, size=(32, 32),
                             every=1, title="block 1 K #0")
    assert iio.get_reader(files["video_gif"]).get_length() == 6
    assert iio.get_reader(files["video_mp4"]).count_frames() == 6


def test_bad_frames_and_formats_are_refused(tmp_path):
    with pytest.raises(ValueError, match="suffix"):
        video.write_video(np.zeros((2, 16, 16, 3), np.uint8), tmp_path / "v.avi")
    with pytest.raises(ValueError, match="uint8"):
        video.write_video(np.zeros((2, 16, 16), np.float32), tmp_path / "v.gif")


def _flat_clip(n: int, failed: bool, length: int, ret: float, size: int = 256) -> video.Clip:
    from surgery.behaviour.evaluation import EpisodeRecord

    rec = EpisodeRecord(episode=0, seed=0, episode_return=ret, score=None, length=length, failed=failed,
                        failure_step=length if failed else None, terminated=failed, truncated=not failed)
    return video.Clip(np.full((n, size, size, 3), 128, np.uint8), list(range(0, 4 * n, 4)), rec)


def test_captions_fit_inside_their_panels():
    """The end caption ("step 16; ended at step 1000; return 3251") and a long title are wrapped, not cut off
    at the panel's edge: the last pixel columns of each panel and of the title band stay untouched."""
    title = "hopper: block 0 V #1 (write side): constant 0.0078125 (the study's edit), 200 episodes, seed 0"
    frames = video.side_by_side(_flat_clip(5, False, 1000, 3251.4), _flat_clip(3, True, 432, 1552.2), title=title)
    band = next(r for r in range(frames.shape[1]) if (frames[0, r, :256] == 128).all())  # title band's height
    assert band >= 2 * 16  # the title took two lines
    width = 256 + 4 + 256  # then padded with white to a multiple of 16
    for f in frames:
        assert (f[:band, width - 3:] == 255).all()  # title band: nothing reaches the right edge
        for x0 in (0, 260):  # the two panels, 256 wide, 4 apart
            edge = f[band:band + 256, x0 + 253:x0 + 256]
            assert np.isin(edge, (128, 70)).all()  # the frame's grey (or dimmed), no text
    last = frames[-1, band:band + 256, :256]
    assert (last != 128).any()  # the caption was drawn


def test_edit_video_reports_progress(hopper, tmp_path, capsys):
    video.edit_video(hopper, [dict(block=1, weight="K", idx=0)], tmp_path, max_steps=5, size=(32, 32), every=1,
                     progress=True)
    lines = capsys.readouterr().err.strip().splitlines()  # not a terminal: plain lines, one at each bar's end
    assert lines[0].startswith("video: rendering: 12/12 frame in ")  # 2 episodes x (reset + 5 steps)
    assert lines[-1].startswith("video: writing: 24/24 frame in ")  # 2 panels x 6 frames, 6 GIF, 6 MP4
    video.edit_video(hopper, [dict(block=1, weight="K", idx=0)], tmp_path, max_steps=5, size=(32, 32), every=1)
    assert capsys.readouterr().err == ""  # by default only on a terminal
