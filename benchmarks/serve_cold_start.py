"""Issue 29: what serving an export costs with PyTorch installed and without it, against the torch server.

The torch server is `genforge serve RUN` of the run the export came from (`--run`), in this interpreter's
environment (the project's .venv). `genforge serve EXPORT` is started in the same environment and with a torch-free one (numpy, Pillow, onnxruntime, tokenizers, typer, rich and the `serve` extra; built under
/tmp unless `--free-venv` names one). For each: seconds from process start until /readyz answers 200 (median of
`--repeats` fresh processes), then the server's resident memory (VmRSS from /proc) after one request (a
completion for a text export, an image for an image export), and whether libtorch is mapped into the process.

    python benchmarks/serve_cold_start.py --run RUN --export EXPORT [--repeats 5]
    python benchmarks/serve_cold_start.py --quick      # smoke test: a tiny char GPT trained, exported, served once

Prints one JSON object and writes it to benchmarks/serve_cold_start-<cpu kind>.json (or `--out FILE`).
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import venv
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_kind  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def torch_free_venv(path: Path) -> Path:
    """A venv with the runtime's and the server's packages and genforge without its dependencies (made once)."""
    if not (path / "bin" / "genforge").exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(path)
        serve = [r.split(";")[0].strip() for r in metadata.requires("genforge") if 'extra == "serve"' in r]
        pip = [str(path / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, "numpy", "pillow", "onnxruntime", "tokenizers", "typer", "rich", *serve], check=True)
        subprocess.run([*pip, "--no-deps", str(ROOT)], check=True)
    check = subprocess.run([str(path / "bin" / "python"), "-c", "import importlib.util as u; print(u.find_spec('torch'))"],
                           capture_output=True, text=True, check=True)
    if check.stdout.strip() != "None":
        sys.exit(f"{path} has torch installed: give a torch-free venv with --free-venv")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(base: str, modality: str) -> None:
    if modality in ("text", "music"):
        route, body = "/v1/completions", {"model": "m", "prompt": "ROMEO:", "max_tokens": 16, "seed": 0}
    else:
        route, body = "/v1/images/generations", {"model": "m", "n": 1, "seed": 0}
    req = urllib.request.Request(base + route, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        if r.status != 200:
            raise RuntimeError(f"{route} answered {r.status}")
        r.read()


def serve_once(genforge: Path, export: Path, modality: str) -> dict:
    """Start the server, time it to ready, make one request, read its memory, stop it."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    t = time.perf_counter()
    proc = subprocess.Popen([str(genforge), "serve", f"m={export}", "--port", str(port), "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited: {proc.communicate()[0][-2000:]}")
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.05)
        ready = time.perf_counter() - t
        request(base, modality)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        rss_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
        torch = "libtorch" in Path(f"/proc/{proc.pid}/maps").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    return {"ready_s": ready, "rss_mb": rss_kb / 1024, "torch_loaded": torch}


def measure(genforge: Path, export: Path, modality: str, repeats: int) -> dict:
    runs = [serve_once(genforge, export, modality) for _ in range(repeats)]
    return {"genforge": str(genforge), "ready_s": round(statistics.median(r["ready_s"] for r in runs), 3),
            "ready_s_all": [round(r["ready_s"], 3) for r in runs],
            "rss_mb_after_one_request": round(statistics.median(r["rss_mb"] for r in runs), 1),
            "torch_loaded": any(r["torch_loaded"] for r in runs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--export", type=Path, help="the export to serve (text or image)")
    ap.add_argument("--run", type=Path, help="the run the export came from, served on torch for comparison")
    ap.add_argument("--free-venv", type=Path, default=Path(tempfile.gettempdir()) / "genforge-torch-free-venv",
                    help="a torch-free venv with genforge and the serve extra (built here if it has no genforge)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="smoke test: a tiny char GPT export, one start each")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        export, run = a.export, a.run
        if a.quick:
            a.repeats = 1
        if export is None:
            if not a.quick:
                sys.exit("give --export EXPORT (or --quick for a tiny one)")
            from runtime_text_batch import make_run

            from genforge.export import export as do_export

            run = make_run(Path(tmp), 2, None, quick=True)
            export = do_export(run, Path(tmp) / "export")
        modality = json.loads((export / "export.json").read_text()).get("modality", "image")
        here = Path(sys.executable).parent / "genforge"
        result = {"machine": cpu_kind(), "export": str(export), "run": str(run), "modality": modality,
                  "repeats": a.repeats}
        if run is not None:  # the torch server: the run itself, on PyTorch
            result["torch_run"] = measure(here, Path(run), modality, a.repeats)
        result["with_torch"] = measure(here, export, modality, a.repeats)
        result["torch_free"] = measure(torch_free_venv(a.free_venv) / "bin" / "genforge", export, modality, a.repeats)
        if run is not None:
            free, base = result["torch_free"], result["torch_run"]
            result["ratios_vs_torch_run"] = {"ready": round(free["ready_s"] / base["ready_s"], 3),
                                             "rss": round(free["rss_mb_after_one_request"] /
                                                          base["rss_mb_after_one_request"], 3)}
    text = json.dumps(result, indent=2)
    print(text)
    if not a.quick or a.out:
        (a.out or HERE / f"serve_cold_start-{cpu_kind()}.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
