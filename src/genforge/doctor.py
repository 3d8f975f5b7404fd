"""`genforge info`: what this machine offers genforge, in one report to paste into a bug report.

CPU model and the flags that decide low-precision speed (or the GPU), torch and its threads, measured
fp32 / bf16 matrix-product rates, memory, the data and cache directories, which optional components are
installed, and the precision verdicts cached so far.
"""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata

import torch

import genforge.precision as prec

# distribution name -> what genforge uses it for
OPTIONAL = {
    "accelerate": "training loop",
    "tokenizers": "BPE tokenizer",
    "torchmetrics": "FID / KID / IS",
    "tensorboard": "training logs",
    "torch-fidelity": "Inception-v3 FID (extra: inception)",
    "torchvision": "Inception-v3 FID (extra: inception)",
    "onnx": "export",
    "onnxruntime": "torch-free runtime",
    "fastapi": "genforge serve",
    "uvicorn": "genforge serve",
    "prometheus-client": "server metrics",
    "optuna": "genforge tune",
    "c2pa-python": "provenance manifests",
}


def matmul_gflops(dtype: torch.dtype, budget_s: float = 0.4) -> float:
    """A square matrix product's rate: the largest of 2048/1024/512/256 whose one call fits in 0.1 s
    (bf16 without hardware support runs at well under 1 GFLOP/s: a 2048^3 call would take a minute)."""
    n = 256
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    a @ b
    per_call = max(time.perf_counter() - t, 1e-7)
    for size in (2048, 1024, 512):
        if per_call * (size / 256) ** 3 <= 0.1:
            n = size
            break
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    calls, t = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - t < budget_s:
        a @ b
        calls += 1
    return 2 * n**3 * calls / (time.perf_counter() - t) / 1e9


def _memory() -> dict:
    out = {}
    try:
        for line in open("/proc/meminfo"):
            key, value = line.split(":", 1)
            if key in ("MemTotal", "MemAvailable"):
                out[key] = f"{int(value.split()[0]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return out


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_report(measure: bool = True) -> dict:
    from genforge.data.registry import resolve_data_dir

    import genforge

    gpu = None
    if torch.cuda.is_available():
        gpu = {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
               "bf16": torch.cuda.is_bf16_supported(),
               "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)}
    report = {
        "genforge": genforge.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": {"model": prec.cpu_model(), "cores": os.cpu_count(), "flags": prec.cpu_flags(),
                "torch_capability": torch.backends.cpu.get_cpu_capability(),
                "onednn_bf16_kernels": prec.cpu_bf16_kernels()},
        "gpu": gpu,
        "torch": {"version": torch.__version__, "threads": torch.get_num_threads(),
                  "interop_threads": torch.get_num_interop_threads()},
        "memory": _memory(),
        "auto_precision_candidates": {"cpu": prec.candidates(torch.device("cpu")),
                                      **({"cuda": prec.candidates(torch.device("cuda"))} if gpu else {})},
        "directories": {"data": str(resolve_data_dir()), "cache": str(prec.cache_dir())},
        "components": {dist: {"version": _version(dist), "for": why} for dist, why in OPTIONAL.items()},
        "cached_precision_verdicts": {k: {"used": v.get("used"), "speed_vs_fp32": v.get("speed_vs_fp32"),
                                          "date": v.get("date")} for k, v in prec.cached_verdicts().items()},
    }
    if measure:
        report["matmul_gflops"] = {"fp32": round(matmul_gflops(torch.float32), 1),
                                   "bf16": round(matmul_gflops(torch.bfloat16), 1)}
    return report
