"""Model zoo: shipped checkpoints, safe loading, datasets, determinism, and a tiny end-to-end build."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium")

from surgery import zoo  # noqa: E402
from surgery.behaviour.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from surgery.behaviour.metadata import DTMetadata  # noqa: E402
from surgery.cli import main  # noqa: E402
from surgery.zoo import datasets  # noqa: E402
from surgery.zoo.policies import GaussianNoise, LinearPolicy, LunarHeuristic  # noqa: E402
from surgery.zoo.rollout import play  # noqa: E402
from surgery.zoo.train import TrainConfig, make_model, train  # noqa: E402

SHIPPED = ("halfcheetah", "halfcheetah-seed1", "hopper", "hopper-seed1", "lunarlander")
TINY = dict(hidden_size=16, n_layer=1, n_inner=32, context_len=5, batch_size=8, warmup_steps=2, threads=1)


# --- shipped models -------------------------------------------------------------------------------

def test_names_lists_every_shipped_model():
    assert zoo.names() == sorted(SHIPPED)


def test_resolve_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="'nope'.*" + ", ".join(sorted(SHIPPED))):
        zoo.resolve("nope")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_loads_and_acts(name):
    model, meta = load_checkpoint(zoo.resolve(name))
    assert not model.training
    assert (model.config.hidden_size, model.config.n_layer, model.config.n_head) == (128, 3, 1)
    assert (meta.state_dim, meta.act_dim) == (model.config.state_dim, model.config.act_dim)
    assert len(meta.state_names) == meta.state_dim and len(meta.action_names) == meta.act_dim
    # The card's numbers come from a recorded 100-episode evaluation.
    assert meta.evaluation["episodes"] == 100 and len(meta.evaluation["returns"]) == 100
    assert (zoo.resolve(name) / "README.md").read_text().count(f"{meta.evaluation['return_mean']:.1f}") >= 1
    res = play(model, meta, episodes=2, seed=123, max_steps=25, progress=False)
    assert res["episodes"] == 2 and all(np.isfinite(res["returns"]))
    assert res["length_mean"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_plays_as_recorded(name):
    """20 of the card's 100 evaluation episodes, replayed: the same seeds give about the same returns."""
    model, meta = load_checkpoint(zoo.resolve(name))
    res = play(model, meta, episodes=20, seed=0, progress=False)
    recorded = np.array(meta.evaluation["returns"][:20])
    # Lockstep batches of another size round differently and MuJoCo amplifies it, so compare
    # means, not episodes; most episodes still match to the printed precision.
    assert res["return_mean"] == pytest.approx(recorded.mean(), rel=0.15)
    assert np.mean(np.isclose(res["returns"], recorded, rtol=1e-3)) >= 0.5


def test_cli_zoo_list(capsys):
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    for name in SHIPPED:
        meta = DTMetadata.load(zoo.resolve(name))
        line = next(l for l in out.splitlines() if l.startswith(name))
        assert meta.env_id in line and f"{meta.evaluation['return_mean']:.1f}" in line


def test_cli_eval_reports_return_and_seeds(capsys):
    assert main(["zoo", "eval", "lunarlander", "--episodes", "2", "--seed", "5", "--quiet", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["episodes"] == 2 and res["seeds"] == "run seed 5, episodes 0..1" and len(res["returns"]) == 2
    assert res["return_mean"] == pytest.approx(np.mean(res["returns"]), abs=0.01)


def test_cli_eval_unknown_model_is_one_line_error(capsys):
    assert main(["zoo", "eval", "no-such-model"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no-such-model" in err and "hopper" in err


# --- loading: corrupt and mismatched checkpoints --------------------------------------------------

def _tiny_meta(**kw) -> DTMetadata:
    d = dict(env_id="Hopper-v5", state_dim=11, act_dim=3, state_mean=[0.0] * 11, state_std=[1.0] * 11,
             return_scale=1000.0, target_returns=[3600.0], context_len=5)
    return DTMetadata(**{**d, **kw})


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    model = make_model(TrainConfig(**TINY), 11, 3, discrete=False)
    return save_checkpoint(model, _tiny_meta(), tmp_path / "ckpt"), model


def test_round_trip_is_bitwise(ckpt):
    path, model = ckpt
    loaded, meta = load_checkpoint(path)
    assert meta == _tiny_meta()
    ref = model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in loaded.state_dict().items())


def test_metadata_forms_are_equivalent(ckpt, tmp_path):
    path, _ = ckpt
    meta_file = tmp_path / "meta.json"
    shutil.move(path / "metadata.json", meta_file)
    with pytest.raises(FileNotFoundError, match="has no metadata.json"):
        load_checkpoint(path)
    d = json.loads(meta_file.read_text())
    for form in (meta_file, str(meta_file), d, DTMetadata.from_dict(d)):
        assert load_checkpoint(path, form)[1] == _tiny_meta()


def test_missing_directory_and_files(ckpt, tmp_path):
    path, _ = ckpt
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        load_checkpoint(tmp_path / "absent")
    (path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has no weights"):
        load_checkpoint(path)
    (path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(path)


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "config.json").write_text("{not json"), "config.json is not valid JSON"),
    (lambda p: _edit_json(p / "config.json", model_type="gpt2"), "not a decision-transformer config.*'gpt2'"),
    (lambda p: _edit_json(p / "config.json", state_dim=0), "state_dim must be a positive integer"),
    (lambda p: _truncate(p / "model.safetensors"), r"model.safetensors is truncated: tensor '.*' needs bytes"),
    (lambda p: _edit_json(p / "config.json", hidden_size=32),
     r"shapes differ from config.json: 'embed_action.bias' is \(16,\) in model.safetensors, the config makes it \(32,\)"),
    (lambda p: _edit_json(p / "metadata.json", state_dim=17, state_mean=[0.0] * 17, state_std=[1.0] * 17),
     "state_dim=17 but config.state_dim=11"),
    (lambda p: _edit_json(p / "metadata.json", discrete=True), "discrete=True but config.action_tanh=True"),
    (lambda p: _edit_json(p / "metadata.json", state_std=[0.0] * 11), "state_std must be positive"),
    (lambda p: _edit_json(p / "metadata.json", colour="red"), r"unknown metadata fields \['colour'\]"),
])
def test_damaged_checkpoint_is_refused(ckpt, damage, message):
    path, _ = ckpt
    damage(path)
    with pytest.raises(ValueError, match=message):
        load_checkpoint(path)


def test_nan_weights_are_refused(ckpt):
    from safetensors.torch import load_file, save_file

    path, _ = ckpt
    state = load_file(path / "model.safetensors")
    state["embed_state.weight"][0, 0] = float("nan")
    save_file(state, path / "model.safetensors")
    with pytest.raises(ValueError, match=r"model.safetensors: tensor 'embed_state.weight' has 1 non-finite value"):
        load_checkpoint(path)


def test_pickle_weights_are_refused_unopened(ckpt):
    path, model = ckpt
    (path / "model.safetensors").unlink()
    torch.save({"embed_state.weight": _Evil()}, path / "pytorch_model.bin")  # unpickling it would need code
    with pytest.raises(ValueError, match="pytorch_model.bin is a pickle checkpoint: refused") as e:
        load_checkpoint(path)
    assert "weights_only" not in str(e.value)


class _Evil:
    pass


def _edit_json(file, **changes):
    d = json.loads(file.read_text())
    d.update(changes)
    file.write_text(json.dumps(d))


def _truncate(file):
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


# --- datasets -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lunar_data():
    return datasets.collect("LunarLander-v3", lambda env, rng: LunarHeuristic(env, 0.1, rng), 3, seed=7, progress=False)


@pytest.fixture(scope="module")
def hopper_data():
    rng = np.random.default_rng(0)
    policy = LinearPolicy(0.3 * rng.standard_normal((3, 11)), np.zeros(11), np.ones(11))
    return datasets.collect("Hopper-v5", lambda env, r: GaussianNoise(policy, 0.1, r), 3, seed=7, progress=False)


def test_dataset_fields_and_shapes(lunar_data, hopper_data):
    for data, sd, action_shape, action_dtype in ((hopper_data, 11, (3,), np.float32), (lunar_data, 8, (), np.int64)):
        assert set(data) == set(datasets.FIELDS)
        n = len(data["rewards"])
        assert data["observations"].shape == data["next_observations"].shape == (n, sd)
        assert data["actions"].shape == (n, *action_shape) and data["actions"].dtype == action_dtype
        assert data["terminals"].dtype == data["timeouts"].dtype == bool
        eps = datasets.episodes(data)
        assert len(eps) == 3 and sum(len(e["rewards"]) for e in eps) == n
        for e in eps:  # within an episode each next observation is the following observation
            assert np.array_equal(e["next_observations"][:-1], e["observations"][1:])
            assert e["terminals"][-1] or e["timeouts"][-1]
            assert not (e["terminals"][:-1] | e["timeouts"][:-1]).any()
    assert lunar_data["actions"].min() >= 0 and lunar_data["actions"].max() <= 3


def test_collection_is_reproducible(lunar_data):
    again = datasets.collect("LunarLander-v3", lambda env, rng: LunarHeuristic(env, 0.1, rng), 3, seed=7, progress=False)
    assert all(np.array_equal(again[k], lunar_data[k]) for k in datasets.FIELDS)


def test_save_load_and_card(lunar_data, tmp_path):
    path = datasets.save(lunar_data, tmp_path / "d.npz")
    back = datasets.load(path)
    assert all(np.array_equal(back[k], lunar_data[k]) for k in datasets.FIELDS)
    card = datasets.card(back)
    rets = [e["rewards"].sum() for e in datasets.episodes(back)]
    assert card["episodes"] == 3 and card["steps"] == len(back["rewards"])
    assert card["return_max"] == pytest.approx(max(rets)) and card["return_mean"] == pytest.approx(np.mean(rets))


def test_bad_datasets_are_refused(lunar_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="no dataset file"):
        datasets.load(tmp_path / "absent.npz")
    np.savez(tmp_path / "bad.npz", observations=lunar_data["observations"], actions=lunar_data["actions"])
    with pytest.raises(ValueError, match=r"lacks fields \['rewards', 'terminals', 'timeouts'\]"):
        datasets.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "obj.npz", observations=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="not a readable .npz of plain arrays"):
        datasets.load(tmp_path / "obj.npz")


def test_minari_conversion_with_a_stub(monkeypatch, hopper_data):
    """Minari's episode layout (T+1 observations) -> D4RL fields; a stub stands in for the real package."""
    import sys
    import types

    eps = datasets.episodes(hopper_data)

    def episode(e):
        obs = np.concatenate([e["observations"], e["next_observations"][-1:]])
        return types.SimpleNamespace(observations=obs, actions=e["actions"], rewards=e["rewards"],
                                     terminations=e["terminals"], truncations=e["timeouts"])

    class Dataset:
        def iterate_episodes(self):
            return (episode(e) for e in eps)

    stub = types.SimpleNamespace(load_dataset=lambda dataset_id, download: Dataset() if not download else None)
    monkeypatch.setitem(sys.modules, "minari", stub)
    data = datasets.load("mujoco/hopper/expert-v0")
    assert all(np.allclose(data[k], hopper_data[k]) for k in datasets.FIELDS)


def test_minari_round_trip_with_real_minari(monkeypatch, tmp_path, lunar_data):
    """Write a real Minari dataset (no jax needed: buffers built whole) and read it back as D4RL fields."""
    minari = pytest.importorskip("minari")
    pytest.importorskip("h5py")
    from minari.data_collector.episode_buffer import EpisodeBuffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    buffers = [
        EpisodeBuffer(id=i, seed=7 + i, observations=np.concatenate([e["observations"], e["next_observations"][-1:]]),
                      actions=e["actions"], rewards=list(e["rewards"]), terminations=list(e["terminals"]),
                      truncations=list(e["timeouts"]), infos={})
        for i, e in enumerate(datasets.episodes(lunar_data))
    ]
    with pytest.warns(UserWarning):  # minari asks for a description and an eval env; not needed here
        minari.create_dataset_from_buffers("test/lunar/heuristic-v0", buffers, env="LunarLander-v3", algorithm_name="heuristic")
    back = datasets.load("test/lunar/heuristic-v0")
    assert all(np.array_equal(back[k], lunar_data[k]) for k in datasets.FIELDS)
    with pytest.raises(FileNotFoundError, match="not installed locally"):
        datasets.load("test/lunar/absent-v0")


def test_minari_id_without_minari_says_how_to_fix(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "minari", None)  # import minari now raises ImportError
    with pytest.raises(ValueError, match="minari is not installed"):
        datasets.load("mujoco/hopper/expert-v0")


# --- training and rollouts ------------------------------------------------------------------------

@pytest.mark.parametrize("discrete", [False, True])
def test_training_is_deterministic_for_a_seed(discrete, hopper_data, lunar_data):
    data, act_dim = (lunar_data, 4) if discrete else (hopper_data, 3)
    runs = [train(TrainConfig(seed=s, steps=4, **TINY), data, act_dim, discrete, progress=False) for s in (1, 1, 2)]
    a, b, c = (r["model"].state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert runs[0]["losses"] == runs[1]["losses"]
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert runs[0]["model"].config.action_tanh is (not discrete)


def test_ars_is_deterministic_and_improves_nothing_by_accident():
    from surgery.zoo.ars import ARSConfig, train_ars

    cfg = ARSConfig(env_id="Hopper-v5", iters=3, eval_every=3, eval_episodes=1, n_directions=2, top_directions=1)
    a, b = train_ars(cfg, progress=False), train_ars(cfg, progress=False)
    assert np.array_equal(a.best.M, b.best.M) and a.best_return == b.best_return
    assert not np.array_equal(a.best.M, np.zeros_like(a.best.M))  # the update did move the policy
    assert np.all(a.best.std > 0)


# --- the whole pipeline, tiny budgets -------------------------------------------------------------

@pytest.mark.parametrize("name", ["lunarlander", "hopper"])
def test_tiny_build_produces_a_loadable_checkpoint(name, tmp_path):
    from surgery.zoo.build import BuildOptions, build

    opts = BuildOptions(out=tmp_path, expert_iters=2, episodes=2, train_steps=3, eval_episodes=2, progress=False)
    logs = []
    model_dir = build(name, opts, log=logs.append)
    model, meta = load_checkpoint(model_dir)
    assert meta.evaluation["episodes"] == 2 and meta.dataset == f"{name}-mixed"
    card = (model_dir / "README.md").read_text()
    assert f"{meta.evaluation['return_mean']:.1f}" in card and f"surgery zoo build {name}" in card
    data_card = json.loads((tmp_path / name / "data" / "card.json").read_text())
    assert data_card["levels"]["mixed"]["episodes"] == 4
    # Resuming skips every finished stage and leaves the checkpoint untouched.
    before = (model_dir / "model.safetensors").read_bytes()
    logs.clear()
    build(name, opts, log=logs.append)
    assert len(logs) == 4 and all("skipped" in line for line in logs)
    assert (model_dir / "model.safetensors").read_bytes() == before
    # Resuming with other budgets is refused instead of silently mixing two builds.
    with pytest.raises(ValueError, match=r"holds a data stage built with .*'episodes': 2.*'episodes': 3"):
        build(name, BuildOptions(out=tmp_path, expert_iters=2, episodes=3, train_steps=3, eval_episodes=2, progress=False))


def test_stop_after_stops_even_when_the_stage_was_done(tmp_path):
    from surgery.zoo.build import BuildOptions, build

    opts = BuildOptions(out=tmp_path, episodes=1, stop_after="data", progress=False)
    assert build("lunarlander", opts, log=lambda _: None) == tmp_path / "lunarlander" / "data"
    assert build("lunarlander", opts, log=lambda _: None) == tmp_path / "lunarlander" / "data"
    assert not (tmp_path / "lunarlander" / "train").exists()


def test_zoo_eval_leaves_the_thread_count_as_it_found_it(capsys):
    """Library and CLI code never leave the process on another thread count (results depend on it)."""
    before = torch.get_num_threads()
    main(["zoo", "eval", "lunarlander", "--episodes", "1", "--threads", "1" if before > 1 else "2", "--quiet"])
    assert torch.get_num_threads() == before


def test_train_seed_changes_only_the_training(tmp_path):
    """--train-seed: a twin DT trained on byte-identical expert and datasets; a resume with another training seed is refused."""
    from surgery.zoo.build import BuildOptions, build

    tiny = dict(expert_iters=2, episodes=2, train_steps=3, eval_episodes=2, progress=False)
    a, b = tmp_path / "a", tmp_path / "b"
    build("hopper", BuildOptions(out=a, seed=0, stop_after="train", **tiny), log=lambda _: None)
    twin = BuildOptions(out=b, seed=0, train_seed=1, **tiny)
    model_dir = build("hopper", twin, log=lambda _: None)
    files = sorted(p.relative_to(a / "hopper") for p in (a / "hopper").glob("*/*.npz"))
    assert {str(f) for f in files} >= {f"data/hopper-{lv}.npz" for lv in ("expert", "medium", "mixed")}
    assert all((a / "hopper" / f).read_bytes() == (b / "hopper" / f).read_bytes() for f in files)  # expert and datasets, byte for byte
    assert (a / "hopper/data/card.json").read_text() == (b / "hopper/data/card.json").read_text()
    wa, wb = (load_checkpoint(d / "hopper" / "train")[0].state_dict() for d in (a, b))
    assert not all(torch.equal(wa[k], wb[k]) for k in wa)
    meta = DTMetadata.load(model_dir)
    assert meta.seeds["expert"] == 0 and meta.seeds["train"] == 1
    assert DTMetadata.load(a / "hopper" / "train").seeds["train"] == 0
    assert json.loads((b / "hopper/train/train.json").read_text())["config"]["seed"] == 1
    assert "surgery zoo build hopper --seed 0 --train-seed 1 " in (model_dir / "README.md").read_text()
    # Same training seed: every stage is skipped. Another one (or none, i.e. --seed's): refused at the train stage.
    logs = []
    build("hopper", twin, log=logs.append)
    assert len(logs) == 4 and all("skipped" in line for line in logs)
    for other in (2, None):
        logs.clear()
        with pytest.raises(ValueError, match=r"holds a train stage built with .*'train_seed': 1"):
            build("hopper", BuildOptions(out=b, seed=0, train_seed=other, **tiny), log=logs.append)
        assert logs == []  # every marker is checked before any stage runs or is reported
    # --train-seed equal to --seed is the plain build: a marker written without it is accepted.
    logs.clear()
    build("hopper", BuildOptions(out=a, seed=0, train_seed=0, stop_after="train", **tiny), log=logs.append)
    assert len(logs) == 3 and all("skipped" in line for line in logs)


def test_a_refused_build_changes_nothing(tmp_path, monkeypatch):
    """A later stage built with other options is refused before an earlier, unfinished stage runs."""
    from surgery.zoo import build as zoo_build

    ran = []
    for stage in zoo_build.STAGES:
        monkeypatch.setattr(zoo_build, f"stage_{stage}", lambda s, root, opts, stage=stage: ran.append(stage))
    root = tmp_path / "lunarlander"
    root.mkdir()
    (root / ".data.done").write_text(json.dumps({"seed": 0, "expert_iters": None, "expert_minutes": None,
                                                 "episodes": 7}) + "\n")  # no .expert.done: expert would rerun
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    with pytest.raises(ValueError, match=r"holds a data stage built with .*'episodes': 7"):
        zoo_build.build("lunarlander", zoo_build.BuildOptions(out=tmp_path, episodes=3, progress=False),
                        log=lambda _: None)
    assert ran == [] and {p.name: p.read_bytes() for p in root.iterdir()} == before


def test_a_stage_that_reruns_invalidates_the_later_ones(tmp_path, monkeypatch):
    from surgery.zoo import build as zoo_build

    ran = []

    def stub(s, root, opts, stage):
        root.mkdir(parents=True, exist_ok=True)
        ran.append(stage)

    for stage in zoo_build.STAGES:
        monkeypatch.setattr(zoo_build, f"stage_{stage}", lambda s, root, opts, stage=stage: stub(s, root, opts, stage))
    opts = zoo_build.BuildOptions(out=tmp_path, episodes=3, progress=False)
    zoo_build.build("lunarlander", opts, log=lambda _: None)
    assert ran == list(zoo_build.STAGES)
    (tmp_path / "lunarlander" / ".expert.done").unlink()  # the user asks for the expert to be rebuilt
    ran.clear()
    zoo_build.build("lunarlander", opts, log=lambda _: None)
    assert ran == list(zoo_build.STAGES)  # not expert alone, with data trained on the old expert
