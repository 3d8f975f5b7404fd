"""`genforge serve` under load on loopback, beside in-process batched generation of the same models.

    python benchmarks/serve_load.py --data-dir ../shared/data --note "idle box"   # ~20 min with the 10-minute soak
    python benchmarks/serve_load.py --quick                                         # smoke run: 5 s phases, 30 s soak

Models: `mnist-dcgan` (self-conditioned on 100 k-means clusters; the clustering takes seconds) and
`shakespeare-char-gpt-small`, each trained `--train-steps` steps (fp32, no samples, checkpoints or
evaluations): real architectures, throwaway weights. `--image-run DIR` / `--text-run DIR` reuse run dirs.

1. In process (before any server runs): `genforge.load(run).generate` on one batch of `--clients`
   requests' worth (clients x images per request; clients prompts x `--max-tokens`), warmed up once, then
   repeated for `--baseline-seconds` -> images/s and tokens/s.
2. `genforge serve img=RUN txt=RUN` as a subprocess (`--max-batch`, `--max-wait-ms`, `--max-queue`):
   - batching: `--clients` requests at once vs the same requests one at a time (aim: >= 5x faster), and
     at once to a second server started with `--max-batch 1` (skip with `--skip-max-batch-1`);
   - load: `--clients` clients per model, each sending requests back to back for `--seconds` -> requests/s,
     p50/p99 latency, tokens/s or images/s (aim: >= 70% of in-process throughput);
   - overload: `--overload-factor` x the clients for `--seconds` (aims: some 429s, no 5xx, p99 of the admitted
     within 2x the load phase's p99). A rejected client waits the `Retry-After` seconds (at most 5) before its
     next request, as OpenAI clients do, unless `--no-backoff`;
   - soak: `--clients` clients alternating the two models for `--soak-minutes` while the server's RSS (its
     process and any children) is sampled each second; aim: last-minute mean within 10% of the first.
The clients share the box with the server (on a 2-core machine they take part of its CPU); say whether the
box was otherwise idle with `--note`. Progress is printed as JSON lines; the results go to
benchmarks/serve_load-<cpu kind>.json (or `--json FILE`), with each aim's figure, target and verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_kind  # noqa: E402

ENDPOINT = {"image": "/v1/images/generations", "text": "/v1/completions"}
NAME = {"image": "img", "text": "txt"}
UNIT = {"image": "images_per_s", "text": "tokens_per_s"}


def log(**row) -> None:
    print(json.dumps(row), flush=True)


def pct(xs: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    xs = sorted(xs)
    return xs[max(0, math.ceil(q / 100 * len(xs)) - 1)] if xs else None


def ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 1)


# -- set-up: runs and the in-process baseline -----------------------------------------------------------------
def prepare_run(kind: str, preset: str, given: str | None, args) -> dict:
    if given:
        return {"dir": given, "preset": None, "reused": True}
    from genforge.training import apply_overrides, read_raw, train, validate

    out = Path(args.out) / f"{kind}-run"
    shutil.rmtree(out, ignore_errors=True)
    overrides = [f"train.max_steps={args.train_steps}", "train.sample_every=100000", "train.checkpoint_every=100000",
                 "train.eval_every=null", "train.mixed_precision=no"]
    t = time.perf_counter()
    train(validate(apply_overrides(read_raw(preset), overrides, None)), out, data_dir=args.data_dir, progress=False)
    row = {"dir": str(out), "preset": preset, "reused": False, "train_seconds": round(time.perf_counter() - t, 1)}
    log(phase="train", kind=kind, **row)
    return row


def in_process(kind: str, run_dir: str, args) -> dict:
    import genforge

    m = genforge.load(run_dir)
    if kind == "image":
        batch = args.clients * args.images_per_request
        work = lambda: m.generate(n=batch, seed=0)  # noqa: E731
        amount = lambda out: len(out)  # noqa: E731
    else:
        batch = args.clients
        work = lambda: m.generate([args.prompt] * batch, max_new_tokens=args.max_tokens, temperature=0.8, seed=0)  # noqa: E731
        amount = lambda out: sum(len(m.tokenizer.encode(t)) for t in out)  # noqa: E731
    work()  # warm-up
    calls, total, t0 = [], 0, time.perf_counter()
    while len(calls) < 3 or time.perf_counter() - t0 < args.baseline_seconds:
        t = time.perf_counter()
        total += amount(work())
        calls.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - t0
    row = {"batch": batch, "calls": len(calls), "seconds_per_call": round(sum(calls) / len(calls), 4),
           UNIT[kind]: round(total / elapsed, 1), "precision": m.precision.used}
    del m, work, amount  # the closures hold the model too
    gc.collect()
    log(phase="in_process", kind=kind, **row)
    return row


# -- the server subprocess -------------------------------------------------------------------------------------
def rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS summed over the process and its descendants, VmHWM of the process itself), in kB."""
    def field(p: int, key: str) -> int:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        return 0

    def tree(p: int) -> list[int]:
        kids = []
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids += [int(c) for c in (task / "children").read_text().split()]
        return [p] + [d for k in kids for d in tree(k)]

    return sum(field(p, "VmRSS") for p in tree(pid)), field(pid, "VmHWM")


@contextlib.contextmanager
def serving(runs: dict, args, max_batch: int, max_queue: int, label: str):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "genforge.cli", "serve", f"img={runs['image']['dir']}", f"txt={runs['text']['dir']}",
           "--host", "127.0.0.1", "--port", str(port), "--max-batch", str(max_batch),
           "--max-wait-ms", f"{args.max_wait_ms:g}", "--max-queue", str(max_queue), *args.server_arg]
    log_path = Path(args.out) / f"server-{label}.log"
    info = {"cmd": cmd[2:], "log": str(log_path)}
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
        try:
            base, t0 = f"http://127.0.0.1:{port}", time.perf_counter()
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited with {proc.returncode} before ready; log: "
                                       f"{log_path.read_text()[-2000:]}")
                if time.perf_counter() - t0 > args.ready_timeout:
                    raise RuntimeError(f"server not ready after {args.ready_timeout} s; see {log_path}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                        break
                time.sleep(0.5)
            info["ready_seconds"] = round(time.perf_counter() - t0, 1)
            info["rss_mb_ready"] = round(rss_kb(proc.pid)[0] / 1024, 1)
            log(phase="server_ready", label=label, **info)
            yield base, proc, info
        finally:
            t = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                info["killed"] = True
            info.update(exit_code=proc.returncode, stop_seconds=round(time.perf_counter() - t, 1))


# -- clients ---------------------------------------------------------------------------------------------------
def body(kind: str, seed: int, args) -> dict:
    if kind == "text":
        return {"model": NAME[kind], "prompt": args.prompt, "max_tokens": args.max_tokens, "temperature": 0.8, "seed": seed}
    return {"model": NAME[kind], "n": args.images_per_request, "seed": seed, "response_format": "b64_json"}


async def request(client: httpx.AsyncClient, kind: str, seed: int, args) -> tuple:
    """(HTTP status or "error:..." for no usable answer, seconds, tokens or images, Retry-After seconds or None)."""
    t = time.perf_counter()
    try:
        r = await client.post(ENDPOINT[kind], json=body(kind, seed, args))
    except httpx.HTTPError as e:
        return f"error:{type(e).__name__}", time.perf_counter() - t, 0, None
    seconds = time.perf_counter() - t
    status, amount = r.status_code, 0
    if status == 200:
        try:
            data = r.json()
            amount = data["usage"]["completion_tokens"] if kind == "text" else len(data["data"])
        except (ValueError, KeyError, TypeError) as e:
            status = f"error:bad-body:{type(e).__name__}"
    retry = r.headers.get("retry-after")
    with contextlib.suppress(TypeError, ValueError):
        retry = float(retry)
    return status, seconds, amount, retry if isinstance(retry, float) else None


def client_for(base: str, n: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(600.0, connect=60.0),
                             limits=httpx.Limits(max_connections=n + 8, max_keepalive_connections=n + 8))


def summarise(kind: str, recs: list[tuple], elapsed: float, clients: int) -> dict:
    statuses: dict[str, int] = {}
    for status, *_ in recs:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    ok = [r for r in recs if r[0] == 200]
    lat = [r[1] for r in ok]
    return {"clients": clients, "seconds": round(elapsed, 2), "requests": len(recs), "statuses": statuses,
            "requests_per_s": round(len(ok) / elapsed, 2), "p50_ms": ms(pct(lat, 50)), "p99_ms": ms(pct(lat, 99)),
            "max_ms": ms(max(lat, default=None)), "p99_429_ms": ms(pct([r[1] for r in recs if r[0] == 429], 99)),
            UNIT[kind]: round(sum(r[2] for r in ok) / elapsed, 1),
            "server_errors_5xx": sum(1 for r in recs if isinstance(r[0], int) and r[0] >= 500),
            "other_errors": sum(1 for r in recs if isinstance(r[0], str))}


async def load(base: str, kinds: list[str], clients: int, seconds: float, args, backoff: bool = True) -> dict:
    """`clients` clients sending back to back for `seconds` (client i's n-th request is kinds[(i + n) % len])."""
    recs: dict[str, list] = {k: [] for k in kinds}
    async with client_for(base, clients) as client:
        t0 = time.perf_counter()
        deadline = t0 + seconds

        async def one_client(i: int) -> None:
            n = 0
            while time.perf_counter() < deadline:
                kind = kinds[(i + n) % len(kinds)]
                rec = await request(client, kind, i * 1_000_000 + n, args)
                recs[kind].append(rec)
                n += 1
                if rec[0] == 429 and backoff:  # wait as told, at most 5 s and not past the phase's end
                    wait = rec[3] if rec[3] is not None else 0.1
                    await asyncio.sleep(max(0.0, min(wait, 5.0, deadline - time.perf_counter())))

        await asyncio.gather(*(one_client(i) for i in range(clients)))
        elapsed = time.perf_counter() - t0
    return {k: summarise(k, recs[k], elapsed, clients) for k in kinds}


async def burst(base: str, kind: str, n: int, args, concurrent: bool) -> dict:
    """Wall time of n requests sent all at once, or one after another."""
    async with client_for(base, n) as client:
        t0 = time.perf_counter()
        if concurrent:
            recs = await asyncio.gather(*(request(client, kind, i, args) for i in range(n)))
        else:
            recs = [await request(client, kind, i, args) for i in range(n)]
        return {"seconds": round(time.perf_counter() - t0, 3), "ok": sum(1 for r in recs if r[0] == 200)}


async def soak(base: str, proc: subprocess.Popen, args) -> dict:
    samples: list[tuple[float, int]] = []
    t0 = time.perf_counter()

    async def sample() -> None:
        while True:
            samples.append((time.perf_counter() - t0, rss_kb(proc.pid)[0]))
            await asyncio.sleep(1.0)

    sampler = asyncio.create_task(sample())
    try:
        stats = await load(base, ["image", "text"], args.clients, args.soak_minutes * 60, args)
    finally:
        sampler.cancel()
    window = min(60.0, args.soak_minutes * 60 / 3)  # first / last minute; a third of a shorter soak
    end = samples[-1][0]
    first = [kb for t, kb in samples if t <= window]
    last = [kb for t, kb in samples if t >= end - window]
    mb = lambda kb: round(kb / 1024, 1)  # noqa: E731
    f, l_ = sum(first) / len(first), sum(last) / len(last)
    return {"minutes": args.soak_minutes, "window_s": window, "samples": len(samples),
            "rss_mb_first_window_mean": mb(f), "rss_mb_last_window_mean": mb(l_),
            "rss_mb_peak": mb(max(kb for _, kb in samples)), "vmhwm_mb": mb(rss_kb(proc.pid)[1]),
            "drift_pct": round(100 * (l_ - f) / f, 2) if f else None, "load": stats}


# -- the run ---------------------------------------------------------------------------------------------------
async def main_server(base: str, proc, args, out: dict) -> None:
    kinds = ["image", "text"]
    await load(base, kinds, args.clients, min(3.0, args.seconds), args)  # warm-up, not reported
    for kind in kinds:
        row = {"concurrent": await burst(base, kind, args.clients, args, True),
               "sequential": await burst(base, kind, args.clients, args, False)}
        row["speedup"] = round(row["sequential"]["seconds"] / row["concurrent"]["seconds"], 2)
        out["batching"][kind] = row
        log(phase="batching", kind=kind, **row)
    for kind in kinds:
        out["load"][kind] = (await load(base, [kind], args.clients, args.seconds, args))[kind]
        out["load"][kind]["rss_mb_after"] = round(rss_kb(proc.pid)[0] / 1024, 1)
        log(phase="load", kind=kind, **out["load"][kind])
    n = args.clients * args.overload_factor
    for kind in kinds:
        row = (await load(base, [kind], n, args.seconds, args, backoff=not args.no_backoff))[kind]
        base_p99 = out["load"][kind]["p99_ms"]
        row["p99_vs_load_p99"] = round(row["p99_ms"] / base_p99, 2) if row["p99_ms"] and base_p99 else None
        out["overload"][kind] = row
        log(phase="overload", kind=kind, **row)
    out["soak"] = await soak(base, proc, args)
    log(phase="soak", **{k: v for k, v in out["soak"].items() if k != "load"})


async def max_batch_1(base: str, args, out: dict) -> None:
    for kind in ("image", "text"):
        await burst(base, kind, 2, args, True)  # warm-up
        b = await burst(base, kind, args.clients, args, True)
        row = out["batching"][kind]
        row["concurrent_to_max_batch_1"] = b
        row["speedup_vs_max_batch_1"] = round(b["seconds"] / row["concurrent"]["seconds"], 2)
        log(phase="max_batch_1", kind=kind, **b)


def aims(out: dict, args) -> list[dict]:
    def aim(name, value, target, met):
        return {"aim": name, "value": value, "target": target, "met": None if value is None else bool(met)}

    rows = []
    for kind in ("image", "text"):
        u = UNIT[kind]
        share = out["load"].get(kind, {}).get(u), out["in_process"].get(kind, {}).get(u)
        v = round(share[0] / share[1], 3) if None not in share and share[1] else None
        rows.append(aim(f"{kind}: server {u} at {args.clients} clients / in-process batched", v, ">= 0.70",
                        v is not None and v >= 0.70))
    b = out["batching"].get("text", {})
    rows.append(aim(f"text: {args.clients} concurrent completions vs one at a time (speedup)", b.get("speedup"), ">= 5",
                    (b.get("speedup") or 0) >= 5))
    if "speedup_vs_max_batch_1" in b:
        v = b["speedup_vs_max_batch_1"]
        rows.append(aim(f"text: {args.clients} concurrent, --max-batch 1 server vs normal (speedup)", v, ">= 5", v >= 5))
    for kind, o in out["overload"].items():
        n429 = o["statuses"].get("429", 0)
        rows.append(aim(f"{kind}: 429s under {args.overload_factor}x overload", n429, "> 0", n429 > 0))
        rows.append(aim(f"{kind}: 5xx under overload", o["server_errors_5xx"], "== 0", o["server_errors_5xx"] == 0))
        v = o["p99_vs_load_p99"]
        rows.append(aim(f"{kind}: p99 of admitted under overload / p99 at {args.clients} clients", v, "<= 2",
                        v is not None and v <= 2))
    if "soak" in out:
        v = out["soak"]["drift_pct"]
        rows.append(aim(f"RSS drift over the {args.soak_minutes}-minute soak (last vs first window, %)", v,
                        "within +-10", v is not None and abs(v) <= 10))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--out", default="/tmp/serve-bench", help="run directories and server logs")
    p.add_argument("--image-run", default=None, help="reuse this image run directory instead of training one")
    p.add_argument("--text-run", default=None, help="reuse this text run directory instead of training one")
    p.add_argument("--image-preset", default="mnist-dcgan")
    p.add_argument("--text-preset", default="shakespeare-char-gpt-small")
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--overload-factor", type=int, default=4)
    p.add_argument("--seconds", type=float, default=30, help="length of each load and overload phase")
    p.add_argument("--soak-minutes", type=float, default=10)
    p.add_argument("--baseline-seconds", type=float, default=10, help="in-process timing per model")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--images-per-request", type=int, default=1)
    p.add_argument("--prompt", default="ROMEO:\n")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=10)
    p.add_argument("--max-queue", type=int, default=32, help="sized so that overload triggers 429s but the load does not")
    p.add_argument("--server-arg", action="append", default=[], help="extra argument for `genforge serve` (repeatable)")
    p.add_argument("--ready-timeout", type=float, default=300)
    p.add_argument("--no-backoff", action="store_true", help="rejected clients retry at once, ignoring Retry-After")
    p.add_argument("--skip-max-batch-1", action="store_true")
    p.add_argument("--quick", action="store_true", help="smoke run: 5 s phases, 3 s baselines, 0.5-minute soak")
    p.add_argument("--note", default="", help="for the reader, e.g. whether the box was otherwise idle")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.quick:
        args.seconds, args.soak_minutes, args.baseline_seconds = 5, 0.5, 3
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.json or Path(__file__).parent / f"serve_load-{cpu_kind()}.json")
    settings = {k: v for k, v in vars(args).items() if k not in ("note", "json", "out")}
    out = {"machine": cpu_kind(), "note": args.note, "settings": settings, "runs": {}, "in_process": {},
           "servers": {}, "batching": {}, "load": {}, "overload": {}}
    try:
        runs = out["runs"]
        runs["image"] = prepare_run("image", args.image_preset, args.image_run, args)
        runs["text"] = prepare_run("text", args.text_preset, args.text_run, args)
        for kind in ("image", "text"):
            out["in_process"][kind] = in_process(kind, runs[kind]["dir"], args)
        with serving(runs, args, args.max_batch, args.max_queue, "main") as (base, proc, info):
            out["servers"]["main"] = info
            asyncio.run(main_server(base, proc, args, out))
        if not args.skip_max_batch_1:
            with serving(runs, args, 1, max(args.max_queue, 2 * args.clients), "max-batch-1") as (base, _, info):
                out["servers"]["max_batch_1"] = info
                asyncio.run(max_batch_1(base, args, out))
    except BaseException as e:  # keep what was measured, beside the runs rather than over earlier results
        out["error"] = repr(e)
        path = Path(args.out) / "serve_load-partial.json"
        raise
    finally:
        out["aims"] = aims(out, args)
        path.write_text(json.dumps(out, indent=2) + "\n")
        log(phase="done", json=str(path), aims=out["aims"], **({"error": out["error"]} if "error" in out else {}))


if __name__ == "__main__":
    main()
