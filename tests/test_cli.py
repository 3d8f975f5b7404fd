import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from tiny import tiny_raw


def genforge(*args, env=None):
    return subprocess.run([sys.executable, "-m", "genforge.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_raw(max_steps=4)))
    run = root / "run"
    p = genforge("train", cfg, "--out", run, "--seed", 5, "--set", "train.log_every=1", "--no-progress")
    assert p.returncode == 0, p.stderr
    return cfg, run


def test_train_then_sample_png_npy_and_folder(trained, tmp_path):
    cfg, run = trained
    meta = json.loads((run / "config.json").read_text())
    assert meta["config"]["train"]["seed"] == 5 and meta["config"]["train"]["log_every"] == 1
    p = genforge("sample", run, "--n", 6, "--seed", 2, "--out", tmp_path / "grid.png")
    assert p.returncode == 0, p.stderr
    assert Image.open(tmp_path / "grid.png").size[0] > 28
    p = genforge("sample", run, "--n", 6, "--seed", 2, "--out", tmp_path / "x.npy")
    arr = np.load(tmp_path / "x.npy")
    assert arr.shape == (6, 28, 28, 1) and arr.dtype == np.uint8
    p = genforge("sample", run, "--n", 3, "--seed", 2, "--out", str(tmp_path / "each") + "/")
    assert p.returncode == 0, p.stderr
    files = sorted((tmp_path / "each").glob("*.png"))
    assert len(files) == 3
    assert np.array_equal(np.asarray(Image.open(files[0])), arr[0, :, :, 0])  # same seed, same first image


def test_resume_to_more_steps(trained, tmp_path):
    cfg, run = trained
    p = genforge("train", cfg, "--out", run, "--resume", "--max-steps", 6, "--no-progress")
    assert p.returncode == 0, p.stderr
    assert json.loads((run / "config.json").read_text())["step"] == 6


@pytest.mark.parametrize("args,needle", [
    (["train", "no-such-preset", "--out", "RUN"], "Unknown preset 'no-such-preset'"),
    (["train", "quickstart", "--out", "RUN", "--set", "train.lrr=1"], "Unknown config key 'train.lrr'"),
    (["train", "quickstart", "--out", "RUN", "--dataset", "imagenet"], "imagenet"),
    (["train", "quickstart", "--out", "RUN", "--dataset", "mnist", "--data-dir", "EMPTY", "--max-steps", "1"], "train-images-idx3-ubyte"),
    (["sample", "NOPE", "--n", "2", "--out", "x.png"], "Run directory not found"),
    (["sample", "RUNDIR", "--n", "2", "--out", "x.gif"], ".png"),
    (["sample", "RUNDIR", "--n", "2"], "--out is required"),
    (["sample", "RUNDIR", "--out", "x.png", "--prompt", "hi"], "--prompt applies to text models"),
    (["data", "info", "nosuch"], "nosuch"),
])
def test_user_mistakes_are_one_clear_line(trained, tmp_path, args, needle):
    empty = tmp_path / "empty"
    empty.mkdir()
    subst = {"RUN": tmp_path / "r", "EMPTY": empty, "RUNDIR": trained[1]}
    args = [str(subst.get(a, a)) for a in args]
    p = genforge(*args, env={"GENFORGE_MIRROR_MNIST": "http://127.0.0.1:9/"})
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert needle in p.stderr
    assert "Traceback" not in p.stderr + p.stdout


def test_presets_and_data_info():
    p = genforge("presets")
    assert p.returncode == 0
    for name in ["quickstart", "mnist-dcgan", "mnist-cgan", "cifar10-dcgan"]:
        assert name in p.stdout
    p = genforge("data", "info", "mnist-mini", "--json")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["splits"]["train"]["count"] == 10000
