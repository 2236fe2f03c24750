"""`surgery.atlas` in one process: the known answer on the hand-wired balancer, rows against independent
computations, resume, refusals, no-op edits, the claim's verdicts, and the lane engine against `patch`."""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats as sps

import surgery
from surgery import stats
from surgery.analysis.tables import Table
from surgery.behaviour.results_store import ResultsStore
from surgery.experiments.atlas import RESULTS_FILE, atlas, plan_edits
from surgery.experiments.claim import claim
from surgery.experiments.distribute import EditEpisode, Rollout, Task, run_task
from surgery.experiments.settings import AtlasSettings

# The balancer's policy flows through block 0's MLP: V #0 and #1 write the action direction (aligned
# with action_out, cos 0.707) and removing either makes the pole fall; with 60-step episodes nothing
# else in the first three triples of K and V of either block changes the return detectably.
SMALL = dict(weights=("K", "V"), vectors=3, episodes=12, max_steps=60, lanes=16)


@pytest.fixture(scope="module")
def run(balancer, tmp_path_factory):
    out = tmp_path_factory.mktemp("atlas")
    return atlas(balancer, out=out, workers=0, progress=False, **SMALL), out


@pytest.fixture(scope="module")
def pooled(balancer, tmp_path_factory):
    """The same atlas judged against a pool of 40 unedited episodes, and its folder."""
    out = tmp_path_factory.mktemp("pooled")
    return atlas(balancer, out=out, workers=0, progress=False, pool=40, **SMALL), out


def _seconds(out) -> float:
    """The playing time kept in the store, read from the SQLite file directly."""
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(out / RESULTS_FILE)) as conn:
        return float(conn.execute("SELECT value FROM experiment WHERE name = 'seconds'").fetchone()[0])


def _stored(out) -> dict:
    """Every stored episode, (edit, episode) -> its fields, read from the SQLite file directly."""
    import sqlite3

    conn = sqlite3.connect(out / RESULTS_FILE)
    try:
        names = [f.name for f in dataclasses.fields(EditEpisode)]
        rows = conn.execute(f"SELECT {', '.join(names)} FROM episodes").fetchall()
    finally:
        conn.close()
    return {(r[-1], r[0]): r for r in rows}


def test_the_balancer_atlas_finds_the_aligned_v_edits(run):
    """(c) The known answer end to end: exactly V #0 and #1 of block 0 damage significantly, and they are aligned."""
    a, out = run
    sig = {(r["block"], r["weight"], r["idx"]) for r in a.rows.rows() if r["significant"]}
    assert sig == {(0, "V", 0), (0, "V", 1)}
    v = a.rows.where(block=0, weight="V")
    assert np.all(v["damage"][:2] > 40) and np.all(v["failures_edited"][:2] == 1.0)
    assert np.all(v["action_out_abs_cos"][:2] == pytest.approx(2 ** -0.5, abs=1e-3))
    c = a.claim()
    assert (c.table.aligned_damaging, c.table.aligned_harmless, c.table.unaligned_damaging) == (2, 0, 0)
    assert c.criteria["aligned vectors are the damaging ones"]["holds"]
    assert c.per_weight["K"].outcome == "not testable"
    # Most edits stop at the first look: far fewer episodes than a fixed design.
    assert a.cost["episodes"] < 0.5 * a.cost["episodes_fixed_design"]
    assert set(a.rows["stopped"]) <= {"futility", "complete"} and sum(a.rows["stopped"] == "complete") >= 2


def test_strongest_ranks_by_the_damage_shown_not_the_mean(run):
    """A 6-pair edit whose mean is large by one bad episode must not outrank an established damage."""
    from surgery.experiments.atlas_report import strongest

    a, _ = run
    top = strongest(a, n=len(a.rows))
    assert np.all(np.diff(np.asarray(top["damage_low"], float)) <= 0)
    assert {(r["block"], r["weight"], r["idx"]) for r in strongest(a, n=2).rows()} == {(0, "V", 0), (0, "V", 1)}


def test_the_placebo_reads_the_least_changing_edits_against_the_baseline():
    """The placebo against a direct computation; it warns only where its interval excludes zero."""
    from surgery.experiments.atlas_rows import change_factor, placebo, placebo_warning

    rng = np.random.default_rng(0)
    energy = rng.permutation(np.linspace(1e-4, 0.02, 32))  # the smallest quarter: all within PLACEBO_CHANGE
    base = np.array([5800.0, 5900, 6000, 5700, 5850, 5950])
    # Episodes that repeat: every edit plays its pair's baseline return up to noise -> no warning.
    repeat = base + rng.normal(0, 5, (32, 6))
    p = placebo(base, repeat, energy)
    small = np.argsort(energy)[:8]
    d = base - repeat[small].mean(axis=0)
    half = sps.t.ppf(0.975, 5) * d.std(ddof=1) / math.sqrt(6)
    assert (p["edits"], p["pairs"]) == (8, 6) and p["energy_max"] == pytest.approx(np.sort(energy)[7])
    assert (p["damage"], p["low"], p["high"]) == pytest.approx((d.mean(), d.mean() - half, d.mean() + half))
    assert placebo_warning(p) == []
    # Episodes that do not repeat (each edit an independent draw around a lower mean) -> the shared
    # baseline's luck is charged to every edit, and the report says so.
    redrawn = 5400 + rng.normal(0, 100, (32, 6))
    assert placebo(base, redrawn, energy)["low"] > 0
    assert "no evidence of a vector's role" in placebo_warning(placebo(base, redrawn, energy))[0]
    assert placebo(base, redrawn[:15], energy[:15]) is None  # a quarter of 15 edits is no reference
    # An atlas of large triples only (every energy share above 0.01) has no placebo; nor one whose op changes
    # even the smallest triples by more than 10% (scale by 10: 9 sqrt(energy)).
    assert placebo(base, redrawn, energy + 0.01) is None
    assert placebo(base, redrawn, energy, factor=change_factor("scale", 10.0, 128)) is None
    assert change_factor("zero", None, 128) == 1 and change_factor("constant", 1 / 128, 128) == pytest.approx(
        1 + 128 ** -0.5)


def test_the_pooled_placebo_interval_carries_the_pool_means_error():
    """Against a pool the placebo's 95% interval covers a null effect about 95% of the time (Welch: the pool's
    mean is an estimate too); read as if the pool's mean were exact, it would warn in about a quarter of them."""
    from surgery.experiments.atlas_rows import placebo

    rng = np.random.default_rng(0)

    def draw(*shape):  # HalfCheetah-like: 12% collapses
        return np.where(rng.random(shape) < 0.12, rng.normal(1000, 800, shape), rng.normal(5800, 100, shape))

    energy, reps, warned, naive = np.linspace(1e-4, 0.02, 384), 600, 0, 0
    for _ in range(reps):
        pool, edited = draw(200), draw(384, 6)
        p = placebo(pool, edited, energy, pooled=True)
        warned += not p["low"] <= 0 <= p["high"]
        q = placebo(np.full(6, pool.mean()), edited, energy)  # the pool's mean taken as exact
        naive += not q["low"] <= 0 <= q["high"]
    assert warned / reps <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / reps) < 0.15 < naive / reps  # measured 0.06, 0.25


def test_a_pooled_atlas_judges_every_edit_against_fresh_unedited_episodes(balancer, run, pooled):
    """--pool: the pool is the baseline's episodes past the edits' seeds, played before any look; rows agree
    with computations from the stored episodes and with scipy's own two-sample permutation test."""
    from surgery.experiments.sequential import pool_p

    a, tmp_path = pooled
    N, d = SMALL["episodes"], a.design
    stored = _stored(tmp_path)
    field = {f.name: i for i, f in enumerate(dataclasses.fields(EditEpisode))}
    ret = lambda e, j: stored[(e, j)][field["episode_return"]]  # noqa: E731
    pool = np.array([ret(-1, j) for j in range(N, N + 40)])
    assert len(a.baseline.records) == 40 and not any((e, j) in stored for e in range(len(a.rows)) for j in range(N, 52))
    assert not any((-1, j) in stored for j in range(N))  # no paired baseline: nothing would use it
    for r in a.rows.rows():
        x = np.array([ret(r["edit"], j) for j in range(r["episodes"])])
        assert r["damage"] == pytest.approx(pool.mean() - x.mean())
        assert r["baseline_return"] == pytest.approx(pool.mean())
        looks = [k for k, n in enumerate(d.looks) if n <= x.size]
        assert r["p"] == pytest.approx(min(1.0, min(pool_p(x[:d.looks[k]], pool, r["edit"], k) / d.weights[k]
                                                     for k in looks)))
    # The Monte Carlo p against scipy's (another implementation) for the last look of a damaging edit.
    e = int(np.flatnonzero(a.rows["significant"])[0])
    x = np.array([ret(e, j) for j in range(a.rows["episodes"][e])])
    ref = sps.permutation_test((x, pool), lambda u, v: np.mean(u) - np.mean(v), permutation_type="independent",
                               n_resamples=20_000, random_state=0).pvalue
    mine = pool_p(x, pool, e, 99)
    assert abs(mine - ref) <= 4 * math.sqrt(max(ref, 1e-3) / 4000) + 1e-3
    # The two V vectors the balancer is wired through, and block 0 K #0, which lets the pole fall in 7 of 24
    # episodes (a real effect: the paired design's 12 sign flips cannot resolve it, a pool that never falls can).
    sig = {(r["block"], r["weight"], r["idx"]) for r in a.rows.rows() if r["significant"]}
    assert sig == {(0, "V", 0), (0, "V", 1), (0, "K", 0)}
    assert "judged against a pool of 40 unedited episodes" in a.text()
    # Rerun on the same folder: nothing is played again, and every p (Monte Carlo, seeded by edit and look) is
    # the same, so are the decisions.
    again = atlas(balancer, out=tmp_path, workers=0, progress=False, pool=40, **SMALL)
    assert len(_stored(tmp_path)) == len(stored) and np.array_equal(again.rows["p"], a.rows["p"])
    # A paired atlas's stored spec has no pool field: atlases run before pools existed keep their fingerprint.
    assert "pool" not in json.loads((run[1] / "plan.json").read_text())["spec"]["settings"]
    assert json.loads((tmp_path / "plan.json").read_text())["spec"]["settings"]["pool"] == 40


def test_a_pool_too_small_to_decide_is_said_and_a_large_one_is_not_blamed(balancer):
    """The smallest p against a pool of P is 1 / C(N + P, N) (or the Monte Carlo floor): a pool of 2 can never
    give a significant edit, and the run and its claim say so; a pooled atlas of 6 episodes can, and its claim
    does not borrow the paired test's 2^(1-N) to say otherwise."""
    from surgery.experiments.sequential import POOL_REFINE, Design

    design = Design((6, 12), 6)
    assert design.smallest_p(2) == pytest.approx(1 / math.comb(14, 2))
    assert design.smallest_p(200) == pytest.approx(1 / (1 + POOL_REFINE))
    assert design.smallest_p(0) == 2.0 ** -11
    tiny = atlas(balancer, workers=0, progress=False, pool=2, **SMALL)
    assert any("against a pool of 2" in w and "use a larger pool" in w for w in tiny.warnings)
    assert not tiny.rows["significant"].any() and "the pool of 2 is too small" in tiny.claim().sentence
    short = atlas(balancer, workers=0, progress=False, pool=40, **{**SMALL, "episodes": 6, "weights": ("V",)})
    assert not any("no edit can be significant" in w for w in short.warnings)
    assert short.claim().outcome != "too few episodes"


def test_figures_and_text_say_what_damage_is_measured_from(run, pooled, monkeypatch):
    """A pooled atlas's figures read damage from the pool's mean and its looks count episodes; a paired one's,
    from the baseline, in pairs. The placebo's legend keeps a small value's digits (-0.4 is not '-0')."""
    from surgery.analysis.report import figures
    from surgery.experiments import atlas_figures, atlas_report

    monkeypatch.setattr(figures, "png", lambda fig: fig)  # keep the Figure objects to read their labels
    for a, reference, unit in ((pooled[0], "pool mean", "episodes"), (run[0], "baseline", "pairs")):
        assert f"{SMALL['episodes']} {unit} with shares" in a.text()
        heads = [line.split() for line in a.text().splitlines() if line.startswith("  edit ")]
        assert heads and all(h[5] == unit for h in heads)  # the tables' column of episodes played per edit
        made = {name: fig for name, (fig, _) in atlas_report._figures(a, a.claim()).items()}
        assert made["damage_heatmap"].axes[-1].get_ylabel() == f"return drop ({reference} - edited)"
        for name in ("damage_vs_alignment", "damage_vs_size"):
            assert made[name].axes[0].get_ylabel() == f"mean return drop ({reference} - edited)"
    assert [atlas_figures._signed(x) for x in (-0.4, 431.8, -27.1)] == ["-0.4", "+432", "-27"]


def test_the_pooled_sequential_design_holds_its_level():
    """Under the null with HalfCheetah-like returns (12% collapses), every edit against one shared pool of 200:
    the family-wise error of the pooled p-values through the looks, p* and Holm stays at its level."""
    from surgery.experiments.sequential import Design, simulate

    rng = np.random.default_rng(1)

    def draw(*shape):
        return np.where(rng.random(shape) < 0.12, rng.normal(1000, 800, shape), rng.normal(5800, 100, shape))

    design, alpha, reps = Design((6, 15, 30), 8, 0.2, 0.1, "holm", 2.0), 0.2, 400
    errors = broken = 0
    for rep in range(reps):
        pool, edited, seen = draw(200), draw(8, 30), {e: [] for e in range(8)}

        def p_value(e, k, n):
            seen[e].append(stats.two_sample_p(edited[e, :n], pool, resamples=300, refine=3000,
                                              seed=rep * 100 + k * 10 + e))
            return seen[e][-1]

        errors += bool(simulate(edited, design, pool=pool, p_value=p_value).rejected.any())
        # The same looks without each look's share w_k: the bound below must be able to catch that.
        broken += bool(np.any(stats.adjust_pvalues(np.array([min(v) for v in seen.values()]), "holm") <= alpha))
    bound = alpha + 3 * math.sqrt(alpha * (1 - alpha) / reps)
    # Measured: 0.088 <= 0.26 < 0.28; on other seeds (600 repetitions each) 0.10-0.11 and 0.30-0.32.
    assert errors / reps <= bound < broken / reps


def test_futility_changes_no_decision_on_the_balancer(balancer, run):
    """The price of stopping early, on the known model: the same decisions as never stopping, for less."""
    a, _ = run
    full = atlas(balancer, workers=0, progress=False, futility=0.0, **SMALL)
    assert np.array_equal(full.rows["significant"], a.rows["significant"])
    assert full.cost["episodes"] == full.cost["episodes_fixed_design"] > a.cost["episodes"]


def brute_force_p(d) -> float:
    """The paired permutation p by enumerating every sign vector (CartPole returns are integers: exact)."""
    sums = np.array(list(itertools.product([-1, 1], repeat=len(d)))) @ np.asarray(d, float)
    return float(np.mean(np.abs(sums) >= abs(np.sum(d)) - 1e-9))


def test_rows_agree_with_independent_computations(run, balancer):
    a, out = run
    stored = _stored(out)
    d = a.design
    # Every edit's p: the smallest enumerated permutation p over the looks it reached, each over its share w_k.
    field = {f.name: i for i, f in enumerate(dataclasses.fields(EditEpisode))}
    ret = lambda e, j: stored[(e, j)][field["episode_return"]]  # noqa: E731
    p_star = []
    for r in a.rows.rows():
        e, n = r["edit"], r["episodes"]
        assert all((e, j) in stored for j in range(n)) and not any((e, j) in stored for j in range(n, d.looks[-1]))
        diffs = [ret(e, j) - ret(-1, j) for j in range(n)]
        looks = [k for k in d.looks if k <= n]
        w = np.diff([0.0] + [(k / d.looks[-1]) ** 2 for k in d.looks])  # the default spending, rho = 2
        p_star.append(min(1.0, min(brute_force_p(diffs[:k]) / w[i] for i, k in enumerate(looks))))
        assert r["damage"] == pytest.approx(-np.mean(diffs))
        assert r["damage_first_look"] == pytest.approx(-np.mean(diffs[:d.looks[0]]))  # pairs every edit played
    assert np.allclose(a.rows["p"], p_star, rtol=1e-9)
    first = a.claim().first_look  # the claim's check on common pairs: Spearman of |cos| against that damage
    want = sps.spearmanr(a.rows["action_out_abs_cos"], a.rows["damage_first_look"]).statistic
    assert first.rho == pytest.approx(want)
    # Holm by its step-down definition.
    order = np.argsort(p_star)
    rejected = set()
    for i, idx in enumerate(order):
        if p_star[idx] > 0.05 / (len(p_star) - i):
            break
        rejected.add(idx)
    assert rejected == set(np.flatnonzero(a.rows["significant"]))
    # Sizes from the SVD in float64; alignment columns from a separate `surgery.alignment` call.
    for r in a.rows.rows()[::4]:
        W = (balancer.model.encoder.h[r["block"]].mlp.c_fc if r["weight"] == "K" else
             balancer.model.encoder.h[r["block"]].mlp.c_proj).weight.detach().double()
        S = torch.linalg.svdvals(W).numpy()
        assert r["singular_value"] == pytest.approx(S[r["idx"]], rel=1e-6)
        assert r["energy"] == pytest.approx(S[r["idx"]] ** 2 / np.sum(S ** 2), rel=1e-6)
    vec = surgery.alignment(balancer, embeddings="action_out").vectors
    for r in a.rows.rows():
        side = {"K": "in", "V": "out"}[r["weight"]]
        want = vec.where(block=r["block"], weight=r["weight"], side=side, idx=r["idx"])
        assert r["action_out_abs_cos"] == pytest.approx(want["abs_cos"][0])
        assert r["action_out_p_adj"] == pytest.approx(want["p_adj"][0])


def test_an_interrupted_atlas_resumes_and_counts_add_up(balancer, run, tmp_path, monkeypatch):
    a, out = run
    calls = []
    real = ResultsStore.add_many

    def flaky(self, records, seconds=0.0):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        real(self, records, seconds)

    monkeypatch.setattr(ResultsStore, "add_many", flaky)
    with pytest.raises(KeyboardInterrupt):
        atlas(balancer, out=tmp_path, workers=0, progress=False, **SMALL)
    assert 0 < len(_stored(tmp_path)) < len(_stored(out))
    played_before = _seconds(tmp_path)  # the interrupted run's time is kept with its episodes
    assert played_before > 0
    monkeypatch.setattr(ResultsStore, "add_many", real)
    again = atlas(balancer, out=tmp_path, workers=0, progress=False, **SMALL)
    assert _stored(tmp_path).keys() == _stored(out).keys()
    assert _stored(tmp_path) == _stored(out)  # the same records, each once
    assert again.cost["episodes"] == a.cost["episodes"] and again.cost["env_steps_this_run"] < a.cost["env_steps"]
    # The report of the resumed run says what both runs played for, not only its own share.
    assert again.cost["seconds_all_runs"] == pytest.approx(_seconds(tmp_path)) and _seconds(tmp_path) > played_before
    assert "min of play over every run that filled the store" in again.text()
    rebuilt = atlas(balancer, out=tmp_path, workers=0, progress=False, **SMALL)  # plays nothing, adds nothing
    assert rebuilt.cost["seconds_all_runs"] == again.cost["seconds_all_runs"]
    for c in ("damage", "p", "p_adj", "episodes", "stopped"):
        assert list(again.rows[c]) == list(a.rows[c])


def test_a_store_made_with_other_settings_is_refused_untouched(balancer, run):
    _, out = run
    before = _stored(out)
    with pytest.raises(ValueError, match="holds results of another experiment.*settings"):
        atlas(balancer, out=out, workers=0, progress=False, **{**SMALL, "episodes": 14})
    assert _stored(out) == before


def test_no_op_edits_flag_nothing_and_stop_at_once(balancer):
    """(d) op scale 1.0 changes no weight: every edited episode is the baseline's, nothing is flagged."""
    a = atlas(balancer, workers=0, progress=False, **{**SMALL, "op": "scale", "value": 1.0})
    assert not a.rows["significant"].any() and np.all(a.rows["p"] == 1.0) and np.all(a.rows["damage"] == 0)
    assert set(a.rows["stopped"]) == {"futility"} and a.claim().outcome == "not testable"


def test_an_atlas_too_small_to_decide_says_so(balancer):
    """With 4 pairs no edit can be significant: a warning before it runs, and the claim says why."""
    a = atlas(balancer, workers=0, progress=False, **{**SMALL, "episodes": 4, "looks": (0.5, 1.0)})
    assert any("no edit can be significant" in w and f"at least {a.design.pairs_needed()} episodes" in w
               for w in a.warnings)
    c = a.claim()
    assert c.outcome == "too few episodes" and "TOO FEW EPISODES" in c.sentence
    assert not a.rows["significant"].any()


@pytest.mark.parametrize("kwargs, message", [
    (dict(op="zero", value=1.0), "takes no value"),
    (dict(op="scale"), "needs value"),
    (dict(op="keep_top"), "not an atlas edit"),
    (dict(looks=(0.5, 0.2, 1.0)), "increasing fractions"),
    (dict(weights=("MLP",)), "valid: K, V, OV, QK"),
    (dict(blocks=(7,)), "out of range"),
    (dict(episodes=0), r"episodes=0 is out of range \(valid: 1 or more\)"),
    (dict(lanes=np.int64(0)), r"lanes=0 is out of range"),
    (dict(vectors=2.5), "vectors must be an integer"),
    (dict(typo=1), "unknown atlas setting"),
    (dict(pool=-3), r"pool=-3 is out of range \(valid: 0 or more\)"),
    (dict(pool=1), "at least 2 unedited episodes"),
])
def test_bad_settings_are_refused_before_anything_is_written(balancer, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        atlas(balancer, out=tmp_path / "out", workers=0, progress=False, **kwargs)
    assert not (tmp_path / "out").exists()


def test_a_failed_setup_releases_the_output_folder(balancer, tmp_path):
    """plan.json cannot be written (a folder is in the way): the error, and no lock left held by this process."""
    from surgery import runlock

    out = tmp_path / "blocked"
    (out / "plan.json").mkdir(parents=True)
    with pytest.raises(OSError):
        atlas(balancer, out=out, workers=0, progress=False, **SMALL)
    assert not runlock._held  # a held flock would refuse every other process this folder until exit


def test_report_files(run):
    a, out = run
    for name in ("atlas.csv", "atlas.md", "atlas.html", "atlas.json", "plan.json", "figures/damage_heatmap.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "atlas.html").read_text().count("data:image/png;base64,") == 3
    assert len((out / "atlas.csv").read_text().splitlines()) == len(a.rows) + 1
    text = a.text()
    assert "2 of 12 edits change the return significantly" in text and "b0 V #0" in text


def test_the_lane_engine_gives_the_records_of_patch(balancer, monkeypatch):
    """A task's records from the lane engine equal those of each edit applied with `surgery.patch` (discrete: exact)."""
    import surgery.behaviour.rollout as rollout
    from tests import lanes_reference

    edits = plan_edits(balancer, AtlasSettings(weights=("K", "V", "OV"), vectors=2, blocks=(0,), op="constant"))
    task = Task("t", None, ((-1, ()), *((i, (e,)) for i, e in enumerate(edits))), (0, 5),
                Rollout(seed=3, target_return=500.0, max_steps=80, dtype="float32", lanes=8))
    lanes = run_task(task, balancer)
    monkeypatch.setattr(rollout, "run_lanes", lanes_reference.run_lanes)
    patched = run_task(task, balancer)
    key = lambda r: (r.edit, r.episode)  # noqa: E731
    assert sorted(lanes.records, key=key) == sorted(patched.records, key=key)
    assert lanes.env_steps == patched.env_steps


def _fake_atlas(cos, damage, sv, weight, p_align, significant):
    n = len(cos)
    rows = Table({"weight": np.array(weight, dtype=object), "action_out_abs_cos": np.array(cos, float),
                  "action_out_p_adj": np.array(p_align, float), "damage": np.array(damage, float),
                  "singular_value": np.array(sv, float), "energy": np.array(sv, float) ** 2 / np.sum(np.square(sv)),
                  "significant": np.array(significant, bool)})
    assert len(rows) == n
    from surgery.experiments.sequential import Design

    return SimpleNamespace(rows=rows, embeddings=("action_out",), settings=SimpleNamespace(alpha=0.05),
                           alignment_alpha=0.05, design=Design((10, 30), n, 0.05))


def test_the_claim_tells_alignment_from_size():
    """Damage made of size alone is 'explained by size'; damage that follows alignment within sizes is 'supported'."""
    rng = np.random.default_rng(0)
    n = 200
    sv = rng.uniform(0.2, 2.0, n)
    cos = np.clip(0.1 + 0.2 * sv + rng.normal(0, 0.08, n), 0, 1)  # bigger vectors are more aligned, as in the zoo
    aligned_p = np.where(cos > 0.45, 0.001, 0.5)
    by_size = 30 * sv ** 2 + rng.normal(0, 3, n)
    c = claim(_fake_atlas(cos, by_size, sv, ["K"] * n, aligned_p, by_size > 40), "action_out")
    assert c.rho.low > 0 and not c.criteria["beyond size"]["holds"] and c.outcome == "explained by size"
    # The 2x2 table within bins of size: what size alone gives (damage by size: aligned vectors no more damaging
    # than others of their size); with one bin it is Fisher's one-sided test itself.
    assert c.table.p_fisher < 0.01 and c.table_within_size.p > 0.05
    one_bin = claim(_fake_atlas(cos, by_size, sv, ["K"] * n, aligned_p, by_size > 40), "action_out", per_bin=n)
    assert one_bin.table_within_size.p == pytest.approx(one_bin.table.p_fisher, rel=1e-9)
    # Four coarse bins are fooled here (size still varies inside each, and so does damage): the partial rho is not.
    coarse = claim(_fake_atlas(cos, by_size, sv, ["K"] * n, aligned_p, by_size > 40), "action_out", per_bin=50)
    assert coarse.within.low > 0 and coarse.partial_size.low < 0 < coarse.partial_size.high
    assert not coarse.criteria["beyond size"]["holds"]
    # A step in size (vectors above 1.1 are both more aligned and more vital) fools the partial rho, which
    # adjusts linearly in ranks; the fine bins, all but one on one side of the step, are not fooled.
    step = (sv > 1.1).astype(float)
    cos_s, damage_s = 0.2 + 0.3 * step + rng.normal(0, 0.05, n), 50 * step + rng.normal(0, 5, n)
    c = claim(_fake_atlas(cos_s, damage_s, sv, ["K"] * n, np.where(cos_s > 0.35, 0.001, 0.5), damage_s > 20),
              "action_out")
    assert c.partial_size.low > 0.1 and c.within.low < 0 and not c.criteria["beyond size"]["holds"]
    by_alignment = 200 * np.maximum(cos - 0.3, 0) + rng.normal(0, 3, n)
    c = claim(_fake_atlas(cos, by_alignment, sv, ["K"] * n, aligned_p, by_alignment > 30), "action_out")
    assert c.within.low > 0 and c.table.p_fisher < 0.05 and c.outcome == "supported"
    assert c.table_within_size.p < 0.01 and c.table_within_size.observed > c.table_within_size.expected
    # The pooled within-bin rho is the Fisher-z average of the bins' own Spearman rhos.
    order = np.argsort(sv, kind="stable")
    zs = [(len(p) - 3, math.atanh(sps.spearmanr(cos[p], by_alignment[p]).statistic))
          for p in np.array_split(order, n // 20)]
    assert c.within.rho == pytest.approx(math.tanh(sum(w * z for w, z in zs) / sum(w for w, _ in zs)))
    with pytest.raises(ValueError, match="no alignment columns"):
        claim(_fake_atlas(cos, by_size, sv, ["K"] * n, aligned_p, by_size > 40), "state_in")
