"""Tests for getting datasets into genforge.data: names and data dirs, missing data, downloads from mirrors
(checksums verified), CIFAR-10 archives extracted safely, and the real MNIST files and the embedded copy.

The tiny CIFAR-10 files come from test_data.py's writer; the real MNIST files come from shared/data beside the
checkout.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from genforge.data import KNOWN_DATASETS, dataset_info, download_dataset, load_image_dataset, resolve_data_dir
from genforge.data import registry
from genforge.data.download import extract_archive
from genforge.data.registry import FileSpec
from genforge.errors import UserError
from test_data import write_cifar

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    """No test may read the user's data dir or mirrors, or write to ~/.cache."""
    for var in ("GENFORGE_MIRROR_MNIST", "GENFORGE_MIRROR_FASHION_MNIST", "GENFORGE_MIRROR_CIFAR10"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GENFORGE_DATA", str(tmp_path / "default-data-dir"))


@pytest.fixture(scope="module")
def shared_data() -> Path:
    """The real MNIST files. CI always provides them, so their absence is a failure, not a skip."""
    mnist = SHARED_DATA / "mnist"
    assert mnist.is_dir(), (f"shared datasets not found: expected {mnist} (the shared/ folder beside the "
                            "repository checkout, with the MNIST *-ubyte.gz files)")
    return SHARED_DATA


# ---------------------------------------------------------------- CIFAR-10 archives and download

def _tar_bytes(members: dict[str, bytes], link: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo("cifar-10-batches-py/link")
            info.type, info.linkname = tarfile.SYMTYPE, link
            tar.addfile(info)
    return buffer.getvalue()


def test_cifar_archive_extracts_safely(tmp_path):
    source = tmp_path / "src"
    write_cifar(source)
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(_tar_bytes({f"cifar-10-batches-py/{p.name}": p.read_bytes() for p in source.iterdir()}))
    root = tmp_path / "data" / "cifar10"
    extract_archive(archive, root, "cifar-10-batches-py")
    assert len(load_image_dataset("cifar10", tmp_path / "data", split="test", download=False)) == 3
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # staging folder removed


@pytest.mark.parametrize("members, link", [
    ({"cifar-10-batches-py/../../escaped": b"x"}, None),
    ({"/tmp/absolute-escape": b"x"}, None),
    ({"elsewhere/data_batch_1": b"x"}, None),
    ({"cifar-10-batches-py/data_batch_1": b"x"}, "/etc/passwd"),
])
def test_cifar_archive_rejects_unsafe_members(tmp_path, members, link):
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(_tar_bytes(members, link))
    root = tmp_path / "data" / "cifar10"
    with pytest.raises(UserError, match="evil.tar.gz"):
        extract_archive(archive, root, "cifar-10-batches-py")
    assert not (tmp_path / "escaped").exists() and not (root / "cifar-10-batches-py").exists()


def test_cifar_download_verifies_extracts_and_drops_archive(tmp_path, monkeypatch):
    source = tmp_path / "src"
    write_cifar(source)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    tarball = _tar_bytes({f"cifar-10-batches-py/{p.name}": p.read_bytes() for p in source.iterdir()})
    (mirror / "cifar-10-python.tar.gz").write_bytes(tarball)
    spec = registry.STANDARD_DATASETS["cifar10"]
    # The tiny archive cannot match the real md5, so the test points the spec at its own md5.
    monkeypatch.setitem(registry.STANDARD_DATASETS, "cifar10", dataclasses.replace(
        spec, archive=FileSpec("cifar-10-python.tar.gz", md5=hashlib.md5(tarball).hexdigest())))
    monkeypatch.setenv("GENFORGE_MIRROR_CIFAR10", mirror.as_uri())
    data_dir = tmp_path / "data"
    folder = download_dataset("cifar10", data_dir)
    assert folder == data_dir / "cifar10" / "cifar-10-batches-py"
    assert sorted(p.name for p in (data_dir / "cifar10").iterdir()) == ["cifar-10-batches-py"]
    assert len(load_image_dataset("cifar10", data_dir, download=False)) == 10


def test_cifar_placed_archive_with_bad_checksum(tmp_path):
    root = tmp_path / "cifar10"
    root.mkdir()
    (root / "cifar-10-python.tar.gz").write_bytes(_tar_bytes({"cifar-10-batches-py/test_batch": b"x"}))
    with pytest.raises(UserError, match=r"cifar-10-python.tar.gz does not match .*delete it"):
        load_image_dataset("cifar10", tmp_path, split="test", download=False)


# ---------------------------------------------------------------- names, dirs, missing data

def test_unknown_name_lists_valid_names():
    with pytest.raises(UserError) as err:
        load_image_dataset("imagenet")
    assert all(name in str(err.value) for name in KNOWN_DATASETS) and "folder:PATH" in str(err.value)
    assert set(KNOWN_DATASETS) == {"mnist", "fashion-mnist", "cifar10", "cifar10-jpeg", "mnist-mini", "fsdd"}


def test_resolve_data_dir(monkeypatch, tmp_path):
    assert resolve_data_dir(tmp_path / "x") == (tmp_path / "x").resolve()
    monkeypatch.setenv("GENFORGE_DATA", str(tmp_path / "env"))
    assert resolve_data_dir() == (tmp_path / "env").resolve()
    monkeypatch.delenv("GENFORGE_DATA")
    assert resolve_data_dir() == (Path.home() / ".cache" / "genforge" / "data").resolve()


def test_missing_dataset_without_download(tmp_path):
    with pytest.raises(UserError) as err:
        load_image_dataset("fashion-mnist", tmp_path, split="test", download=False)
    message = str(err.value)
    assert str(tmp_path / "fashion-mnist") in message
    assert "t10k-images-idx3-ubyte.gz" in message and "t10k-labels-idx1-ubyte.gz" in message
    assert "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/t10k-images-idx3-ubyte.gz" in message
    with pytest.raises(UserError, match=r"cifar-10-python\.tar\.gz.*cifar10"):
        load_image_dataset("cifar10", tmp_path, download=False)


def test_unreachable_mirror_gives_by_hand_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("GENFORGE_MIRROR_MNIST", "http://127.0.0.1:9/")
    with pytest.raises(UserError) as err:
        load_image_dataset("mnist", tmp_path, split="test")
    message = str(err.value)
    assert str(tmp_path / "mnist") in message and "t10k-labels-idx1-ubyte.gz" in message
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-images-idx3-ubyte.gz" in message
    assert not (tmp_path / "mnist").exists()


# ---------------------------------------------------------------- real MNIST and the embedded copy

def test_real_mnist(shared_data):
    train = load_image_dataset("mnist", shared_data, download=False)
    assert train.images.shape == (60000, 28, 28, 1) and train.labels.shape == (60000,)
    assert int(train.labels.min()) == 0 and int(train.labels.max()) == 9
    test = load_image_dataset("mnist", shared_data, split="test", download=False)
    assert len(test) == 10000
    info = dataset_info("mnist", shared_data)
    assert [f["checksum"] for f in info["files"]] == ["ok"] * 4
    assert info["splits"]["test"] == {"count": 10000, "shape": [28, 28, 1]}
    assert Path(info["path"]).resolve() == (shared_data / "mnist").resolve()


def test_mnist_mini_needs_no_data_dir(tmp_path, shared_data):
    ds = load_image_dataset("mnist-mini")
    assert ds.images.shape == (10000, 28, 28, 1) and ds.classes == [str(d) for d in range(10)]
    assert not (tmp_path / "default-data-dir").exists()
    real = load_image_dataset("mnist", shared_data, split="test", download=False)
    assert torch.equal(ds.images, real.images) and torch.equal(ds.labels, real.labels)
    assert torch.equal(load_image_dataset("mnist-mini", split="test").labels, ds.labels)
    assert {f["checksum"] for f in dataset_info("mnist-mini")["files"]} == {"ok"}


def test_download_from_file_mirror_verifies(tmp_path, monkeypatch, shared_data):
    monkeypatch.setenv("GENFORGE_MIRROR_MNIST", (shared_data / "mnist").as_uri())
    data_dir = tmp_path / "data"
    ds = load_image_dataset("mnist", data_dir, split="test")
    assert len(ds) == 10000
    downloaded = sorted(p.name for p in (data_dir / "mnist").iterdir())
    assert downloaded == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    info = dataset_info("mnist", data_dir)
    assert {f["file"]: f["checksum"] for f in info["files"]}["t10k-images-idx3-ubyte.gz"] == "ok"


def test_corrupted_mirror_file_is_rejected(tmp_path, monkeypatch, shared_data):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copy(shared_data / "mnist" / "t10k-images-idx3-ubyte.gz", mirror)
    labels = bytearray((shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes())
    labels[100] ^= 0xFF
    (mirror / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(labels))
    monkeypatch.setenv("GENFORGE_MIRROR_MNIST", str(mirror))  # a plain folder works too
    data_dir = tmp_path / "data"
    with pytest.raises(UserError, match=r"did not match.*checksum") as err:
        load_image_dataset("mnist", data_dir, split="test")
    assert "t10k-labels-idx1-ubyte.gz" in str(err.value)
    left = sorted(p.name for p in (data_dir / "mnist").iterdir())
    assert left == ["t10k-images-idx3-ubyte.gz"]  # the verified file stays, no partial labels file
