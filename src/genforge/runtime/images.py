"""An exported image model: `generate` as `genforge.load(run).generate`, on onnxruntime."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from genforge.errors import UserError
from genforge.labels import label_indices
from genforge.options import SampleOption
from genforge.runtime.families import FAMILIES

EXPORT_FILE = "export.json"  # the same name genforge.export writes (not imported: that side needs torch)
FORMAT_VERSION = 1


def is_export(path: str | Path) -> bool:
    return (Path(path) / EXPORT_FILE).is_file()


def load(path: str | Path, threads: int | None = None) -> "ExportedImageModel":
    """Open an export directory: checks its config and each graph's SHA-256 before onnxruntime sees it."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("The runtime needs onnxruntime. Fix: pip install onnxruntime (or 'genforge[runtime]').") from None
    path = Path(path)
    cfg_path = path / EXPORT_FILE
    if not cfg_path.is_file():
        raise UserError(f"{path} is not a genforge export (no {EXPORT_FILE}). Make one with `genforge export RUN --out {path}`.")
    try:
        config = json.loads(cfg_path.read_text())
        version, family, graphs = config["format_version"], config["family"], config["graphs"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{cfg_path} is damaged ({type(e).__name__}: {e}). Fix: export the run again.") from None
    if version != FORMAT_VERSION:
        raise UserError(f"{path} is export format {version}; this genforge reads format {FORMAT_VERSION}. "
                        "Fix: export the run again with this version.")
    if family not in FAMILIES:
        raise UserError(f"{path} holds a '{family}' model, which this runtime cannot run (it runs: {', '.join(FAMILIES)}).")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sessions = {}
    for name, g in graphs.items():
        file = path / g["file"]
        if not file.is_file():
            raise UserError(f"{path} is incomplete: {g['file']} is missing. Fix: export the run again.")
        data = file.read_bytes()
        if hashlib.sha256(data).hexdigest() != g["sha256"]:
            raise UserError(f"{file} is damaged: its SHA-256 differs from the one in {EXPORT_FILE}. Fix: export the run again.")
        try:
            sessions[name] = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's own error types
            raise UserError(f"onnxruntime cannot load {file}: {str(e)[:300]}") from None
    return ExportedImageModel(path, config, sessions)


class ExportedImageModel:
    modality = "image"

    def __init__(self, path: Path, config: dict, sessions: dict):
        self.path, self.config, self.meta = path, config, config
        self.classes: list[str] = list(config.get("classes") or [])
        self.conditional: bool = bool(config.get("conditional"))
        img = config["image"]
        self.image_shape = (img["height"], img["width"], img["channels"])
        self._known = {k: SampleOption.from_description(d) for k, d in config.get("options", {}).items()}
        family_config = {**config.get("family_config", {}), "shape": (img["channels"], img["height"], img["width"])}
        self.family = FAMILIES[config["family"]](family_config, {k: _runner(s) for k, s in sessions.items()})
        self.sessions = sessions

    def options(self) -> dict[str, dict]:
        """The family's generation options with the exported run's defaults (as `genforge.load(...).options()`)."""
        return {k: o.describe() for k, o in self._known.items()}

    def _options(self, options: dict) -> dict:
        unknown = [k for k in options if k not in self._known]
        if unknown:
            have = f"Its options: {', '.join(self._known)}." if self._known else "It takes no options beyond n, seed and labels."
            raise UserError(f"{', '.join(unknown)}: not an option of this {self.config['family']} model. {have}")
        given = {k: self._known[k].check(k, v) for k, v in options.items() if v is not None}
        return {k: given.get(k, o.default) for k, o in self._known.items()}

    def _labels(self, labels, n: int):
        idx = label_indices(self.classes, self.conditional, labels, n)
        return None if idx is None else np.asarray(idx, dtype=np.int64)

    def draw(self, n: int, seed: int | None = None, labels=None, **options) -> dict[str, np.ndarray]:
        """Every random input of n images (noise, labels, step seeds), from `seed`."""
        if n < 1:
            raise UserError(f"n must be at least 1, got {n}.")
        options = self._options(options)
        return self.family.draw(n, self._labels(labels, n), np.random.default_rng(seed), **options)

    def render(self, drawn: dict[str, np.ndarray], progress=None, **options) -> np.ndarray:
        """uint8 (N, H, W, C) images from drawn inputs (the parity tests pass the torch path's noise here)."""
        x = self.family.render(drawn, progress, **self._options(options))
        return _to_uint8(x)

    def network_calls(self, n: int, **options) -> int:
        return self.family.network_calls(n, **self._options(options))

    def generate(self, n: int, seed: int | None = None, labels=None, batch_size: int = 500, progress=None,
                 **options) -> np.ndarray:
        """n images as uint8 (N, H, W, C); `labels`: one label (int or class name) or one per image; `options`:
        the family's (`options()`); `progress(done, total)` after each network call of a multi-step sampler."""
        drawn = self.draw(n, seed, labels, **options)
        out = []
        for i in range(0, n, batch_size):
            part = {k: v[i:i + batch_size] for k, v in drawn.items()}
            out.append(self.render(part, progress, **options))
        return np.concatenate(out)


def _runner(session):
    names = [i.name for i in session.get_inputs()]

    def run(**inputs):
        return session.run(None, {k: np.ascontiguousarray(v) for k, v in inputs.items() if k in names})[0]

    return run


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """float (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C), rounded half to even as the torch path does."""
    x = np.nan_to_num(np.asarray(x, dtype=np.float32), nan=0.0)
    x = np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
