"""Which precision runs a workload fastest on this machine, decided by measuring it.

Whether bf16 beats fp32 depends on the processor (AMX, AVX512-BF16, neither), the torch build, the
model's shapes and the batch size: on one CPU bf16 training is 1.7x faster, on another 0.6x, and a
tiny decode step is slower in bf16 almost everywhere. A rule on CPU flags cannot know, so `auto`
times the real work in each candidate precision and keeps the faster; when the two are within
`MARGIN` of each other it keeps fp32 (exact, and no casts to go wrong). The verdict is cached per
(device, torch version, threads, workload) in `<cache dir>/precision.json`, so only the first run of
a given model shape on a given machine pays for the probe.

This module knows nothing about models: callers hand `decide` a function that builds one step per
candidate (training: `training/autoprecision.py`; generation: `artifacts.py`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from genforge.cache import cache_dir  # the one rule for genforge's cache folder
from genforge.errors import UserError

#: the settings a user may write; "no" is fp32
SETTINGS = ("auto", "no", "bf16", "fp16")
#: a lower precision must beat fp32 by more than this share to be chosen (noise on a quiet box is a few %)
MARGIN = 0.05
#: preference order when candidates are within MARGIN of the fastest
PREFERENCE = ("no", "bf16", "fp16")
CACHE_FILE = "precision.json"
CACHE_VERSION = 1

# Flags that decide how fast low-precision matrix work is on x86; shown by `genforge info` and kept with
# every verdict, so a cached figure says which kind of CPU it was measured on.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags() -> list[str]:
    words = set()
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            words = set(line.split(":", 1)[1].split())
            break
    return [f for f in CPU_FLAGS if f in words]


def device_name(device: torch.device) -> str:
    """What a verdict is measured on: the GPU's name, or the CPU model with its relevant flags."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    flags = cpu_flags()
    return f"{cpu_model()} [{' '.join(flags) or 'no avx2'}]"


def cpu_bf16_kernels() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (AVX512 or better). Without them torch still runs
    bf16, through reference loops hundreds of times slower than fp32 (0.3 against 75 GFLOP/s for a
    2048^3 product on an AVX2-only EPYC), so probing it would cost minutes to learn the obvious."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def candidates(device: torch.device) -> list[str]:
    """The precisions worth timing on `device`: fp32 always; bf16 where the hardware has kernels for it;
    fp16 on GPUs (on CPUs torch's fp16 paths are slower than bf16's where both exist)."""
    if device.type == "cuda":
        return ["no", *(["bf16"] if torch.cuda.is_bf16_supported() else []), "fp16"]
    return ["no", *(["bf16"] if cpu_bf16_kernels() else [])]


def autocast_dtype(precision: str) -> torch.dtype | None:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def autocast(device_type: str, dtype: torch.dtype | None):
    """Autocast to `dtype`, or nothing for fp32 (None)."""
    return torch.autocast(device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def signature(*parts) -> str:
    """A short stable hash of what decides the speed: parameter shapes, batch shapes, layout..."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Verdict:
    """The precision to use and why."""

    used: str  # "no", "bf16" or "fp16"
    setting: str  # what was asked: "auto" or an explicit precision
    source: str  # "explicit", "measured", "cache", "resumed", "only candidate"
    seconds_per_step: dict[str, float] = field(default_factory=dict)  # median per candidate, when measured
    speed_vs_fp32: dict[str, float] = field(default_factory=dict)  # fp32's time / each candidate's time
    probe_seconds: float | None = None  # wall time the probe took (warm-ups included)
    device: str = ""
    workload: str = ""
    notes: list[str] = field(default_factory=list)  # e.g. a candidate dropped because it failed

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, [], {}, "")}

    def describe(self) -> str:
        """One line for a log: the choice and the measured ratio."""
        if self.source == "explicit":
            return f"precision {self.used} (set explicitly)"
        text = f"mixed_precision auto -> {self.used}"
        times = self.seconds_per_step
        if len(times) > 1:
            parts = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in times.items())
            speeds = ", ".join(f"{k} at {v:.2f}x fp32's speed" for k, v in self.speed_vs_fp32.items() if k != "no")
            how = "cached" if self.source == "cache" else f"measured in {self.probe_seconds:.1f} s"
            text += f" ({parts} per step: {speeds}; {how})"
        elif self.source == "resumed":
            text += " (kept from the run being resumed)"
        elif self.source == "only candidate":
            text += " (the only precision this device runs fast)"
        for note in self.notes:
            text += f"; {note}"
        return text


def measure(steps: dict[str, Callable[[], object]], budget_s: float = 2.0, min_rounds: int = 2,
            max_rounds: int = 10, sync: Callable[[], None] | None = None) -> tuple[dict[str, float], list[str]]:
    """Median seconds of one call of each step, the candidates timed in alternation (so a slow minute of
    the machine hits all of them alike) after one untimed warm-up call each (kernel creation, caches).

    Rounds continue until `budget_s` of timed work is spent (at least `min_rounds`, at most
    `max_rounds`). A candidate whose warm-up raises is dropped, and so is one whose warm-up takes more
    than 20x the fastest one's (a path without hardware support); both are reported in the notes.
    """
    sync = sync or (lambda: None)
    warm: dict[str, float] = {}
    notes: list[str] = []
    for name, step in steps.items():
        t = time.perf_counter()
        try:
            step()
            sync()
        except Exception as e:  # noqa: BLE001 - an unsupported op in one precision must not end the run
            notes.append(f"{name} failed in the probe ({type(e).__name__}: {str(e)[:120]})")
            continue
        warm[name] = time.perf_counter() - t
    if not warm:
        raise RuntimeError("every precision failed in the probe: " + "; ".join(notes))
    fastest_warm = min(warm.values())
    alive = [n for n in warm if warm[n] <= 20 * fastest_warm or n == "no"]
    notes += [f"{n} dropped: its first step took {warm[n]:.2f} s" for n in warm if n not in alive]
    times: dict[str, list[float]] = {n: [] for n in alive}
    spent, rounds = 0.0, 0
    while rounds < max_rounds and (rounds < min_rounds or spent < budget_s):
        for name in alive:
            t = time.perf_counter()
            steps[name]()
            sync()
            dt = time.perf_counter() - t
            times[name].append(dt)
            spent += dt
        rounds += 1
    return {n: statistics.median(v) for n, v in times.items()}, notes


def pick(seconds: dict[str, float], margin: float = MARGIN) -> str:
    """The fastest candidate, unless a more preferred one (fp32 first) is within `margin` of it."""
    best = min(seconds.values())
    for name in PREFERENCE:
        if name in seconds and seconds[name] <= best * (1 + margin):
            return name
    return min(seconds, key=seconds.get)


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # missing or damaged: measure again (the file is a cache, never the only copy of anything)
    return data if isinstance(data, dict) and data.get("version") == CACHE_VERSION else {}


def _write_cache(path: Path, key: str, verdict: Verdict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache(path) or {"version": CACHE_VERSION, "verdicts": {}}
        data["verdicts"][key] = {**verdict.as_dict(), "date": time.strftime("%Y-%m-%d %H:%M")}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: the verdict still applies to this run


def cache_key(device: torch.device, workload: str, sig: str) -> str:
    return " | ".join([device_name(device), f"torch {torch.__version__}", f"{torch.get_num_threads()} threads",
                       workload, sig])


def cached_verdicts() -> dict[str, dict]:
    return _read_cache(cache_dir() / CACHE_FILE).get("verdicts", {})


def decide(setting: str, device: torch.device, workload: str, sig: str,
           make_steps: Callable[[list[str]], dict[str, Callable[[], object]]], budget_s: float = 2.0,
           use_cache: bool = True) -> Verdict:
    """Resolve `setting` for one workload ("train gan", "generate lm"...) whose shapes hash to `sig`.

    An explicit precision is returned as is, with no probe. For "auto": a cached verdict for the same
    key if there is one, else `make_steps(candidates)` -> {precision: one step} is timed by `measure`,
    and the verdict is cached.
    """
    if setting not in SETTINGS:
        raise UserError(f"Unknown precision '{setting}': use one of {', '.join(SETTINGS)}.")
    dev = device_name(device)
    if setting != "auto":
        return Verdict(setting, setting, "explicit", device=dev, workload=workload)
    names = candidates(device)
    if len(names) == 1:
        note = [] if device.type == "cuda" else ["bf16 not timed: oneDNN has no bf16 kernels for this CPU"]
        return Verdict(names[0], "auto", "only candidate", device=dev, workload=workload, notes=note)
    key = cache_key(device, workload, sig)
    path = cache_dir() / CACHE_FILE
    if use_cache:
        hit = _read_cache(path).get("verdicts", {}).get(key)
        if hit and hit.get("used") in names:
            return Verdict(hit["used"], "auto", "cache", hit.get("seconds_per_step", {}), hit.get("speed_vs_fp32", {}),
                           hit.get("probe_seconds"), dev, workload, hit.get("notes", []))
    t = time.perf_counter()
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    seconds, notes = measure(make_steps(names), budget_s=budget_s, sync=sync)
    used = pick(seconds)
    speeds = {k: round(seconds["no"] / v, 3) for k, v in seconds.items()} if "no" in seconds else {}
    verdict = Verdict(used, "auto", "measured", {k: round(v, 6) for k, v in seconds.items()}, speeds,
                      round(time.perf_counter() - t, 2), dev, workload, notes)
    if use_cache:
        _write_cache(path, key, verdict)
    return verdict
