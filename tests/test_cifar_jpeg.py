"""cifar10-jpeg: a third party's JPEG-75 copy of CIFAR-10 (not the canonical pixels), read from its tar.gz.

The format and its failure modes are exercised on small archives written here; the real archive in
shared/data is decoded once per run (~15 s) and checked for its counts. Its decoded copy (185 MB) goes
to a pytest tmp folder, which pytest prunes, not to the session cache folder conftest leaves behind. The evaluator recipe is only built and stepped once: its full training is a
benchmark, not a test.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from genforge.data import dataset_info, jpeg_archive, load_image_dataset, to_model_range
from genforge.data.registry import STANDARD_DATASETS, parse_name
from genforge.errors import UserError
from genforge.evaluation import RECIPES, evaluator_domain, train_evaluator
from genforge.evaluation.evaluator import Recipe, _build

SHARED_DATA = Path(os.environ.get("GENFORGE_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
ARCHIVE = "cifar10-jpeg75.tar.gz"
MIRROR_ENV = "GENFORGE_MIRROR_CIFAR10_JPEG"


@pytest.fixture(autouse=True, scope="module")
def module_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENFORGE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    """No test may read the user's data dir or mirror."""
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    monkeypatch.setenv("GENFORGE_DATA", str(tmp_path / "default-data-dir"))


def image_bytes(rng: np.random.Generator, size: tuple[int, int] = (32, 32), fmt: str = "JPEG") -> bytes:
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


def members(train: int = 2, test: int = 1, seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    return {f"{split}/{cls}/{i:04d}.jpg": image_bytes(rng)
            for split, n in (("train", train), ("test", test)) for cls in CLASSES for i in range(n)}


def write_archive(data_dir: Path, files: dict[str, bytes], gz: bool = True) -> Path:
    """A tar(.gz) laid out like the real one, with folder entries, members in reverse name order (the
    reader must sort them itself)."""
    path = data_dir / "cifar10-jpeg" / ARCHIVE
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        nested = [n for n in files if "/" in n]
        for folder in sorted({n.rsplit("/", 1)[0] for n in nested} | {n.split("/", 1)[0] for n in nested}):
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name in sorted(files, reverse=True):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            tar.addfile(info, io.BytesIO(files[name]))
    path.write_bytes(gzip.compress(buffer.getvalue()) if gz else buffer.getvalue())
    return path


def decoded(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


# ---------------------------------------------------------------- reading

def test_names_and_registry_entry():
    for name in ("cifar10-jpeg", "cifar10jpeg", "CIFAR10_JPEG", "cifar-10-jpeg"):
        assert parse_name(name) == ("standard", "cifar10-jpeg")
    spec = STANDARD_DATASETS["cifar10-jpeg"]
    assert list(spec.classes) == CLASSES and spec.mirrors == () and spec.mirror_env == MIRROR_ENV
    assert {f.name for f in spec.all_files()} == {ARCHIVE}
    assert spec.all_files()[0].sha256 == "d877bdec11f54282b92da36e9f045bd305d663b1223e3822baff39ca9ff6690a"
    assert "not the canonical" in spec.note
    assert STANDARD_DATASETS["cifar10"].kind == "cifar"  # the canonical reader is untouched


def test_synthetic_archive_round_trip(tmp_path):
    files = members(train=2, test=1)
    write_archive(tmp_path, files)
    train = load_image_dataset("cifar10-jpeg", tmp_path, split="train")
    assert train.name == "cifar10-jpeg" and train.classes == CLASSES
    assert train.images.dtype == torch.uint8 and train.images.shape == (20, 32, 32, 3)
    assert train.labels.dtype == torch.int64 and train.labels.tolist() == [c for c in range(10) for _ in range(2)]
    names = sorted(n for n in files if n.startswith("train/"))
    expected = np.stack([decoded(files[n]) for n in names])
    assert np.array_equal(train.images.numpy(), expected)  # sorted member order, Pillow's pixels

    test = load_image_dataset("cifar10jpeg", tmp_path, split="test", image_size=16, channels=1)
    assert test.images.shape == (10, 16, 16, 1) and test.labels.tolist() == list(range(10))

    info = dataset_info("cifar10-jpeg", tmp_path)
    assert info["splits"] == {"train": {"count": 20, "shape": [32, 32, 3]}, "test": {"count": 10, "shape": [32, 32, 3]}}
    assert info["classes"] == CLASSES and "not the canonical" in info["report"]["note"]
    assert info["files"] == [{"file": ARCHIVE, "present": True, "checksum": "mismatch"}]  # not the real file


def test_labels_follow_the_given_class_order_not_the_archive(tmp_path):
    rng = np.random.default_rng(1)
    files = {"train/zebra/a.png": image_bytes(rng, fmt="PNG"), "train/ant/b.png": image_bytes(rng, fmt="PNG"),
             "test/ant/c.png": image_bytes(rng, fmt="PNG"), "test/.DS_Store": b"junk", "train/ant/._b.png": b"junk"}
    path = write_archive(tmp_path, files, gz=False)  # a plain tar reads too
    images, labels = jpeg_archive.load_split(path, "train", ("zebra", "ant"), (32, 32, 3), "Fix: none.")
    assert labels.tolist() == [1, 0]  # train/ant/b.png sorts first; "ant" is class 1 here
    assert np.array_equal(images[0].numpy(), decoded(files["train/ant/b.png"]))  # PNG: exact pixels


def test_decoded_arrays_are_cached_outside_the_data_folder(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("GENFORGE_CACHE", str(cache))
    data = tmp_path / "data"
    write_archive(data, members(seed=0))
    first = load_image_dataset("cifar10-jpeg", data, split="test")
    [cached] = (cache / "decoded").iterdir()
    assert sorted(p.name for p in (data / "cifar10-jpeg").iterdir()) == [ARCHIVE]
    assert set(load_file(str(cached))) == {"train.images", "train.labels", "test.images", "test.labels"}

    read_members = jpeg_archive._members
    monkeypatch.setattr(jpeg_archive, "_members", lambda *a: pytest.fail("decoded again despite the cache"))
    again = load_image_dataset("cifar10-jpeg", data, split="test")
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    monkeypatch.setattr(jpeg_archive, "_members", read_members)

    write_archive(data, members(seed=1))  # replaced archive: new pixels, the stale copy is dropped
    replaced = load_image_dataset("cifar10-jpeg", data, split="test")
    assert not torch.equal(replaced.images, first.images)
    assert [p.name for p in (cache / "decoded").iterdir()] != [cached.name]
    assert len(list((cache / "decoded").iterdir())) == 1


def test_unwritable_cache_keeps_the_decode_in_memory(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("GENFORGE_CACHE", str(blocker / "cache"))
    monkeypatch.setattr(jpeg_archive, "_in_memory", {})
    write_archive(tmp_path, members())
    train = load_image_dataset("cifar10-jpeg", tmp_path, split="train")
    monkeypatch.setattr(jpeg_archive, "_members", lambda *a: pytest.fail("decoded the archive twice"))
    assert len(load_image_dataset("cifar10-jpeg", tmp_path, split="test")) == 10
    train.images.zero_()  # callers get copies: the kept arrays cannot be changed through them
    assert load_image_dataset("cifar10-jpeg", tmp_path, split="train").images.any()


# ---------------------------------------------------------------- damaged archives and members

@pytest.mark.parametrize("damage", [
    lambda raw: raw[:len(raw) // 2],
    lambda raw: raw[:-4],  # only the gzip trailer missing: still caught
    lambda raw: b"\x1f\x8b" + b"\x00garbage" * 10,
    lambda raw: b"not an archive at all" * 40,
], ids=["half", "trailer", "bad-gzip", "not-tar"])
def test_damaged_archive_names_the_file(tmp_path, damage):
    path = write_archive(tmp_path, members())
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(UserError) as err:
        load_image_dataset("cifar10-jpeg", tmp_path)
    message = str(err.value)
    assert str(path) in message and ("damaged" in message or "truncated" in message)
    assert "Fix: replace it with an intact copy of cifar10-jpeg75.tar.gz (sha256 d877bdec" in message


@pytest.mark.parametrize("member, data, needle", [
    ("train/cat/0001.jpg", b"this is not a JPEG", "not an image"),
    ("train/cat/0001.jpg", None, "not an image"),  # a JPEG cut in half
    ("test/dog/0000.jpg", "28x28", "is a 28x28 image, but every image of this dataset is 32x32"),
    ("train/unicorn/0000.jpg", b"", "unexpected member 'train/unicorn/0000.jpg'"),
    ("README.txt", b"hello", "unexpected member 'README.txt'"),
])
def test_bad_member_names_the_archive_and_member(tmp_path, member, data, needle):
    files = members()
    if data is None:
        data = files[member][:len(files[member]) // 2]
    elif data == "28x28":
        data = image_bytes(np.random.default_rng(2), size=(28, 28), fmt="PNG")
    files[member] = data
    path = write_archive(tmp_path, files)
    split = member.split("/")[0] if member.startswith(("train/", "test/")) else "train"
    with pytest.raises(UserError) as err:
        load_image_dataset("cifar10-jpeg", tmp_path, split=split)
    message = str(err.value)
    assert str(path) in message and needle in message and "Fix:" in message
    if member != "README.txt":
        assert member in message


def test_missing_archive_says_where_to_put_it(tmp_path):
    for download in (True, False):
        with pytest.raises(UserError) as err:
            load_image_dataset("cifar10-jpeg", tmp_path, split="test", download=download)
        message = str(err.value)
        assert f"copy these files into {tmp_path / 'cifar10-jpeg'}/" in message
        assert "no public download" in message and MIRROR_ENV in message
        assert "cifar10-jpeg75.tar.gz (sha256 d877bdec11f54282b92da36e9f045bd305d663b1223e3822baff39ca9ff6690a)" in message
        assert "download=True" not in message  # nothing to download from
    assert not (tmp_path / "cifar10-jpeg").exists()


# ---------------------------------------------------------------- the real archive

@pytest.fixture(scope="module")
def real() -> dict:
    """Both splits of the shared archive. CI always provides it, so its absence is a failure, not a skip."""
    path = SHARED_DATA / "cifar10-jpeg" / ARCHIVE
    assert path.is_file(), f"shared dataset not found: expected {path} (the shared/ folder beside the checkout)"
    return {split: load_image_dataset("cifar10-jpeg", SHARED_DATA, split=split) for split in ("train", "test")}


def test_real_archive_counts_and_classes(real):
    for split, total, per_class in (("train", 50_000, 5_000), ("test", 10_000, 1_000)):
        ds = real[split]
        assert ds.images.shape == (total, 32, 32, 3) and ds.images.dtype == torch.uint8
        assert torch.bincount(ds.labels, minlength=10).tolist() == [per_class] * 10
        assert ds.classes == CLASSES
    # sorted order: each class is one block, in the canonical order
    assert torch.equal(real["test"].labels, torch.arange(10).repeat_interleave(1000))
    # real photos (CIFAR-10's channel means are about 125, 123, 114), not noise or a blank decode
    means = real["train"].images[::50].float().mean(dim=(0, 1, 2))
    assert torch.allclose(means, torch.tensor([125.3, 123.0, 113.9]), atol=2.0), means


def test_real_archive_info(real):
    info = dataset_info("cifar10-jpeg", SHARED_DATA)
    assert info["files"] == [{"file": ARCHIVE, "present": True, "checksum": "ok"}]
    assert info["splits"] == {"train": {"count": 50000, "shape": [32, 32, 3]},
                              "test": {"count": 10000, "shape": [32, 32, 3]}}
    assert "third party" in info["report"]["note"]


def test_mirror_env_fetches_and_verifies(real, tmp_path, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, str(SHARED_DATA / "cifar10-jpeg"))  # a plain folder works as a mirror
    test = load_image_dataset("cifar10-jpeg", tmp_path, split="test")
    assert torch.equal(test.images, real["test"].images)  # same bytes, so the same cached pixels
    copied = tmp_path / "cifar10-jpeg" / ARCHIVE
    assert hashlib.sha256(copied.read_bytes()).hexdigest().startswith("d877bdec")

    wrong = tmp_path / "wrong-mirror"
    write_archive(wrong, members())
    monkeypatch.setenv(MIRROR_ENV, str(wrong / "cifar10-jpeg"))
    with pytest.raises(UserError, match=r"did not match.*checksum"):
        load_image_dataset("cifar10-jpeg", tmp_path / "other", split="test")


# ---------------------------------------------------------------- evaluator

@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_evaluator_recipe_builds_and_trains_a_step(tmp_path, one_thread):
    assert evaluator_domain("cifar10jpeg") == ("cifar10-jpeg", "train")
    assert evaluator_domain("cifar10") == ("cifar10", "train")  # its own domain: the pixels differ
    recipe = RECIPES["cifar10-jpeg"]
    assert recipe.residual and recipe.optimizer == "sgd" and recipe.label_smoothing > 0
    assert recipe.crop_padding == 4 and recipe.hflip
    data = tmp_path / "data"
    write_archive(data, members(train=-(-recipe.batch_size // 10), test=2))  # one batch of training images
    ev = train_evaluator("cifar10-jpeg", data, root=tmp_path / "evaluators", max_steps=1, device="cpu")
    assert ev.id.startswith("cifar10-jpeg-v1-") and ev.config["training"]["steps"] == 1
    assert ev.config["arch"]["residual"] == list(recipe.residual)
    assert ev.config["training"]["optimizer"] == "sgd" and ev.image_shape == (32, 32, 3)
    # the BatchNorm-folded inference copy (residual blocks included) computes what the trained net computes
    images = load_image_dataset("cifar10-jpeg", data, split="test").images
    net = _build(ev.config).eval()
    net.load_state_dict(load_file(str(ev.directory / "model.safetensors")))
    features, logits = ev.extract(images)
    assert features.shape == (20, recipe.feature_dim) and logits.shape == (20, 10)
    with torch.no_grad():
        torch.testing.assert_close(logits, net(to_model_range(images)), atol=1e-4, rtol=1e-4)


def test_recipe_rejects_unknown_settings():
    with pytest.raises(ValueError, match="optimizer"):
        Recipe(widths=(8,), convs_per_stage=1, feature_dim=8, epochs=1, batch_size=8, max_lr=0.1, optimizer="adam")
    with pytest.raises(ValueError, match="residual"):
        Recipe(widths=(8,), convs_per_stage=1, feature_dim=8, epochs=1, batch_size=8, max_lr=0.1, residual=(1,))
