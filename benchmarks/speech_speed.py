"""Speech speed (issue 24's aims): WaveNet fast generation (per-layer queues) against naive re-computation of the
receptive field for every sample, its samples per second for a batch of 10 clips against real time (8,000/s),
and `genforge speak` of a 10-digit number per family, in process (after loading) and as a whole command.

    python benchmarks/speech_speed.py --runs runs/fsdd-specgan runs/fsdd-diffusion runs/fsdd-wavenet

The WaveNet figures use the fsdd-wavenet preset's network (the trained run's weights when --runs names one;
speed does not depend on them). Run it on an idle box: two CPU jobs at once slow each other several-fold.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_kind  # noqa: E402

NUMBER = "415 555 0199"


def wavenet_net(runs: list[str]):
    import genforge
    from genforge.methods.wavenet import WaveNetMethod
    from genforge.training.config import read_raw, validate

    for run in runs:
        meta = json.loads((Path(run) / "config.json").read_text())
        if meta.get("family") == "wavenet":
            return genforge.load(run, precision="no").net, run
    cfg = validate(read_raw("fsdd-wavenet"))
    from genforge.methods.wavenet import WaveSpec

    spec = WaveSpec([str(d) for d in range(10)], ["a", "b", "c", "d", "e", "f"], 8000, 8192)
    return WaveNetMethod.build_exported(WaveNetMethod.Config.model_validate(cfg.model), spec).eval(), "fsdd-wavenet (random weights)"


def time_wavenet(net, threads: int, batch: int = 10, length: int = 8192, slow_steps: int = 64) -> dict:
    from genforge.models.wavenet import fast_generate, slow_generate

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    u = torch.rand(batch, length, generator=g)
    labels = torch.arange(batch) % 10
    speakers = torch.zeros(batch, dtype=torch.long)
    with torch.no_grad():
        fast_generate(net, u[:, :256], labels, speakers)  # warm-up
        t = time.perf_counter()
        fast_generate(net, u, labels, speakers)
        fast_s = time.perf_counter() - t
        slow_generate(net, u[:, :8], labels, speakers)  # warm-up
        t = time.perf_counter()
        slow_generate(net, u[:, :slow_steps], labels, speakers)
        slow_s = time.perf_counter() - t
    fast_ms, slow_ms = 1000 * fast_s / length, 1000 * slow_s / slow_steps
    return {"threads": threads, "batch": batch, "clip_samples": length, "fast_seconds": round(fast_s, 2),
            "fast_ms_per_step": round(fast_ms, 3), "slow_ms_per_step": round(slow_ms, 2),
            "speedup": round(slow_ms / fast_ms, 1), "samples_per_second": round(batch * length / fast_s),
            "real_time_factor": round(batch * length / fast_s / 8000, 2)}


def time_speak(run: str, threads: int) -> dict:
    import genforge

    torch.set_num_threads(threads)
    gen = genforge.load(run, precision="auto")
    gen.use_mark_key(False)
    gen.speak("12", seed=0)  # warm-up
    times = []
    for seed in range(3):
        t = time.perf_counter()
        clip = gen.speak(NUMBER, seed=seed)
        times.append(time.perf_counter() - t)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "genforge.cli", "speak", run, NUMBER, "--out", "/tmp/speech_speed.wav",
                        "--seed", "0", "--no-mark"], capture_output=True, text=True, env=env)
    command_s = time.perf_counter() - t
    if p.returncode:
        raise SystemExit(p.stderr)
    return {"run": run, "family": gen.meta["family"], "threads": threads, "precision": gen.precision.used,
            "speak_seconds_median": round(sorted(times)[1], 3), "speech_seconds": round(len(clip) / gen.sample_rate, 2),
            "command_seconds": round(command_s, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="*", default=[])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    net, source = wavenet_net(args.runs)
    result = {"machine": cpu_kind(), "torch": torch.__version__, "wavenet": source,
              "receptive_field": net.receptive_field, "generation": [], "speak": []}
    for threads in (1, 2):
        r = time_wavenet(net, threads)
        result["generation"].append(r)
        print(f"wavenet {threads} thread(s): fast {r['fast_ms_per_step']} ms/step, naive {r['slow_ms_per_step']} ms/step "
              f"({r['speedup']}x), {r['samples_per_second']:,} samples/s for {r['batch']} clips "
              f"({r['real_time_factor']}x real time)", flush=True)
    for run in args.runs:
        for threads in (1, 2):
            r = time_speak(run, threads)
            result["speak"].append(r)
            print(f"speak {r['family']} ({run}, {threads} thread(s), {r['precision']}): {r['speak_seconds_median']} s "
                  f"in process, {r['command_seconds']} s as a command, for {r['speech_seconds']} s of speech", flush=True)
    path = Path(args.json or Path(__file__).parent / f"speech_speed-{cpu_kind()}.json")
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
