"""The small evaluators ship inside the package: the first `genforge eval` copies one instead of training it."""

import json
import os
from pathlib import Path

import pytest

from genforge.evaluation import load_audio_evaluator, load_evaluator
from genforge.evaluation.stored import SHIPPED, install_shipped, shipped_evaluator
from genforge.evaluation.video_evaluator import load_video_evaluator
from genforge.errors import UserError
from genforge.files import sha256_file

SHARED_DATA = Path(os.environ.get("GENFORGE_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
NAMES = ("mnist-v1", "fsdd-v1", "moving-mnist-v1-32")


@pytest.mark.parametrize("name", NAMES)
def test_shipped_weights_match_their_record(name):
    folder = shipped_evaluator(name)
    assert folder is not None, f"{name} should ship in {SHIPPED}"
    config = json.loads((folder / "config.json").read_text())
    sha = sha256_file(folder / "model.safetensors")
    assert config["weights_sha256"] == sha and config["training"]["seed"] == 0
    assert sha in (SHIPPED / "README.md").read_text(), "shipped/README.md records each evaluator's sha256"
    accuracy = config.get("test_accuracy") or config["test"]["accuracy"]
    assert accuracy >= 0.97
    assert (folder / "model.safetensors").stat().st_size < 4_000_000


def test_first_use_copies_the_shipped_mnist_evaluator(tmp_path, capsys):
    ev = load_evaluator("mnist", SHARED_DATA, root=tmp_path, device="cpu", train_if_missing=False)
    assert "shipped with genforge" in capsys.readouterr().err
    assert ev.directory == tmp_path / "mnist-v1" and ev.id == f"mnist-v1-{ev.config['weights_sha256'][:8]}"
    shipped = json.loads((SHIPPED / "mnist-v1" / "config.json").read_text())
    assert ev.config["weights_sha256"] == shipped["weights_sha256"]
    again = load_evaluator("mnist", SHARED_DATA, root=tmp_path, device="cpu")  # now cached: no second notice
    assert again.id == ev.id and "shipped" not in capsys.readouterr().err
    # the shipped evaluator recognises real test digits (a failed copy or a wrong net would not)
    from genforge.data import load_image_dataset

    test = load_image_dataset("mnist", SHARED_DATA, "test")
    _, logits = ev.extract(test.images[:500])
    assert (logits.argmax(1) == test.labels[:500]).float().mean() > 0.97


def test_audio_and_video_evaluators_ship(tmp_path, capsys):
    audio = load_audio_evaluator("fsdd", SHARED_DATA, root=tmp_path, device="cpu", train_if_missing=False)
    video = load_video_evaluator({"size": 32, "digits": 1}, SHARED_DATA, root=tmp_path, device="cpu",
                                 train_if_missing=False)
    err = capsys.readouterr().err
    assert err.count("shipped with genforge") == 2
    assert audio.directory.name == "fsdd-v1" and video.directory.name == "moving-mnist-v1-32"


def test_unshipped_evaluators_still_say_how_to_get_them(tmp_path):
    assert install_shipped(tmp_path / "cifar10-jpeg-v1") is None
    with pytest.raises(UserError, match="genforge evaluator train moving-mnist --size 64"):
        load_video_evaluator({"size": 64, "digits": 1}, SHARED_DATA, root=tmp_path, train_if_missing=False)


def test_a_damaged_shipped_copy_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "shipped" / "mnist-v1"
    fake.mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        (fake / f).write_bytes((SHIPPED / "mnist-v1" / f).read_bytes())
    (fake / "model.safetensors").write_bytes(b"x" + (fake / "model.safetensors").read_bytes()[1:])
    monkeypatch.setattr("genforge.evaluation.stored.SHIPPED", tmp_path / "shipped")
    with pytest.raises(UserError, match="does not match its recorded hash"):
        install_shipped(tmp_path / "cache" / "mnist-v1")
    assert not (tmp_path / "cache" / "mnist-v1").exists()
