"""Evaluation: the metrics must move the right way on real MNIST, and `genforge eval` must work end to end.

To stay fast on 2 CPU cores the tests use a data folder holding real MNIST subsets (the first 12,000
training and 2,000 test images of the shared files, in the standard IDX layout) and a short evaluator
(120 steps, ~95% test accuracy) trained once per module into a tmp folder. The full recipe's
accuracy (>= 99% on MNIST) is a benchmark figure, not a test.
"""

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from genforge.data import load_image_dataset
from genforge.errors import UserError
from genforge.evaluation import (EvaluatorFeatures, EvaluatorNet, FrechetDistance, TrainingFID, evaluate_images, evaluate_run,
                                 load_evaluator, memorization, memorization_threshold, prdc, reference_features,
                                 train_evaluator)
from genforge.training import train
from tiny import tiny_config

SHARED_DATA = Path(os.environ.get("GENFORGE_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
METRICS = {"fid", "kid", "is", "precision", "recall", "density", "coverage", "classes_hit", "class_entropy",
           "memorization"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """On a busy shared machine, OpenMP workers waiting on each other slow every op by an order of
    magnitude; these sizes gain little from a second thread anyway."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    path.write_bytes(struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


@pytest.fixture(scope="module")
def shared_data(tmp_path_factory) -> Path:
    """A data folder with real MNIST subsets, laid out like the shared one (uncompressed IDX files)."""
    mnist = SHARED_DATA / "mnist"
    assert mnist.is_dir(), f"shared datasets not found: expected the MNIST *-ubyte.gz files in {mnist}"
    out = tmp_path_factory.mktemp("data")
    (out / "mnist").mkdir()
    for split, prefix, count in (("train", "train", 12_000), ("test", "t10k", 2_000)):
        ds = load_image_dataset("mnist", SHARED_DATA, split, download=False)
        write_idx(out / "mnist" / f"{prefix}-images-idx3-ubyte", ds.images[:count, :, :, 0].numpy(), 0x803)
        write_idx(out / "mnist" / f"{prefix}-labels-idx1-ubyte", ds.labels[:count].numpy().astype(np.uint8), 0x801)
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("evaluators")


@pytest.fixture(scope="module")
def ev(shared_data, root):
    return train_evaluator("mnist", shared_data, root=root, max_steps=120, device="cpu")


@pytest.fixture(scope="module")
def mnist(shared_data):
    return load_image_dataset("mnist", shared_data, "train"), load_image_dataset("mnist", shared_data, "test")


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    plain = train(tiny_config(max_steps=4), base / "plain", progress=False).run_dir
    cond = train(tiny_config(model={"conditional": True}, max_steps=4), base / "cond", progress=False).run_dir
    return plain, cond


def blur(images_u8: torch.Tensor, sigma: float) -> torch.Tensor:
    x = images_u8.permute(0, 3, 1, 2).float()
    r = int(3 * sigma + 0.5)
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-t**2 / (2 * sigma**2))
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def noisy(images_u8: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = images_u8.float() + torch.randn(images_u8.shape, generator=g) * std * 255
    return x.round().clamp(0, 255).to(torch.uint8)


def uniform_noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 28, 28, 1), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_evaluator_artifact_is_safetensors_and_reloads_identically(ev, shared_data, root, mnist):
    files = sorted(p.name for p in ev.directory.iterdir())
    assert "config.json" in files and "model.safetensors" in files
    assert not [f for f in files if f.endswith((".pt", ".pth", ".pkl", ".bin"))]
    assert ev.id.startswith("mnist-v1-") and ev.config["training"]["steps"] == 120
    assert 0.9 < ev.test_accuracy <= 1.0
    again = load_evaluator("mnist-mini", shared_data, root=root, train_if_missing=False)  # mnist-mini -> mnist
    assert again.id == ev.id
    images = mnist[1].images[:64]
    assert torch.equal(again.extract(images)[0], ev.extract(images)[0])
    # the BatchNorm-folded inference copy computes what the trained network computes
    net = EvaluatorNet(1, 28, 28, 10, (32, 64), 1, 128).eval()
    net.load_state_dict(load_file(str(ev.directory / "model.safetensors")))
    with torch.no_grad():
        x = images.permute(0, 3, 1, 2).float() / 127.5 - 1
        torch.testing.assert_close(ev.extract(images)[1], net(x), atol=1e-4, rtol=1e-4)


def test_damaged_evaluator_or_bad_arguments_are_user_errors(ev, shared_data, tmp_path, mnist, no_shipped_evaluators):
    root = tmp_path / "evaluators"
    shutil.copytree(ev.directory, root / ev.directory.name)
    weights = root / ev.directory.name / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(UserError, match="damaged"):
        load_evaluator("mnist", shared_data, root=root, train_if_missing=False)
    with pytest.raises(UserError, match="No mnist evaluator"):
        load_evaluator("mnist", shared_data, root=tmp_path / "empty", train_if_missing=False)
    with pytest.raises(UserError, match="reference"):
        evaluate_images(mnist[1].images[:50], ev, reference="validation")
    with pytest.raises(UserError, match="too few"):
        evaluate_images(mnist[1].images[:5], ev)


def test_fid_real_far_below_noise_and_monotone_in_blur_and_noise(ev, mnist):
    real = reference_features(ev, "test").features
    distance = FrechetDistance(real)
    train_subset = mnist[0].images[:2000]
    feats = lambda images: ev.extract(images)[0]  # noqa: E731
    fid_real = distance(feats(train_subset))
    fid_noise = distance(feats(uniform_noise(2000)))
    assert fid_real < fid_noise / 20, (fid_real, fid_noise)
    blurred = [distance(feats(blur(train_subset, s))) for s in (0.6, 1.0, 1.5, 2.5)]
    assert fid_real < blurred[0] and blurred == sorted(blurred), (fid_real, blurred)
    noised = [distance(feats(noisy(train_subset, s))) for s in (0.05, 0.15, 0.3, 0.6)]
    assert fid_real < noised[0] and noised == sorted(noised), (fid_real, noised)


def test_precision_recall_density_coverage_sanity(ev, mnist):
    real = reference_features(ev, "test").features[:2000]
    other_real = ev.extract(mnist[0].images[:2000])[0]
    same = prdc(real, other_real, k=5)
    assert same["precision"] > 0.6 and same["recall"] > 0.6 and same["coverage"] > 0.6, same
    assert 0.6 < same["density"] < 1.6, same
    one_image = ev.extract(mnist[0].images[:1].expand(2000, -1, -1, -1))[0]
    collapsed = prdc(real, one_image, k=5)
    assert collapsed["recall"] < 0.02 and collapsed["coverage"] < 0.02, collapsed
    noise = prdc(real, ev.extract(uniform_noise(2000))[0], k=5)
    assert noise["precision"] < 0.1 and noise["density"] < 0.1, noise


def test_memorization_flags_copies_not_noise_or_new_real_images(ev, mnist):
    threshold = memorization_threshold(ev, "train")
    train_feats = reference_features(ev, "train").features
    copies = ev.extract(mnist[0].images[5000:6000])[0]  # a "model" that returns training images
    assert memorization(copies, train_feats, threshold)["memorization"] > 0.95
    assert memorization(ev.extract(uniform_noise(1000))[0], train_feats, threshold)["memorization"] == 0.0
    held_out = reference_features(ev, "test").features[:1000]
    assert memorization(held_out, train_feats, threshold)["memorization"] < 0.05


def test_conditional_accuracy_of_real_test_images_matches_evaluator_accuracy(ev, mnist):
    test = mnist[1]
    report = evaluate_images(test.images, ev, labels=test.labels, reference="train", seed=0)
    m = report["metrics"]
    assert abs(m["conditional_accuracy"] - ev.test_accuracy) <= 0.01, (m["conditional_accuracy"], ev.test_accuracy)
    assert m["classes_hit"] == 10 and m["class_entropy"] > 0.98
    assert m["memorization"] < 0.05  # held-out images are not copies
    assert m["is"] > 6  # ten confidently recognised, evenly used classes (the short evaluator is less sure)
    assert set(report["details"]["class_counts"]) == {str(d) for d in range(10)}


def test_run_evaluation_is_reproducible_and_conditional_runs_get_accuracy(ev, tiny_runs, shared_data, root):
    plain, cond = tiny_runs
    a = evaluate_run(plain, n=300, data_dir=shared_data, seed=3, evaluator_root=root, write=False)
    b = evaluate_run(plain, n=300, data_dir=shared_data, seed=3, evaluator_root=root, write=False)
    c = evaluate_run(plain, n=300, data_dir=shared_data, seed=4, evaluator_root=root, write=False)
    assert a["metrics"] == b["metrics"] and a["details"] == b["details"]
    assert a["metrics"]["fid"] != c["metrics"]["fid"]
    assert "conditional_accuracy" not in a["metrics"]
    # mnist-mini trains on the MNIST test images, so that split is what memorization compares against
    assert a["details"]["memorization_train_split"] == "test"
    r = evaluate_run(cond, n=300, data_dir=shared_data, seed=0, evaluator_root=root, write=False)
    assert 0.0 <= r["metrics"]["conditional_accuracy"] <= 1.0 and METRICS <= set(r["metrics"])


def test_training_fid_separates_real_from_noise_and_repeats(ev, shared_data, root, mnist):
    fid = TrainingFID("mnist", shared_data, n=600, seed=0, evaluator_root=root)
    train_images = mnist[0].images

    def real(m, rng):
        return train_images[torch.randint(0, len(train_images), (m,), generator=rng)]

    def noise(m, rng):  # the float NCHW [-1, 1] convention of a method's sample()
        return torch.rand(m, 1, 28, 28, generator=rng) * 2 - 1

    assert fid(real) == fid(real)
    assert fid(real) < fid(noise) / 20


def test_evaluator_features_plug_into_torchmetrics(ev, mnist):
    from torchmetrics.image.fid import FrechetInceptionDistance

    module = EvaluatorFeatures(ev)
    assert module(torch.randint(0, 255, (2, 3, 299, 299), dtype=torch.uint8)).shape == (2, ev.feature_dim)
    metric = FrechetInceptionDistance(feature=module)
    metric.update(mnist[1].images[:500].permute(0, 3, 1, 2), real=True)
    metric.update(mnist[0].images[:500].permute(0, 3, 1, 2), real=False)
    from_torchmetrics = float(metric.compute())
    ours = FrechetDistance(ev.extract(mnist[1].images[:500])[0])(ev.extract(mnist[0].images[:500])[0])
    assert from_torchmetrics == pytest.approx(ours, rel=1e-3)


def test_inception_option_without_weights_is_a_user_error(tiny_runs, shared_data, root, tmp_path):
    with pytest.raises(UserError, match="inception-weights"):
        evaluate_run(tiny_runs[0], n=100, data_dir=shared_data, evaluator_root=root,
                     inception_weights=tmp_path / "missing.pth", write=False)


def genforge(*args, env=None):
    return subprocess.run([sys.executable, "-m", "genforge.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_cli_eval_writes_eval_json(ev, tiny_runs, shared_data, root):
    run = tiny_runs[0]
    p = genforge("eval", run, "--n", 200, "--data-dir", shared_data, "--seed", 1, "--no-progress",
                 env={"GENFORGE_EVALUATORS": str(root)})
    assert p.returncode == 0, p.stderr
    report = json.loads((run / "eval.json").read_text())
    assert METRICS <= set(report["metrics"])
    assert report["n"] == 200 and report["seed"] == 1 and report["reference"] == "test"
    assert report["evaluator"]["id"] == ev.id
    assert all(np.isfinite(v) for v in report["metrics"].values())
    assert "fid" in p.stdout and "eval.json" in p.stdout


@pytest.mark.parametrize("case", ["folder-run", "unknown-dataset"])
def test_cli_without_an_evaluator_exits_2_with_one_line(case, tiny_runs, tmp_path, root):
    if case == "folder-run":
        run = tmp_path / "folder-run"
        shutil.copytree(tiny_runs[0], run, ignore=shutil.ignore_patterns("checkpoints", "tensorboard", "samples"))
        meta = json.loads((run / "config.json").read_text())
        meta["data"]["dataset"] = f"folder:{tmp_path}"
        (run / "config.json").write_text(json.dumps(meta))
        args = ["eval", run, "--n", 100]
    else:
        args = ["evaluator", "train", "imagenet"]
    p = genforge(*args, env={"GENFORGE_EVALUATORS": str(root), "GENFORGE_DATA": str(tmp_path / "data")})
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "mnist, fashion-mnist, cifar10" in p.stderr
