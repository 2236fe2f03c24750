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
