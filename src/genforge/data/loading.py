"""`load_image_dataset` and `dataset_info`: one entry point for every dataset name."""

from __future__ import annotations

from pathlib import Path

import torch

from genforge.errors import UserError

from . import cifar, idx, jpeg_archive
from .audio import audio_dataset_info, is_audio_dataset
from .dataset import ImageDataset
from .download import bytes_digest, checksum_status, ensure_split_files, expected_digest
from .folder import load_folder
from .registry import (AUDIO_KINDS, EMBEDDED_FILES, EMBEDDED_MNIST_MINI, SPLITS, STANDARD_DATASETS, DatasetSpec,
                       FileSpec, check_split, dataset_root, embedded_dir, parse_name, resolve_data_dir)
from .transforms import check_preprocess_options, preprocess

_EMBEDDED_FIX = "Fix: reinstall genforge (pip install --force-reinstall genforge); the packaged copy is damaged."
_FOLDER_NO_TEST = ("Folder datasets have no test split: every image in the folder is used for training. "
                   "Fix: use split 'train', or keep held-out images in a separate folder and load that "
                   "one as folder:OTHER_PATH.")


def _load_mnist_mini() -> tuple[torch.Tensor, torch.Tensor]:
    folder = embedded_dir()
    images_file, labels_file = (folder.joinpath(f.name) for f in EMBEDDED_FILES)
    try:
        image_bytes, label_bytes = images_file.read_bytes(), labels_file.read_bytes()
    except OSError as exc:
        raise UserError(f"The packaged mnist-mini files are missing from {folder} ({exc}). {_EMBEDDED_FIX}") from None
    return idx.images_and_labels(image_bytes, str(images_file), label_bytes, str(labels_file), 10, _EMBEDDED_FIX)


def _replace_fix(spec: DatasetSpec, file: FileSpec) -> str:
    algo, value = expected_digest(file)
    return (f"Fix: replace it with an intact copy of {file.name} ({algo} {value}; `genforge data info {spec.name}` "
            "says whether a file matches).")


def _read_standard(spec: DatasetSpec, files_dir: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    if spec.kind == "cifar":
        return cifar.load_split(files_dir, split)
    if spec.kind == "jpeg-tar":
        (file,) = spec.splits[split]
        images, labels = jpeg_archive.load_split(file.find(files_dir), split, spec.classes, spec.image_shape,
                                                 _replace_fix(spec, file))
        return images, labels, list(spec.classes)
    images_spec, labels_spec = spec.splits[split]
    images_path, labels_path = images_spec.find(files_dir), labels_spec.find(files_dir)
    try:
        image_bytes, label_bytes = images_path.read_bytes(), labels_path.read_bytes()
    except OSError as exc:
        raise UserError(f"Cannot read {exc.filename} ({exc.strerror}). Fix: check its permissions, or "
                        "delete it and download it again.") from None
    images, labels = idx.images_and_labels(image_bytes, str(images_path), label_bytes, str(labels_path),
                                           len(spec.classes))
    return images, labels, list(spec.classes)


def load_image_dataset(name: str, data_dir: str | Path | None = None, split: str = "train",
                       download: bool = True, image_size: int | None = None,
                       channels: int | None = None) -> ImageDataset:
    """Load a whole dataset split into memory as uint8 NHWC.

    name: "mnist", "fashion-mnist", "cifar10", "cifar10-jpeg", "mnist-mini" or "folder:PATH".
    Standard datasets live under resolve_data_dir(data_dir) and are downloaded (and verified) when
    missing, unless download is False. cifar10-jpeg (a third party's JPEG-75 copy of CIFAR-10, not its
    canonical pixels) has no public download: its one tar.gz is read in place and the decoded
    arrays are cached (see jpeg_archive). mnist-mini ships inside the package and never downloads;
    both of its splits are the same 10,000 MNIST test images (quick offline starts, not a held-out
    evaluation). Folder datasets have only a train split. image_size / channels resize and convert
    once here, so training never does.
    """
    check_split(split)
    check_preprocess_options(image_size, channels)
    kind, key = parse_name(name)
    if kind == "folder":
        if split != "train":
            raise UserError(_FOLDER_NO_TEST)
        images, labels, classes, report = load_folder(Path(key), image_size, channels)
        return ImageDataset(name.strip(), preprocess(images, image_size, channels), labels, classes, report)
    if kind == "embedded":
        images, labels = _load_mnist_mini()
        classes = [str(d) for d in range(10)]
    else:
        spec = STANDARD_DATASETS[key]
        if spec.kind in AUDIO_KINDS:
            raise UserError(f"'{key}' is an audio dataset, not images. Fix: load it with "
                            "genforge.data.load_audio_dataset (or train one of the speech presets).")
        files_dir = ensure_split_files(spec, resolve_data_dir(data_dir), split, download)
        images, labels, classes = _read_standard(spec, files_dir, split)
    return ImageDataset(key, preprocess(images, image_size, channels), labels, classes, {})


def _split_summary(load) -> dict:
    try:
        images = load()
    except UserError as exc:
        return {"count": None, "shape": None, "error": str(exc)}
    _, h, w, c = images.shape
    return {"count": int(images.shape[0]), "shape": [int(h), int(w), int(c)]}


def dataset_info(name: str, data_dir: str | Path | None = None) -> dict:
    """What is on disk for a dataset, for `genforge data info NAME`. Never downloads or extracts.

    Returns {"name", "path", "splits": {split: {"count", "shape": [H, W, C]}}, "classes",
    "files": [{"file", "present", "checksum"}], "report"}. A split whose files are missing has
    count/shape None and a "missing" list; a damaged one has an "error" message instead.
    checksum is "ok", "mismatch", "missing", or "unknown" (a file with no published checksum).
    """
    if is_audio_dataset(name):
        return audio_dataset_info(name, data_dir)
    from .video import is_video_dataset, video_dataset_info

    if is_video_dataset(name):
        return video_dataset_info(name, data_dir)
    from .music import MUSIC_DATASETS, music_dataset_info

    if name.strip() in MUSIC_DATASETS or name.strip().startswith("folk-abc:"):
        return music_dataset_info(name)
    kind, key = parse_name(name)
    if kind == "folder":
        try:
            images, _, classes, report = load_folder(Path(key))
            splits = {"train": {"count": int(images.shape[0]), "shape": list(images.shape[1:])}}
        except UserError as exc:
            classes, report = [], {}
            splits = {"train": {"count": None, "shape": None, "error": str(exc)}}
        return {"name": name.strip(), "path": key, "splits": splits, "classes": classes, "files": [],
                "report": report}

    if kind == "embedded":
        folder = embedded_dir()
        files = []
        for spec in EMBEDDED_FILES:
            entry = folder.joinpath(spec.name)
            present = entry.is_file()
            status = "missing"
            if present:
                algo, value = expected_digest(spec)
                status = "ok" if bytes_digest(entry.read_bytes(), algo) == value else "mismatch"
            files.append({"file": spec.name, "present": present, "checksum": status})
        summary = _split_summary(lambda: _load_mnist_mini()[0])
        return {"name": EMBEDDED_MNIST_MINI, "path": str(folder), "splits": {s: dict(summary) for s in SPLITS},
                "classes": [str(d) for d in range(10)], "files": files,
                "report": {"note": "train and test are the same 10,000 MNIST test images"}}

    spec = STANDARD_DATASETS[key]
    root = dataset_root(spec, resolve_data_dir(data_dir))
    files_dir = spec.files_dir(root)
    files = []
    for f in spec.all_files():
        path = f.find(files_dir) or files_dir / f.name  # report the file actually found, if any
        files.append({"file": path.relative_to(root).as_posix(), "present": path.is_file(),
                      "checksum": checksum_status(path if path.is_file() else None, f)})
    if spec.archive is not None and (root / spec.archive.name).is_file():
        archive = root / spec.archive.name
        files.append({"file": spec.archive.name, "present": True, "checksum": checksum_status(archive, spec.archive)})

    classes = list(spec.classes)
    if spec.kind == "cifar" and (files_dir / cifar.META).is_file():
        try:
            classes = cifar.read_meta(files_dir / cifar.META)
        except UserError:
            pass  # the split entries below carry the error

    splits = {}
    for split in SPLITS:
        missing = [f.name for f in spec.splits[split] if f.find(files_dir) is None]
        if missing:
            splits[split] = {"count": None, "shape": None, "missing": missing}
        else:
            splits[split] = _split_summary(lambda s=split: _read_standard(spec, files_dir, s)[0])
    return {"name": key, "path": str(files_dir), "splits": splits, "classes": classes, "files": files,
            "report": {"note": spec.note} if spec.note else {}}
