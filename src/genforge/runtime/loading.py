"""Opening an export: a directory or a single .zip file, its export.json and graphs checked (SHA-256) before
onnxruntime parses a byte, then the image or text model it holds."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

from genforge.errors import UserError

EXPORT_FILE = "export.json"  # the same name genforge.export writes (not imported: that side needs torch)
FORMAT_VERSION = 1


def is_export(path: str | Path) -> bool:
    """An export directory, or an export written as one .zip file."""
    path = Path(path)
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return EXPORT_FILE in z.namelist()
    return (path / EXPORT_FILE).is_file()


def _reader(path: Path):
    """read(name) -> bytes or None, for an export directory or a single-file (.zip) export."""
    if path.is_file():
        try:
            z = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile) as e:
            raise UserError(f"{path} is not a genforge export ({e}). Make one with `genforge export RUN --out DIR`.") from None
        names = set(z.namelist())

        def read_zip(name):
            try:
                return z.read(name) if name in names else None
            except (OSError, zipfile.BadZipFile, ValueError) as e:  # a damaged member (CRC mismatch, truncation)
                raise UserError(f"{path} is damaged: {name} cannot be read ({e}). Fix: export the run again.") from None

        return read_zip
    return lambda name: (path / name).read_bytes() if (path / name).is_file() else None


def load(path: str | Path, threads: int | None = None):
    """Open an export directory: checks its config and each graph's SHA-256 before onnxruntime sees it."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("The runtime needs onnxruntime. Fix: pip install onnxruntime (or 'genforge[runtime]').") from None
    path = Path(path)
    read = _reader(path)
    raw = read(EXPORT_FILE)
    if raw is None:
        raise UserError(f"{path} is not a genforge export (no {EXPORT_FILE}). Make one with `genforge export RUN --out {path}`.")
    cfg_path = path / EXPORT_FILE
    try:
        config = json.loads(raw)
        version, family, graphs = config["format_version"], config["family"], config["graphs"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{cfg_path} is damaged ({type(e).__name__}: {e}). Fix: export the run again.") from None
    if version != FORMAT_VERSION:
        raise UserError(f"{path} is export format {version}; this genforge reads format {FORMAT_VERSION}. "
                        "Fix: export the run again with this version.")
    from genforge.runtime.families import FAMILIES

    modality = config.get("modality", "image")
    if modality in ("image", "audio", "video") and family not in FAMILIES:
        raise UserError(f"{path} holds a '{family}' model, which this runtime cannot run (it runs: {', '.join(FAMILIES)}, lm).")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: the RNN graph's declared output shapes draw harmless warnings
    if threads:
        opts.intra_op_num_threads = threads
    sessions = {}
    for name, g in graphs.items():
        file = path / g["file"]
        data = read(g["file"])
        if data is None:
            raise UserError(f"{path} is incomplete: {g['file']} is missing. Fix: export the run again.")
        if hashlib.sha256(data).hexdigest() != g["sha256"]:
            raise UserError(f"{file} is damaged: its SHA-256 differs from the one in {EXPORT_FILE}. Fix: export the run again.")
        so = opts
        if g.get("format") == "ort":
            so = _copy_options(opts)
            so.add_session_config_entry("session.load_model_format", "ORT")
        try:
            sessions[name] = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's own error types
            raise UserError(f"onnxruntime cannot load {file}: {str(e)[:300]}") from None
    if modality in ("text", "music"):
        from genforge.runtime.text import ExportedMusicModel, ExportedTextModel
        from genforge.tokenizers import tokenizer_from_json

        tok = config.get("tokenizer") or {}
        data = read(tok.get("file", "tokenizer.json"))
        if data is None:
            raise UserError(f"{path} is incomplete: its tokenizer file is missing. Fix: export the run again.")
        if hashlib.sha256(data).hexdigest() != tok.get("sha256"):
            raise UserError(f"{path}: the tokenizer file is damaged (its SHA-256 differs from {EXPORT_FILE}). "
                            "Fix: export the run again.")
        cls = ExportedMusicModel if modality == "music" else ExportedTextModel
        return cls(path, config, sessions, tokenizer_from_json(data.decode("utf-8")))
    if modality == "audio":
        from genforge.runtime.audio import ExportedAudioModel

        return ExportedAudioModel(path, config, sessions)
    if modality == "video":
        from genforge.runtime.video import ExportedVideoModel

        return ExportedVideoModel(path, config, sessions)
    from genforge.runtime.images import ExportedImageModel

    return ExportedImageModel(path, config, sessions)


def _copy_options(opts):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.log_severity_level = opts.intra_op_num_threads, opts.log_severity_level
    return so


