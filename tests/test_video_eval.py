"""The Moving-MNIST evaluator and the video metrics of `genforge eval`.

Quick on 2 CPU cores: clips generated from the shared MNIST files, a narrow evaluator trained for a hundred-odd
steps into a tmp folder (module-scoped), short clips. The full recipe's figures are in the evaluator's config
and the report, not a test.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import genforge.artifacts
from genforge.data.video import MovingMnist
from genforge.errors import UserError
from genforge.evaluation import evaluate_run, video_evaluator, video_metrics
from genforge.evaluation.video_evaluator import (VideoEvaluatorNet, VideoRecipe, load_video_evaluator,
                                                 train_video_evaluator, video_evaluator_name)
from genforge.evaluation.video_metrics import (clip_features, evaluate_video_clips, floor_clips, frame_classes,
                                               identity, motion_physics)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY = VideoRecipe(widths=(8, 16, 32), feature_dim=16, train_clips=1500, frames_per_clip=4, test_clips=150,
                   batch_size=64, max_lr=1e-2, position_weight=2.0)
OPTS = {"frames": 8, "fps": 8.0, "digits": 1, "canvas": 64, "size": 32, "motion": "bounce", "speed": [3.6, 3.6],
        "clips": 60000}
VIDEO_METRICS = {"frame_fd", "clip_fd", "identity_consistency", "label_accuracy", "class_entropy", "mean_speed",
                 "speed_jitter", "off_wall_reflections", "frozen_clips", "teleports"}
N = 60


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    assert (SHARED_DATA / "mnist").is_dir(), f"shared MNIST files not found under {SHARED_DATA}"
    return tmp_path_factory.mktemp("evaluators")


@pytest.fixture(scope="module")
def ev(root):
    return train_video_evaluator(OPTS, SHARED_DATA, root=root, recipe=TINY, max_steps=300, device="cpu")


@pytest.fixture(scope="module", autouse=True)
def small_reference():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(video_metrics, "REFERENCE_N", 200)
        yield


class FakeVideoModel:
    """What evaluate_run needs of a video generator: real Moving-MNIST test clips of the labels asked for (far
    from the indices the reference and the floor use), then spoiled as `mode` says."""

    modality = "video"

    def __init__(self, mode: str = "real", opts: dict = OPTS, dataset: str = "moving-mnist"):
        self.mode, self.opts = mode, dict(opts)
        self.meta = {"family": "fake", "name": f"fake-{mode}", "step": 7,
                     "data": {"dataset": dataset, "frames": opts["frames"], "fps": opts["fps"], "video": self.opts}}
        self.classes = MovingMnist("test", opts, SHARED_DATA).classes
        self.conditional, self.frames, self.fps = True, opts["frames"], opts["fps"]
        self.weights_file = "model.safetensors"
        self.calls = []

    def generate(self, n, seed=None, labels=None, frames=None, batch_size=16, progress=None, **options):
        self.calls.append({"n": n, "seed": seed, **options})
        if self.mode == "wrong-labels":
            labels = [(k + 1 + seed % 9) % len(self.classes) for k in labels]
        clips, _ = floor_clips(self.opts, SHARED_DATA, self.frames, 20_000 + 1000 * (seed or 0), n, labels)
        rng = np.random.default_rng(seed)
        if self.mode == "shuffled":
            clips = np.stack([c[rng.permutation(len(c))] for c in clips])
        elif self.mode == "frozen":
            clips = np.repeat(clips[:, :1], clips.shape[1], axis=1)
        return clips


def score(ev, mode: str, labels=True, seed: int = 0, floor: bool = True) -> dict:
    model = FakeVideoModel(mode)
    wanted = [k % 10 for k in range(N)] if labels else None
    clips = model.generate(N, seed=seed, labels=wanted)
    return evaluate_video_clips(clips, ev, OPTS, labels=[k % 10 for k in range(N)] if labels else None,
                                classes=model.classes, floor=floor)


def test_evaluator_learns_digits_and_positions_and_is_stored_as_safetensors(ev, root):
    cfg = json.loads((ev.directory / "config.json").read_text())
    assert ev.directory.name == "moving-mnist-v1-32" == video_evaluator_name(OPTS) and ev.id.startswith(cfg["name"])
    assert cfg["version"] == "v1" and cfg["modality"] == "video" and cfg["training"]["steps"] == 300
    assert cfg["training"]["seconds"] > 0 and cfg["test"]["frames"] == 150 * 4
    files = {p.name for p in ev.directory.iterdir()}
    assert files == {"config.json", "model.safetensors"}  # no pickle anywhere
    # 300 steps of a narrow net: far above chance (0.1) and a guess of the box's centre (~9 px error)
    assert ev.test_accuracy > 0.6, cfg["test"]
    assert cfg["test"]["position_mae_px"] < 3.0, cfg["test"]
    clips = MovingMnist("test", OPTS, SHARED_DATA).clips(np.arange(30))
    f1, d1, p1 = ev.extract(clips.clips)
    assert f1.shape == (30, 8, 16) and d1.shape == (30, 8, 10) and p1.shape == (30, 8, 2)
    assert float((p1 - torch.from_numpy(clips.tracks[:, :, 0])).abs().mean()) < 3.0
    # the BatchNorm-folded inference copy computes what the trained network computes
    net = VideoEvaluatorNet(32, cfg["arch"], True).eval()
    net.load_state_dict(load_file(str(ev.directory / "model.safetensors")))
    with torch.no_grad():
        f, d, p = net(video_evaluator.frames_to_input(clips.clips, 32))
    torch.testing.assert_close(f1.reshape(-1, 16), f, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(d1.reshape(-1, 10), d, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(p1.reshape(-1, 2), p * 36, atol=1e-3, rtol=1e-4)
    # RGB frames of another size are converted and resized: the same digit, about the same place
    big = np.repeat(np.repeat(np.repeat(clips.clips, 2, axis=2), 2, axis=3), 3, axis=4)
    _, d2, p2 = ev.extract(big)
    assert (d2.argmax(-1) == d1.argmax(-1)).float().mean() > 0.9 and float((p2 - p1).abs().mean()) < 1.5


def test_the_cache_is_reused_not_retrained(ev, root, monkeypatch):
    def boom(*a, **kw):
        raise AssertionError("retrained")

    monkeypatch.setattr(video_evaluator, "train_video_evaluator", boom)
    again = load_video_evaluator(OPTS, SHARED_DATA, root=root, train_if_missing=False)
    assert again.id == ev.id
    # train_video_evaluator itself returns the cached one unless forced
    same = train_video_evaluator({**OPTS, "motion": "stochastic", "frames": 16}, SHARED_DATA, root=root, recipe=TINY,
                                 max_steps=1)
    assert same.id == ev.id and same.config["training"]["steps"] == 300


def test_first_use_trains_with_a_notice_and_training_repeats_with_its_seed(tmp_path, monkeypatch, capsys,
                                                                            no_shipped_evaluators):
    small = dataclasses.replace(TINY, train_clips=200, test_clips=20, epochs=0.2)
    monkeypatch.setattr(video_evaluator, "VIDEO_RECIPE", small)
    a = load_video_evaluator(OPTS, SHARED_DATA, root=tmp_path / "a", device="cpu")
    assert "training it now" in capsys.readouterr().err
    b = train_video_evaluator(OPTS, SHARED_DATA, root=tmp_path / "b", device="cpu")
    c = train_video_evaluator(OPTS, SHARED_DATA, root=tmp_path / "c", device="cpu", seed=1)
    assert a.config["weights_sha256"] == b.config["weights_sha256"] != c.config["weights_sha256"]
    assert not list((tmp_path / "a").glob(".tmp-*"))  # written under a temporary name, then renamed
    with pytest.raises(UserError, match="No moving-mnist-v1-16"):
        load_video_evaluator({**OPTS, "size": 16}, SHARED_DATA, root=tmp_path / "a", train_if_missing=False)


def test_damaged_evaluators_and_unsupported_settings_are_user_errors(ev, tmp_path):
    copy = tmp_path / "evaluators"
    shutil.copytree(ev.directory, copy / ev.directory.name)
    weights = copy / ev.directory.name / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(UserError, match="damaged"):
        load_video_evaluator(OPTS, SHARED_DATA, root=copy, train_if_missing=False)
    with pytest.raises(UserError, match="1 or 2 digits"):
        load_video_evaluator({**OPTS, "digits": 3}, SHARED_DATA, root=copy)
    assert video_evaluator_name({**OPTS, "digits": 2, "size": None}) == "moving-mnist-v1-64-2digits"


def test_motion_physics_on_the_generators_own_tracks():
    """Exact positions (the generator's tracks, tol 1 px): the bounce rule scores zero everywhere; a reversal in
    mid-box, a jump and a halt are each caught by their own metric only."""
    opts = {**OPTS, "frames": 24}
    tracks = MovingMnist("test", opts, SHARED_DATA).clips(np.arange(200)).tracks[:, :, 0].astype(np.float64)
    m, details = motion_physics(tracks, 64, 3.6, 1.0)
    assert m["speed_jitter"] < 1e-4 and m["off_wall_reflections"] == 0 and m["teleports"] == 0
    assert m["frozen_clips"] == 0 and 3.3 < m["mean_speed"] <= 3.6  # steps into a wall are shortened
    assert details["reflections_at_walls"] > 0.5 and details["jitter_series"] > 100  # bounces happen, at walls
    # a straight track that turns back in the middle of the box
    t = np.arange(24, dtype=np.float64)
    x = np.where(t < 12, 8 + 1.5 * t, 8 + 1.5 * (22 - t))
    turn = np.stack([x, 10 + 0.3 * t], 1)[None]
    m = motion_physics(turn, 64, 3.6, 1.0)[0]
    assert m["off_wall_reflections"] == 1 and m["teleports"] == 0 and m["speed_jitter"] < 1e-9
    jump = turn.copy()
    jump[0, 15:, 1] += 9
    m = motion_physics(jump, 64, 3.6, 1.0)[0]
    assert m["teleports"] == 1 and m["speed_jitter"] > 0.5
    halted = np.repeat(turn[:, :1], 24, axis=1)
    m = motion_physics(halted, 64, 3.6, 1.0)[0]
    assert m["frozen_clips"] == 1 and m["mean_speed"] == 0 and m["off_wall_reflections"] == 0


def test_identity_and_clip_features_are_what_the_docstring_says():
    classes = torch.tensor([[3, 3, 5, 3], [1, 2, 2, 1]])
    majority, share = identity(classes, 10)
    assert majority.tolist() == [3, 1] and share.tolist() == [0.75, 0.5]  # a tie goes to the lower class
    f = torch.tensor([[[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]]])
    torch.testing.assert_close(clip_features(f), torch.tensor([[2.0, 1.0, (8 / 3) ** 0.5, 0.0, 2.0, 0.0]]))
    logits = torch.full((1, 4, 10), -5.0)
    logits[0, 0, [2, 7]] = 3.0  # two digits present: "2+7"
    logits[0, 1, 4] = 3.0  # one: "4+4"
    logits[0, 2, [1, 2, 3]] = torch.tensor([3.0, 2.0, 1.0])  # three: the two most likely, "1+2"
    logits[0, 3, [6, 9]] = torch.tensor([-1.0, -2.0])  # none: the two most likely, "6+9"
    from genforge.data.video import pair_classes

    names = [pair_classes()[i] for i in frame_classes(logits, 2)[0].tolist()]
    assert names == ["2+7", "4+4", "1+2", "6+9"]


def test_real_clips_score_at_the_floor_and_spoilt_clips_far_from_it(ev):
    real = score(ev, "real")
    m, floor = real["metrics"], real["floor"]["metrics"]
    assert set(m) == set(floor) == VIDEO_METRICS
    assert real["details"]["n"] == real["floor"]["details"]["n"] == N and real["details"]["reference_n"] == 200
    assert m["clip_fd"] < 1.6 * floor["clip_fd"] and m["frame_fd"] < 1.6 * floor["frame_fd"]
    assert abs(m["label_accuracy"] - floor["label_accuracy"]) < 0.1 and floor["label_accuracy"] > 0.7
    assert abs(m["identity_consistency"] - floor["identity_consistency"]) < 0.06
    assert m["frozen_clips"] == floor["frozen_clips"] == 0 and m["teleports"] < 0.5
    assert abs(m["mean_speed"] - floor["mean_speed"]) < 0.5

    shuffled = score(ev, "shuffled", floor=False)["metrics"]
    assert shuffled["frame_fd"] == pytest.approx(m["frame_fd"], rel=1e-4)  # the same frames, another order...
    assert shuffled["clip_fd"] > 3 * m["clip_fd"]  # ...which the clip features see
    assert shuffled["teleports"] > m["teleports"] + 1 and shuffled["off_wall_reflections"] > m["off_wall_reflections"]
    assert shuffled["speed_jitter"] > 1.3 * m["speed_jitter"] and shuffled["mean_speed"] > 2 * m["mean_speed"]
    assert shuffled["label_accuracy"] == m["label_accuracy"]  # the digits are right: only the motion is wrong

    frozen = score(ev, "frozen", floor=False)["metrics"]
    assert frozen["clip_fd"] > 3 * m["clip_fd"] and frozen["frozen_clips"] == 1.0 and frozen["mean_speed"] == 0
    assert frozen["identity_consistency"] == 1.0  # one frame shown T times cannot change digit

    wrong = score(ev, "wrong-labels", floor=False)["metrics"]
    assert wrong["label_accuracy"] < 0.2 < floor["label_accuracy"] and "floor" not in wrong
    unconditional = score(ev, "real", labels=False)
    assert not {"label_accuracy"} & (set(unconditional["metrics"]) | set(unconditional["floor"]["metrics"]))


def test_two_digit_clips_get_pair_identity_and_no_motion_metrics(root):
    opts = {**OPTS, "digits": 2}
    two = train_video_evaluator(opts, SHARED_DATA, root=root, recipe=dataclasses.replace(TINY, train_clips=500),
                                max_steps=30, device="cpu")
    assert two.directory.name == "moving-mnist-v1-32-2digits" and not two.has_positions
    clips = MovingMnist("test", opts, SHARED_DATA).clips(np.arange(5000, 5000 + 20))
    _, logits, pos = two.extract(clips.clips)
    assert pos is None and logits.shape == (20, 8, 10)
    r = evaluate_video_clips(clips.clips, two, opts, labels=clips.labels, classes=clips.classes)
    assert "mean_speed" not in r["metrics"] and "not measured" in r["details"]["motion"]
    assert set(r["metrics"]) == set(r["floor"]["metrics"]) == {"frame_fd", "clip_fd", "identity_consistency",
                                                              "label_accuracy", "class_entropy"}
    assert all("+" in name for name in r["details"]["class_counts"])


def test_genforge_eval_dispatches_a_video_run_and_prints_the_floor(ev, root, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from genforge.cli import app

    fake = FakeVideoModel("real")
    monkeypatch.setattr(genforge.artifacts, "load", lambda *a, **kw: fake)
    a = evaluate_run(tmp_path, n=N, data_dir=SHARED_DATA, seed=2, evaluator_root=root, write=False)
    b = evaluate_run(tmp_path, n=N, data_dir=SHARED_DATA, seed=2, evaluator_root=root, write=False)
    assert a["metrics"] == b["metrics"] and a["floor"] == b["floor"]
    assert set(a["metrics"]) == set(a["floor"]["metrics"]) == VIDEO_METRICS
    assert a["model"]["modality"] == "video" and a["model"]["frames"] == 8 and a["evaluator"]["id"] == ev.id
    assert fake.calls[0] == {"n": N, "seed": 2} and "not FVD" in a["summary"] and "real floor" in a["summary"]
    assert "fvd" not in json.dumps(a).lower().replace("not fvd", "")
    with pytest.raises(UserError, match="image runs"):
        evaluate_run(tmp_path, n=N, data_dir=SHARED_DATA, evaluator_root=root, write=False,
                     inception_weights=tmp_path / "inception.pth")
    with pytest.raises(UserError, match="too few"):
        evaluate_run(tmp_path, n=5, data_dir=SHARED_DATA, evaluator_root=root, write=False)
    result = CliRunner().invoke(app, ["eval", str(tmp_path), "--n", "40", "--data-dir", str(SHARED_DATA),
                                      "--no-progress"], env={"GENFORGE_EVALUATORS": str(root)})
    assert result.exit_code == 0, result.output
    assert "real test clips" in result.output and "clip_fd" in result.output and "teleports" in result.output
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["n"] == 40 and set(report["floor"]["metrics"]) == VIDEO_METRICS
    monkeypatch.setattr(genforge.artifacts, "load", lambda *a, **kw: FakeVideoModel("real", dataset="folder:/x"))
    with pytest.raises(UserError, match="folder of clips"):
        evaluate_run(tmp_path, n=N, data_dir=SHARED_DATA, evaluator_root=root, write=False)


def test_genforge_evaluator_train_moving_mnist(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from genforge.cli import app

    monkeypatch.setattr(video_evaluator, "VIDEO_RECIPE", dataclasses.replace(TINY, train_clips=100, test_clips=10))
    args = ["evaluator", "train", "moving-mnist", "--size", "16", "--epochs", "0.5", "--data-dir", str(SHARED_DATA),
            "--no-progress"]
    env = {"GENFORGE_EVALUATORS": str(tmp_path)}
    first = CliRunner().invoke(app, args, env=env)
    assert first.exit_code == 0, first.output
    assert "moving-mnist-v1-16-" in first.output and "position error" in first.output
    assert (tmp_path / "moving-mnist-v1-16" / "model.safetensors").exists()
    again = CliRunner().invoke(app, args, env=env)
    assert again.exit_code == 0 and "already trained (cached)" in again.output


def test_training_video_fd_scores_a_run_during_training_and_keeps_the_best(root, ev, tmp_path):
    """train.eval_every on a video run: the per-clip FD of fresh clips, logged, best weights kept; the same
    generator scores the same."""
    from genforge.evaluation.training_video import TrainingVideoFD
    from genforge.training import train
    from test_video_models import video_config

    cfg = video_config("gan", eval_every=2, checkpoint_every=100).model_dump()
    cfg["data"]["video"].update({k: OPTS[k] for k in ("frames", "size", "speed")})
    score = TrainingVideoFD("moving-mnist", {**cfg["data"]["video"]}, SHARED_DATA, n=20, seed=1, evaluator_root=root)
    assert score.evaluator.id == ev.id  # the module's tiny evaluator, not a new one
    from genforge.training.config import validate

    run = train(validate(cfg), tmp_path / "run", SHARED_DATA, progress=False, evaluate=score).run_dir
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "eval_score" in r]
    assert [r["step"] for r in evals] == [2, 4] and all(np.isfinite(r["eval_score"]) and r["eval_score"] > 0 for r in evals)
    assert (run / "model-best.safetensors").exists()
    from genforge.methods.clips import clips_to_model_range

    real_source = MovingMnist("test", {**cfg["data"]["video"]}, SHARED_DATA)
    real = lambda m, rng: clips_to_model_range(real_source.clips(range(5000, 5000 + m)).clips)  # noqa: E731
    still = lambda m, rng: real(m, rng)[:, :1].expand(m, 8, 1, 32, 32)  # noqa: E731  (each real clip frozen)
    assert score(real) < score(still) and score(still) == score(still)
    with pytest.raises(UserError, match="moving-mnist"):
        TrainingVideoFD("folder:/nowhere", OPTS, SHARED_DATA, evaluator_root=root)


def test_genforge_tune_studies_a_video_preset_by_its_clip_fd(root, tmp_path, monkeypatch):
    """`genforge tune` on a video run: trials scored by TrainingVideoFD (the evaluator for the run's frame size from
    the evaluators root), finished with values, the best configuration written."""
    import yaml

    from genforge.tuning import tune
    from test_video_models import video_config

    opts = {**OPTS, "size": 16, "frames": 4}
    train_video_evaluator(opts, SHARED_DATA, root=root, recipe=TINY, max_steps=60, device="cpu")
    monkeypatch.setenv("GENFORGE_EVALUATORS", str(root))
    raw = video_config("gan", max_steps=4, eval_every=2, eval_samples=100, checkpoint_every=4, sample_every=1000).model_dump()
    preset = tmp_path / "video.yaml"
    preset.write_text(yaml.safe_dump(raw))
    result = tune(str(preset), {"train.lr": {"log_uniform": [1e-4, 1e-2]}}, 2, tmp_path / "study", seed=1,
                  pruner="none", data_dir=SHARED_DATA, progress=False)
    values = [t["value"] for t in result.trials]
    assert len(values) == 2 and all(v is not None and np.isfinite(v) and v > 0 for v in values)
    assert yaml.safe_load(result.best_config.read_text())["data"]["dataset"] == "moving-mnist"
