"""scripts/atlas_against_pool.py: an atlas judged again against unedited episodes on fresh seeds, and the pools
it must refuse (episodes that are not comparable, or that would enter the pool twice)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import surgery
from surgery.experiments.atlas import atlas

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "atlas_against_pool.py"
SMALL = dict(weights=("V",), vectors=3, episodes=12, max_steps=60, lanes=16)


@pytest.fixture(scope="module")
def folders(balancer, tmp_path_factory):
    root = tmp_path_factory.mktemp("against-pool")
    atlas(balancer, out=root / "atlas", workers=0, progress=False, **SMALL)
    for name, seed, steps in (("pool1", 1, 60), ("pool2", 2, 60), ("long", 3, None)):
        surgery.evaluate(balancer, episodes=40, seed=seed, progress=False, out=root / name, max_steps=steps)
    return root


def test_it_judges_the_atlas_against_the_pools(folders):
    done = subprocess.run([sys.executable, str(SCRIPT), *(str(folders / f) for f in ("atlas", "pool1", "pool2"))],
                          capture_output=True, text=True, timeout=600)  # as a user runs it
    assert done.returncode == 0, done.stderr
    assert "pool 80 unedited episodes on fresh seeds" in done.stdout
    # The balancer is wired through block 0 V #0 and #1: removing either drops the pole, against any pool.
    assert "significant (holm, alpha 0.05): 2 against the paired baseline, 2 against the pool" in done.stdout


@pytest.mark.parametrize("pools, why", [
    (("long",), "time_limit 500 is not the atlas's 60"),        # another episode length
    (("atlas",), "not a pool of unedited episodes"),            # an atlas's store holds edited episodes
    (("pool1", "pool1"), "given twice"),                         # the same episodes twice
])
def test_pools_that_are_not_comparable_are_refused(folders, pools, why):
    spec = importlib.util.spec_from_file_location("atlas_against_pool", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(SystemExit, match=why):
        script.main([str(folders / "atlas"), *(str(folders / p) for p in pools)])
