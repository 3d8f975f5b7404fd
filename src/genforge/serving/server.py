"""Loading the served models and running uvicorn (one process, or W worker processes on one port)."""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict
from pathlib import Path

from genforge.errors import UserError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def parse_models(items: list[str]) -> dict[str, str]:
    """RUN_DIR or name=RUN_DIR -> {name: path}; the name defaults to the directory's name."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item.rstrip("/")).name, item
        if not NAME.match(name):
            raise UserError(f"Model name '{name}' is not allowed: use letters, digits, '.', '_' or '-' (at most 64). "
                            "Fix: pass name=RUN_DIR.")
        if name in out:
            raise UserError(f"Two models are named '{name}'. Fix: name them, e.g. a={out[name]} b={path}.")
        out[name] = path
    if not out:
        raise UserError("Give at least one run directory to serve.")
    return out


def torch_threads(threads: int = 0) -> int:
    """Intra-op threads for the models of a server: `threads`, else $OMP_NUM_THREADS, else one per core but one.
    The model runs on a thread of its own while the event loop, the encoding pool and the clients' connections need
    a core too; OpenMP's workers spin between the many small kernels of a decode step, so a model given every core
    starves the loop, and the two then slow each other several-fold (measured: benchmarks/RESULTS.md, issue 29)."""
    if threads > 0:
        return threads
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


def load_models(spec: dict[str, str], precision: str = "auto", threads: int = 0) -> dict:
    """{name: generator}; only genforge run directories (config.json + safetensors, never pickle) and
    `genforge export` directories (ONNX on onnxruntime) load. Exports alone need no torch."""
    from genforge.runtime import is_export, load as load_export

    def one(path: str):
        if is_export(path):
            return load_export(path)
        import torch

        from genforge.artifacts import load  # torch: only for run directories

        torch.set_num_threads(torch_threads(threads))  # before loading: `auto` precision is measured with them
        return load(path, precision=precision)

    return {name: one(path) for name, path in spec.items()}


def serve(models: dict[str, str], host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          precision: str = "auto", settings=None, api_key_file: str | None = None, log_level: str = "info",
          threads: int = 0) -> None:
    """Serve until SIGTERM/SIGINT, then drain: stop accepting, finish what is in flight, exit."""
    import uvicorn

    from genforge.serving.app import ServeSettings, create_app
    from genforge.serving.auth import load_keys

    settings = settings or ServeSettings()
    if workers > 1 and any(_is_video(path) for path in models.values()):
        raise UserError("Video jobs live in the process that took them, so a poll could reach another worker. "
                        "Fix: serve video models with --workers 1.")
    settings.api_keys = load_keys(api_key_file)
    common = dict(host=host, port=port, log_level=log_level, timeout_graceful_shutdown=int(settings.timeout_s) + 5,
                  access_log=True)
    if workers <= 1:
        app = create_app(load_models(models, precision, threads), settings)
        uvicorn.run(app, **common)
        return
    from genforge.runtime import is_export

    if threads <= 0:  # the cores but one, shared by the workers
        threads = max(1, torch_threads() // workers)
    for path in models.values():  # fail here, once, rather than in every worker
        if not is_export(path):
            from genforge.artifacts import read_config  # torch: only for run directories

            read_config(path)
    # the keys stay in their file (or GENFORGE_API_KEYS): each worker reads them itself
    os.environ["GENFORGE_SERVE"] = json.dumps({"models": models, "precision": precision, "api_key_file": api_key_file,
                                               "threads": threads,
                                               "settings": {**asdict(settings), "api_keys": []}})
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="genforge-metrics-")
    uvicorn.run("genforge.serving.server:app_from_env", factory=True, workers=workers, **common)


def app_from_env():
    """Factory for `uvicorn --factory` worker processes: the models and settings come from GENFORGE_SERVE."""
    from genforge.serving.app import ServeSettings, create_app

    from genforge.serving.auth import load_keys

    spec = json.loads(os.environ["GENFORGE_SERVE"])
    settings = ServeSettings(**{**spec["settings"], "api_keys": load_keys(spec.get("api_key_file"))})
    return create_app(load_models(spec["models"], spec.get("precision", "auto"), spec.get("threads", 0)), settings)


def _is_video(path: str) -> bool:
    """Whether a run or export directory holds a video model (read from its JSON alone, before loading)."""
    import json
    from pathlib import Path

    for name in ("config.json", "export.json"):
        try:
            meta = json.loads((Path(path) / name).read_text())
        except (OSError, ValueError):
            continue
        return bool((meta.get("data") or {}).get("frames")) or meta.get("modality") == "video"
    return False
