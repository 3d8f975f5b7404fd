"""Tests for genforge.data's readers and transforms: IDX, CIFAR-10 and image folders (cleaning), preprocessing,
augmentation and clustering.

Formats that are not available locally (Fashion-MNIST, CIFAR-10) are exercised on tiny files the
tests write in the real formats. Names, data dirs, downloads, archives and the real MNIST files are in
test_data_download.py.
"""

from __future__ import annotations

import gzip
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genforge.data import (Augment, ImageDataset, augment_batch, dataset_info, from_model_range, load_image_dataset,
                           preprocess, to_model_range)
from genforge.errors import UserError

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    """No test may read the user's data dir or mirrors, or write to ~/.cache."""
    for var in ("GENFORGE_MIRROR_MNIST", "GENFORGE_MIRROR_FASHION_MNIST", "GENFORGE_MIRROR_CIFAR10"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GENFORGE_DATA", str(tmp_path / "default-data-dir"))


# ---------------------------------------------------------------- helpers writing real formats

def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def write_idx_split(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool,
                    dotted: bool = False) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind, magic, arr in (("images-idx3", 0x803, images), ("labels-idx1", 0x801, labels)):
        name = f"{prefix}-{kind}-ubyte" if not dotted else f"{prefix}-{kind.replace('-idx', '.idx')}-ubyte"
        data = idx_bytes(arr, magic)
        path = folder / (name + ".gz" if gz else name)
        path.write_bytes(gzip.compress(data) if gz else data)
        paths.append(path)
    return paths[0], paths[1]


def tiny_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 5, 4), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def write_cifar(folder: Path, per_batch: int = 2, test: int = 3, names=None) -> dict:
    """Tiny CIFAR-10 python batches, pickled like the originals (protocol 2, numpy data)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    written = {}
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels,
                         "filenames": [f"img{i}.png" for i in range(n)]}, f, protocol=2)
        written[name] = (data, labels)
    names = names or ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}, f, protocol=2)
    return written


def save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


# ---------------------------------------------------------------- IDX

@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    images, labels = tiny_digits(7, seed=1)
    write_idx_split(tmp_path / "fashion-mnist", "train", images, labels, gz=gz)
    ds = load_image_dataset("fashion-mnist", tmp_path, split="train", download=False)
    assert isinstance(ds, ImageDataset) and ds.name == "fashion-mnist"
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (7, 5, 4, 1) and ds.images.is_contiguous()
    assert torch.equal(ds.images[..., 0], torch.from_numpy(images))
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == labels.tolist()
    assert ds.classes == FASHION and ds.report == {}


def test_idx_dotted_spelling_and_test_split(tmp_path):
    images, labels = tiny_digits(3, seed=2)
    write_idx_split(tmp_path / "mnist", "t10k", images, labels, gz=False, dotted=True)
    ds = load_image_dataset("mnist", tmp_path, split="test", download=False)
    assert torch.equal(ds.images[..., 0], torch.from_numpy(images))
    assert ds.classes == [str(d) for d in range(10)]


def _truncate_gz(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-12])


def _wrong_magic(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[3] = 0x01
    path.write_bytes(bytes(raw))


def _short_payload(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-3])


def _garbage_gzip(path: Path) -> None:
    path.write_bytes(b"\x1f\x8b" + b"\x00garbage" * 10)


@pytest.mark.parametrize("damage, gz, needle", [
    (_truncate_gz, True, "gzip"),
    (_garbage_gzip, True, "gzip"),
    (_wrong_magic, False, "magic"),
    (_short_payload, False, "truncated"),
])
def test_damaged_idx_names_the_file(tmp_path, damage, gz, needle):
    images, labels = tiny_digits(4, seed=3)
    image_path, _ = write_idx_split(tmp_path / "mnist", "train", images, labels, gz=gz)
    damage(image_path)
    with pytest.raises(UserError) as err:
        load_image_dataset("mnist", tmp_path, download=False)
    message = str(err.value)
    assert str(image_path) in message and needle in message and "download it again" in message


def test_idx_label_count_must_match(tmp_path):
    images, _ = tiny_digits(4, seed=4)
    write_idx_split(tmp_path / "mnist", "train", images, np.zeros(3, np.uint8), gz=True)
    with pytest.raises(UserError, match="4 images but .*3 labels"):
        load_image_dataset("mnist", tmp_path, download=False)


# ---------------------------------------------------------------- CIFAR-10

def test_cifar_round_trip(tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    written = write_cifar(folder, names=[f"class{i}" for i in range(10)])
    train = load_image_dataset("cifar10", tmp_path, split="train", download=False)
    assert train.images.shape == (10, 32, 32, 3) and train.images.is_contiguous()
    assert train.classes == [f"class{i}" for i in range(10)]
    row, label = written["data_batch_3"][0][1], written["data_batch_3"][1][1]
    image = train.images[5].numpy()  # batch 3, second image
    # rows are R, G, B planes of 32x32, row-major
    assert image[7, 11, 0] == row[7 * 32 + 11]
    assert image[7, 11, 1] == row[1024 + 7 * 32 + 11]
    assert image[31, 0, 2] == row[2048 + 31 * 32]
    assert train.labels[5].item() == label
    test = load_image_dataset("cifar10", tmp_path, split="test", download=False)
    assert len(test) == 3 and test.labels.tolist() == written["test_batch"][1]
    info = dataset_info("cifar10", tmp_path)
    assert info["splits"]["train"] == {"count": 10, "shape": [32, 32, 3]}
    # tiny test files cannot match the published md5s
    assert {f["checksum"] for f in info["files"]} == {"mismatch"}


def test_cifar_truncated_pickle_names_the_file(tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    write_cifar(folder)
    batch = folder / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(UserError) as err:
        load_image_dataset("cifar10", tmp_path, download=False)
    assert str(batch) in str(err.value) and "damaged" in str(err.value)


def test_cifar_pickle_cannot_run_code(tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    write_cifar(folder)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (folder / "test_batch").write_bytes(pickle.dumps({"data": Evil(), "labels": []}, protocol=2))
    with pytest.raises(UserError) as err:
        load_image_dataset("cifar10", tmp_path, split="test", download=False)
    assert "test_batch" in str(err.value) and not marker.exists()


def test_cifar_wrong_shape_is_rejected(tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    write_cifar(folder)
    (folder / "test_batch").write_bytes(pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}))
    with pytest.raises(UserError, match=r"test_batch.*\(n, 3072\)"):
        load_image_dataset("cifar10", tmp_path, split="test", download=False)


# ---------------------------------------------------------------- image folders

def test_folder_with_classes_skips_corrupt_and_duplicate(tmp_path):
    rng = np.random.default_rng(5)
    root = tmp_path / "pets"
    cats = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(2)]
    dogs = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(2)]
    save_png(root / "cat" / "a.png", cats[0])
    save_png(root / "cat" / "nested" / "b.PNG", cats[1])
    save_png(root / "dog" / "c.png", dogs[0])
    save_png(root / "dog" / "d.png", dogs[1])
    (root / "dog" / "broken.jpg").write_bytes(b"this is not a jpeg")
    shutil.copy(root / "cat" / "a.png", root / "dog" / "e_copy.png")
    (root / "dog" / "notes.txt").write_text("ignored")
    (root / ".hidden").mkdir()

    ds = load_image_dataset(f"folder:{root}")
    assert ds.classes == ["cat", "dog"]
    assert ds.report["files"] == 6 and ds.report["loaded"] == 4
    assert ds.report["unreadable"] == 1 and ds.report["duplicates"] == 1 and ds.report["other_files"] == 1
    assert any("broken.jpg" in s for s in ds.report["skipped_examples"])
    assert any("e_copy.png" in s and "duplicate" in s for s in ds.report["skipped_examples"])
    assert ds.labels.tolist() == [0, 0, 1, 1]
    assert ds.images.shape == (4, 8, 8, 3)
    assert torch.equal(ds.images[1], torch.from_numpy(cats[1]))  # nested file stays in its class
    assert torch.equal(ds.images[3], torch.from_numpy(dogs[1]))

    info = dataset_info(f"folder:{root}")
    assert info["splits"]["train"] == {"count": 4, "shape": [8, 8, 3]} and info["report"]["duplicates"] == 1

    with pytest.raises(UserError, match="no test split"):
        load_image_dataset(f"folder:{root}", split="test")


def test_unlabelled_grayscale_folder_mixed_sizes(tmp_path):
    root = tmp_path / "loose"
    save_png(root / "a.png", np.full((6, 6), 10, np.uint8))
    save_png(root / "b.png", np.full((6, 6), 20, np.uint8))
    save_png(root / "c.JPG", np.full((12, 9), 200, np.uint8))
    ds = load_image_dataset(f"folder:{root}")
    assert ds.labels is None and ds.classes == []
    assert ds.images.shape == (3, 6, 6, 1)  # most common size, all grayscale -> C=1
    assert ds.report["resized"] == 1
    assert ds.images[2].float().mean().item() == pytest.approx(200, abs=2)
    sized = load_image_dataset(f"folder:{root}", image_size=4, channels=3)
    assert sized.images.shape == (3, 4, 4, 3)


def test_folder_layout_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no images here")
    with pytest.raises(UserError, match=r"No PNG/JPEG/WebP images found.*sub-folders"):
        load_image_dataset(f"folder:{empty}")
    mixed = tmp_path / "mixed"
    save_png(mixed / "cls" / "a.png", np.zeros((4, 4), np.uint8))
    save_png(mixed / "stray.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(UserError, match="stray.png"):
        load_image_dataset(f"folder:{mixed}")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(UserError, match="could be read"):
        load_image_dataset(f"folder:{broken}")


def test_mixed_color_folder_becomes_rgb(tmp_path):
    root = tmp_path / "mix"
    save_png(root / "gray.png", np.full((5, 5), 100, np.uint8))
    rgba = np.zeros((5, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 255
    save_png(root / "red.png", rgba)
    save_png(root / "z.webp", np.full((5, 5, 3), 50, np.uint8))  # WebP is always colour
    ds = load_image_dataset(f"folder:{root}")
    assert ds.images.shape == (3, 5, 5, 3)
    assert ds.images[0].unique().tolist() == [100]
    assert ds.images[1, 0, 0].tolist() == [255, 0, 0]
    assert (ds.images[2].int() - 50).abs().max() <= 2


# ---------------------------------------------------------------- preprocessing

def test_preprocess_shapes_and_values():
    gray = torch.full((3, 28, 28, 1), 77, dtype=torch.uint8)
    out = preprocess(gray, 32, 3)
    assert out.shape == (3, 32, 32, 3) and out.dtype == torch.uint8
    assert out.unique().tolist() == [77]  # a flat image stays flat through resize and channel copy
    rgb = torch.zeros((2, 8, 8, 3), dtype=torch.uint8)
    rgb[..., 0] = 255
    assert preprocess(rgb, None, 1).unique().tolist() == [76]  # 0.299 * 255, Pillow's luma
    assert preprocess(gray, None, None) is gray and preprocess(gray, 28, 1) is gray
    with pytest.raises(UserError, match="channels"):
        preprocess(gray, None, 2)


def test_load_with_image_size_and_channels():
    ds = load_image_dataset("mnist-mini", image_size=32, channels=3)
    assert ds.images.shape == (10000, 32, 32, 3) and ds.images.dtype == torch.uint8


def test_model_range_round_trip_exact():
    values = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16, 1).repeat(2, 1, 1, 3)
    x = to_model_range(values)
    assert x.dtype == torch.float32 and x.shape == (2, 3, 16, 16) and x.is_contiguous()
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    assert torch.equal(from_model_range(x), values)
    clipped = from_model_range(torch.tensor([-3.0, 3.0, 0.0]).view(1, 1, 1, 3))
    assert clipped.flatten().tolist() == [0, 255, 128]


# ---------------------------------------------------------------- augmentation

def _batch(n: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand((n, 3, 12, 10), generator=g) * 2 - 1


def test_augment_is_reproducible_and_bounded():
    x = _batch()
    aug = Augment(crop_padding=2, rotation=15, scale=0.1, hflip=True)
    a = augment_batch(x, aug, torch.Generator().manual_seed(123))
    b = augment_batch(x, aug, torch.Generator().manual_seed(123))
    c = augment_batch(x, aug, torch.Generator().manual_seed(124))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= -1 and a.max() <= 1 and not torch.equal(a, x)


def test_augment_disabled_is_identity():
    x = _batch()
    assert not Augment().enabled()
    assert augment_batch(x, Augment(), torch.Generator().manual_seed(0)) is x


def test_hflip_only_mirrors_exactly():
    x = _batch(64)
    out = augment_batch(x, Augment(hflip=True), torch.Generator().manual_seed(7))
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x)]
    kept = [torch.equal(o, i) for o, i in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert any(flipped) and any(kept)  # P(all one way) = 2**-63


def test_crop_only_shifts_whole_pixels():
    x = _batch(8)
    out = augment_batch(x, Augment(crop_padding=3), torch.Generator().manual_seed(1))
    for o, i in zip(out, x):
        # every shifted image is the original moved by whole pixels, padded with black (-1)
        found = False
        for dy in range(-3, 4):
            for dx in range(-3, 4):
                padded = torch.nn.functional.pad(i + 1, (3, 3, 3, 3)) - 1
                window = padded[:, 3 + dy:3 + dy + 12, 3 + dx:3 + dx + 10]
                found |= torch.allclose(o, window, atol=1e-4)
        assert found


def test_augment_rejects_bad_settings():
    with pytest.raises(UserError, match="crop_padding"):
        Augment(crop_padding=-1)
    with pytest.raises(UserError, match="scale"):
        Augment(scale=1.5)


def test_kmeans_recovers_well_separated_groups_and_is_seeded():
    from genforge.data.clusters import kmeans

    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = torch.arange(300) % 3
    x = centres[truth] + 0.5 * torch.randn(300, 2, generator=g)
    assign, found = kmeans(x, 3, seed=1)
    # each found cluster is exactly one true group (up to renumbering)
    pairs = set(zip(assign.tolist(), truth.tolist()))
    assert len(pairs) == 3 and len({a for a, _ in pairs}) == 3
    assert torch.cdist(found, centres).min(1).values.max() < 0.3
    assert torch.equal(kmeans(x, 3, seed=1)[0], assign)
    with pytest.raises(ValueError, match="k-means"):
        kmeans(x[:2], 3)


def test_image_clusters_split_mnist_mini_mostly_by_digit():
    from genforge.data.clusters import image_clusters

    ds = load_image_dataset("mnist-mini")
    assign = image_clusters(ds.images, 30, seed=0)
    assert assign.shape == (10000,) and torch.bincount(assign, minlength=30).min() > 0
    # purity: the share of images whose cluster's most common digit is their own (chance: ~0.11)
    purity = sum(torch.bincount(ds.labels[assign == j], minlength=10).max().item() for j in range(30)) / 10000
    assert purity > 0.6, purity
