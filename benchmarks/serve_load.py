"""`genforge serve` under load, driven by wrk, beside in-process batched generation measured in the same run.

    python benchmarks/serve_load.py --note "idle box"        # ~6 min: trains the two models, 25-s phases
    python benchmarks/serve_load.py --quick --out /tmp/sl    # smoke run: 4-s phases

Needs Debian's `wrk` and `nginx` (apt-get install -y wrk nginx). Models: `mnist-dcgan` and
`shakespeare-char-gpt-small` trained `--train-steps` steps (real architectures, throwaway weights), or
`--image-run` / `--text-run`. Results: OUT/serve_load-<machine>.json and a table on stdout.

Load generator: wrk (Debian's wrk 4.1, C on epoll, LuaJIT scripts). Debian's hey (Go) and h2load (nghttp2)
send one fixed body (-D / -d FILE), so every request would carry the same seed, and neither can wait a 429's
Retry-After; vegeta and oha are not packaged for Debian 12. wrk's Lua script (serve_load_tools.WRK_LUA) gives each connection its
own thread, builds each body with a new seed, logs every request (status, latency from one monotonic clock,
tokens or images, Retry-After and retry-after-ms), and makes a rejected connection wait retry-after-ms (else
Retry-After) before its next request, as OpenAI's clients do. Its CPU (its rusage) is reported per phase
beside the server's, nginx's, this process's and the box's (`other`: whatever else ran; utime+stime from
/proc/PID/stat of each process tree, in CPU-seconds per second).

Phases (`--seconds` each, after a warm-up per kind):
0. In process, before any server starts, in a subprocess (`genforge.load(run).generate`): text
   `generate([prompt] * max_batch, max_new_tokens, temperature=0.8)` -> tokens/s; images
   `generate(n=max_batch, seed)` -> images/s. These are the ceilings the server is compared to.
a. text: `--clients` connections of `--max-tokens`-token completions (temperature 0.8, a new seed each)
   -> requests/s, tokens/s, p50/p95/p99, statuses, CPU; aim >= 70% of in-process tokens/s.
b./c. images, 4 and 1 per request, `--clients` connections -> images/s; aims 70% and 40% of in process.
d. overload, text and images (1 per request): p99 at `--unloaded-clients` (unloaded), then
   `--overload-factor` x `--clients` connections honouring Retry-After: 5xx (aim 0), 429s, p99 of the
   admitted (200) against the unloaded p99 (aim <= 2x), what became of the retries sent after waiting as told,
   and the server's `genforge_estimated_wait_seconds` / `genforge_queue_work` gauges (sampled every 0.5 s;
   null where the server lacks them).
   Retry-After honesty (`--probe-rounds` per kind, httpx): a burst of overload-many requests at once on the
   idle server; the rejected ones carry an estimate R (retry-after-ms, else Retry-After x 1000) of when the
   server will admit again. The burst's clients do not retry; once the first 429 is back, one probe (the
   same request) is sent every R/10 (10 to 100 ms) until one is admitted (probing stops at a 200, or when
   three probes are unanswered after 0.2 s: a 429 takes milliseconds). The wait actually seen by each
   rejected request is W = (send time of the first admitted probe) - (time its 429 arrived), known to one
   probe interval; reported: median R, median W, and the median of |R - W| / W (aim <= 0.5), over the
   burst's and the probes' 429s. A burst with no 429 compares nothing.
e. Two replicas: a second `genforge serve` and nginx running deploy/nginx/genforge.conf (the file the docs
   show and the test runs), 2 x `--clients` text connections through nginx against phase a's one replica
   (direct; so the nginx hop counts against the two); then `--clients` connections through nginx while the
   second replica gets SIGTERM half-way: failed requests (5xx, socket errors; aim 0) and 429s.
f. Cold start and memory of the torch and torch-free servers: benchmarks/serve_cold_start.py.
g. With `--text-export`, `--image-export` and `--free-python` (a torch-free venv's interpreter): the torch-free
   server of the two exports under phase a's and c's load, against the torch server's phases a and c.
The number of cores is reported: on 2 cores two replicas share the cores one replica already uses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import serve_load_tools as T  # noqa: E402
from serve_load_report import aims, ratio, table  # noqa: E402
from machine import cpu_kind  # noqa: E402

PATH = {"text": "/v1/completions", "image": "/v1/images/generations"}
MODEL = {"text": "txt", "image": "img"}
GAUGES = ("genforge_estimated_wait_seconds", "genforge_queue_work")


def log(**row) -> None:
    print(json.dumps(row), flush=True)


def ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 1)


# -- runs and the in-process ceiling -----------------------------------------------------------------------------
def prepare_run(kind: str, preset: str, given: str | None, args) -> dict:
    if given:
        return {"dir": given, "preset": None, "reused": True}
    from genforge.training import apply_overrides, read_raw, train, validate

    out = Path(args.work) / f"{kind}-run"
    shutil.rmtree(out, ignore_errors=True)
    overrides = [f"train.max_steps={args.train_steps}", "train.sample_every=100000", "train.checkpoint_every=100000",
                 "train.eval_every=null", "train.mixed_precision=no"]
    t = time.perf_counter()
    train(validate(apply_overrides(read_raw(preset), overrides, None)), out, data_dir=args.data_dir, progress=False)
    row = {"dir": str(out), "preset": preset, "reused": False, "train_seconds": round(time.perf_counter() - t, 1)}
    log(phase="train", kind=kind, **row)
    return row


def baseline_here(kind: str, run_dir: str, args) -> dict:
    """Run in a subprocess (--baseline-of): the benchmark process keeps no model, torch threads or memory."""
    import torch

    import genforge

    m = genforge.load(run_dir)
    if kind == "image":
        work = lambda i: m.generate(n=args.max_batch, seed=i)  # noqa: E731
        amount = len
    else:
        work = lambda i: m.generate([args.prompt] * args.max_batch, max_new_tokens=args.max_tokens,  # noqa: E731
                                    temperature=0.8, seed=i)
        amount = lambda out: sum(len(m.tokenizer.encode(t)) for t in out)  # noqa: E731
    work(0)  # warm-up
    calls, total, t0 = 0, 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - t0 < args.baseline_seconds:
        total += amount(work(calls + 1))
        calls += 1
    elapsed = time.perf_counter() - t0
    unit = "tokens_per_s" if kind == "text" else "images_per_s"
    return {"batch": args.max_batch, "calls": calls, "seconds_per_call": round(elapsed / calls, 4),
            unit: round(total / elapsed, 1), "precision": m.precision.used, "torch_threads": torch.get_num_threads()}


def in_process(kind: str, run_dir: str, args) -> dict:
    cmd = [sys.executable, __file__, "--baseline-of", kind, run_dir, "--max-batch", str(args.max_batch),
           "--max-tokens", str(args.max_tokens), "--prompt", args.prompt, "--baseline-seconds", str(args.baseline_seconds)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"in-process baseline failed: {done.stderr[-2000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    log(phase="in_process", kind=kind, **row)
    return row


# -- load phases -------------------------------------------------------------------------------------------------
def body(kind: str, args, n: int = 1) -> dict:
    if kind == "text":
        return {"model": MODEL[kind], "prompt": args.prompt, "max_tokens": args.max_tokens, "temperature": 0.8}
    return {"model": MODEL[kind], "n": n, "response_format": "b64_json"}


def summarise(kind: str, res: dict, seconds: float) -> dict:
    recs = res["records"]
    statuses: dict[str, int] = {}
    for r in recs:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    ok = [r for r in recs if r["status"] == 200]
    lat = [r["latency"] for r in ok]
    unit = "tokens_per_s" if kind == "text" else "images_per_s"
    errors = sum(res["socket_errors"].values())
    row = {"requests": len(recs), "statuses": statuses, "socket_errors": res["socket_errors"],
           "requests_per_s": round(len(ok) / seconds, 2), unit: round(sum(r["amount"] for r in ok) / seconds, 1),
           "p50_ms": ms(T.pct(lat, 50)), "p95_ms": ms(T.pct(lat, 95)), "p99_ms": ms(T.pct(lat, 99)),
           "failed": errors + sum(1 for r in recs if r["status"] >= 500 or (r["status"] >= 300 and r["status"] != 429))}
    rejected = [r for r in recs if r["status"] == 429]
    if rejected:
        est = [r["retry_after_ms"] for r in rejected if r["retry_after_ms"] is not None]
        retries = [r for r in recs if r["retry"]]
        row["rejected"] = {
            "retry_after_ms_header": "present" if est else "missing",
            "retry_after_ms_median": statistics.median(est) if est else None,
            "retry_after_s_median": statistics.median([r["retry_after"] for r in rejected if r["retry_after"] is not None] or [0]),
            "retries_after_waiting": len(retries),
            "retries_admitted": sum(1 for r in retries if r["status"] == 200),
            "retries_rejected_again": sum(1 for r in retries if r["status"] == 429)}
    return row


def measure(url: str, kind: str, clients: int, args, label: str, roots: dict, n: int = 1, seconds=None,
            gauges_from: str | None = None, during=None) -> dict:
    """One wrk phase, with the CPU of every process tree in `roots`; `during()` runs beside it (failover)."""
    seconds = max(1, round(seconds or args.seconds))
    scraper = T.Scraper(gauges_from, GAUGES, MODEL[kind]) if gauges_from else None
    if scraper:
        scraper.start()
    meter = T.CpuMeter(roots).start()
    box = {}
    side = threading.Thread(target=lambda: box.update(during() or {})) if during else None
    if side:
        side.start()
    res = T.run_wrk(url, PATH[kind], kind, body(kind, args, n), clients, seconds, Path(args.work), label)
    if side:
        side.join()
    t_stop = box.pop("_t_stop", None)
    row = {"clients": clients, "seconds": seconds, **({"images_per_request": n} if kind == "image" else {}),
           **summarise(kind, res, seconds), "cpu_s_per_s": meter.stop(res["wrk_cpu_s"]), **box}
    if scraper:
        row["gauges"] = scraper.summary()
    if t_stop is not None:  # the requests sent after the SIGTERM
        late = summarise(kind, {"records": [r for r in res["records"] if r["start"] >= t_stop], "socket_errors": {}}, 1)
        row["sent_after_stop"] = {k: late[k] for k in ("requests", "statuses", "failed")}
    log(phase=label, kind=kind, **row)
    return row


def measure_get(url: str, clients: int, args, label: str, roots: dict) -> dict:
    """The HTTP ceiling: wrk's plain GET /healthz (no body, no model, no Lua) at the same concurrency, i.e. the most
    requests per second this server stack answers on this box, whatever a route does."""
    seconds = max(1, round(args.seconds / 2))
    meter = T.CpuMeter(roots).start()
    t = time.monotonic()
    r = subprocess.run([T.wrk_binary(), "-t", str(min(clients, 2)), "-c", str(clients), "-d", f"{seconds}s",
                        f"{url}/healthz"], capture_output=True, text=True, check=True)
    rate = float(next(line.split()[1] for line in r.stdout.splitlines() if line.startswith("Requests/sec")))
    row = {"clients": clients, "seconds": round(time.monotonic() - t, 1), "requests_per_s": rate,
           "cpu_s_per_s": meter.stop(0.0)}
    log(phase=label, **row)
    return row


async def probe_round(url: str, kind: str, burst: int, args) -> dict:
    """One burst on the idle server, then probes until one is admitted (see the docstring)."""
    b = body(kind, args)
    async with httpx.AsyncClient(base_url=url, timeout=600,
                                 limits=httpx.Limits(max_connections=burst + 64, max_keepalive_connections=0)) as c:
        async def one(seed: int) -> dict:
            sent = time.monotonic()
            try:
                r = await c.post(PATH[kind], json={**b, "seed": seed})
            except httpx.HTTPError as e:
                return {"sent": sent, "got": time.monotonic(), "status": type(e).__name__, "R": None}
            h = r.headers
            est = float(h["retry-after-ms"]) / 1000 if "retry-after-ms" in h else (
                float(h["retry-after"]) if "retry-after" in h else None)
            return {"sent": sent, "got": time.monotonic(), "status": r.status_code, "R": est,
                    "ms_header": "retry-after-ms" in h}

        tasks = [asyncio.create_task(one(i)) for i in range(burst)]
        deadline = time.monotonic() + 120
        while not any(t.done() and t.result()["status"] == 429 for t in tasks):  # probe once the burst is in
            if time.monotonic() > deadline or all(t.done() for t in tasks):
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        est = [t.result()["R"] for t in tasks if t.done() and t.result()["R"] is not None]
        every = min(0.1, max(0.01, statistics.median(est) / 10)) if est else 0.1  # finer for short waits
        probes: list[tuple[float, asyncio.Task]] = []
        while time.monotonic() < deadline:
            probes.append((time.monotonic(), asyncio.create_task(one(10_000_000 + len(probes)))))
            await asyncio.sleep(every)
            late = [s for s, t in probes if not t.done() and time.monotonic() - s > 0.2]  # a 429 takes ms
            if any(t.done() and t.result()["status"] == 200 for _, t in probes) or len(late) >= 3:
                break
        burst_res = await asyncio.gather(*tasks)
        probe_res = [await t for _, t in probes]
    admitted = [p["sent"] for p in probe_res if p["status"] == 200]
    if not admitted:
        return {"burst_429": sum(1 for r in burst_res if r["status"] == 429), "admitted_probe": None}
    t_adm = min(admitted)
    pairs = [(r["R"], t_adm - r["got"]) for r in burst_res + probe_res
             if r["status"] == 429 and r["R"] is not None and r["got"] < t_adm]
    return {"burst": burst, "burst_statuses": {str(s): sum(1 for r in burst_res if r["status"] == s)
                                               for s in {r["status"] for r in burst_res}},
            "probes": len(probe_res), "probe_every_s": round(every, 3),
            "admitted_after_s": round(t_adm - min(r["sent"] for r in burst_res), 3),
            "retry_after_ms_header": any(r.get("ms_header") for r in burst_res + probe_res),
            "pairs": [(round(e, 3), round(w, 3)) for e, w in pairs]}


def retry_after_honesty(url: str, kind: str, args) -> dict:
    rounds = []
    for _ in range(args.probe_rounds):
        rounds.append(asyncio.run(probe_round(url, kind, args.clients * args.overload_factor, args)))
        time.sleep(0.5)
    pairs = [p for r in rounds for p in r.get("pairs", [])]
    rel = [abs(e - w) / w for e, w in pairs if w > 0]
    row = {"rounds": [{k: v for k, v in r.items() if k != "pairs"} for r in rounds], "rejections_compared": len(pairs),
           "estimate_s_median": statistics.median([e for e, _ in pairs]) if pairs else None,
           "wait_seen_s_median": statistics.median([w for _, w in pairs]) if pairs else None,
           "relative_error_median": round(statistics.median(rel), 3) if rel else None,
           "within_50pct_share": round(sum(1 for x in rel if x <= 0.5) / len(rel), 3) if rel else None}
    log(phase="retry_after_honesty", kind=kind, **row)
    return row


# -- the run -----------------------------------------------------------------------------------------------------
def run_all(args, out: dict) -> None:
    work = Path(args.work)
    runs = out["runs"]
    runs["image"] = prepare_run("image", args.image_preset, args.image_run, args)
    runs["text"] = prepare_run("text", args.text_preset, args.text_run, args)
    for kind in ("text", "image"):
        out["in_process"][kind] = in_process(kind, runs[kind]["dir"], args)
    models = {"img": runs["image"]["dir"], "txt": runs["text"]["dir"]}
    server_args = ["--max-batch", str(args.max_batch), *args.server_arg]
    procs = []
    try:
        main, url = T.start_server(models, server_args, work / "server-1.log")
        procs.append(main)
        out["servers"]["ready_seconds"] = round(T.wait_ready(url, main, work / "server-1.log"), 1)
        one = {"server": [main.pid]}
        for kind, n in (("text", 1), ("image", 4), ("image", 1)):  # warm-up, not reported
            measure(url, kind, args.clients, args, f"warmup-{kind}", one, n=n, seconds=args.warmup_seconds)
        ph = out["phases"]
        ph["a_text"] = measure(url, "text", args.clients, args, "a_text", one)
        ph["b_images_4"] = measure(url, "image", args.clients, args, "b_images_4", one, n=4)
        ph["c_images_1"] = measure(url, "image", args.clients, args, "c_images_1", one, n=1)
        for kind in ("text", "image"):
            ph[f"d_unloaded_{kind}"] = measure(url, kind, args.unloaded_clients, args, f"d_unloaded_{kind}", one)
            o = ph[f"d_overload_{kind}"] = measure(url, kind, args.clients * args.overload_factor, args,
                                                   f"d_overload_{kind}", one, gauges_from=url)
            o["p99_vs_unloaded_p99"] = ratio(o["p99_ms"], ph[f"d_unloaded_{kind}"]["p99_ms"])
            o["p99_vs_p99_at_clients"] = ratio(o["p99_ms"], ph["a_text" if kind == "text" else "c_images_1"]["p99_ms"])
            time.sleep(2)  # let the backlog go
            ph[f"d_retry_after_{kind}"] = retry_after_honesty(url, kind, args)
        ph["h_http_ceiling"] = measure_get(url, args.clients, args, "h_http_ceiling", one)
        if args.workers > 1:  # the same server as W processes on one port (no GIL shared between the models)
            multi, url5 = T.start_server(models, [*server_args, "--workers", str(args.workers)],
                                         work / "server-workers.log")
            try:
                T.wait_ready(url5, multi, work / "server-workers.log")
                own = {"server": [multi.pid]}
                for kind, n in (("text", 1), ("image", 1)):
                    measure(url5, kind, args.clients, args, f"warmup-workers-{kind}", own, n=n,
                            seconds=args.warmup_seconds)
                ph["w_text"] = measure(url5, "text", args.clients, args, "w_text", own)
                ph["w_images_4"] = measure(url5, "image", args.clients, args, "w_images_4", own, n=4)
                ph["w_images_1"] = measure(url5, "image", args.clients, args, "w_images_1", own, n=1)
            finally:
                T.stop_process(multi, signal.SIGTERM)
        if args.before_src:  # the same load on an earlier version of the server, in the same run
            old, url4 = T.start_server(models, ["--max-batch", str(args.max_batch)], work / "server-before.log",
                                       src=args.before_src)
            try:
                T.wait_ready(url4, old, work / "server-before.log")
                own = {"server": [old.pid]}
                for kind, n in (("text", 1), ("image", 4), ("image", 1)):
                    measure(url4, kind, args.clients, args, f"warmup-before-{kind}", own, n=n,
                            seconds=args.warmup_seconds)
                ph["z_before_text"] = measure(url4, "text", args.clients, args, "z_before_text", own)
                ph["z_before_images_4"] = measure(url4, "image", args.clients, args, "z_before_images_4", own, n=4)
                ph["z_before_images_1"] = measure(url4, "image", args.clients, args, "z_before_images_1", own, n=1)
            finally:
                T.stop_process(old, signal.SIGTERM)
        if args.free_python and args.text_export and args.image_export:
            free, url3 = T.start_server({"img": args.image_export, "txt": args.text_export}, server_args,
                                        work / "server-free.log", args.free_python)
            try:
                T.wait_ready(url3, free, work / "server-free.log")
                own = {"server": [free.pid]}
                for kind, n in (("text", 1), ("image", 1)):
                    measure(url3, kind, args.clients, args, f"warmup-free-{kind}", own, n=n, seconds=args.warmup_seconds)
                ph["g_free_text"] = measure(url3, "text", args.clients, args, "g_free_text", own)
                ph["g_free_images_1"] = measure(url3, "image", args.clients, args, "g_free_images_1", own, n=1)
            finally:
                T.stop_process(free, signal.SIGTERM)
        if args.skip_replicas:
            return
        second, url2 = T.start_server(models, server_args, work / "server-2.log")
        procs.append(second)
        T.wait_ready(url2, second, work / "server-2.log")
        front = T.free_port()
        nginx = T.start_nginx(work, front, [url, url2])
        procs.append(nginx)
        lb, both = f"http://127.0.0.1:{front}", {"server": [main.pid, second.pid], "nginx": [nginx.pid]}
        measure(lb, "text", 2 * args.clients, args, "warmup-replicas", both, seconds=args.warmup_seconds)
        ph["e_two_replicas"] = measure(lb, "text", 2 * args.clients, args, "e_two_replicas", both)
        pids = {httpx.get(f"{u}/healthz").json()["pid"]: u for u in (url, url2)}

        def stop_second() -> dict:
            time.sleep(max(1, round(args.seconds)) / 2)
            t = time.monotonic()
            second.send_signal(signal.SIGTERM)
            code = second.wait(150)
            return {"_t_stop": t, "stopped_replica_exit": code, "stop_to_exit_s": round(time.monotonic() - t, 2)}

        ph["e_failover"] = measure(lb, "text", args.clients, args, "e_failover", both, during=stop_second)
        ph["e_failover"]["replica_pids"] = list(pids)
    finally:
        for p in reversed(procs):
            T.stop_process(p, signal.SIGQUIT if p.args[0].endswith("nginx") else signal.SIGTERM)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--out", default=str(Path(__file__).parent), help="writes OUT/serve_load-<machine>.json")
    p.add_argument("--work", default="/tmp/serve-bench", help="run directories, logs, wrk's files")
    p.add_argument("--image-run"), p.add_argument("--text-run")
    p.add_argument("--image-preset", default="mnist-dcgan")
    p.add_argument("--text-preset", default="shakespeare-char-gpt-small")
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--unloaded-clients", type=int, default=1)
    p.add_argument("--overload-factor", type=int, default=4)
    p.add_argument("--seconds", type=float, default=25, help="length of each phase")
    p.add_argument("--warmup-seconds", type=float, default=3)
    p.add_argument("--baseline-seconds", type=float, default=10, help="in-process timing per model")
    p.add_argument("--probe-rounds", type=int, default=3, help="Retry-After honesty bursts per kind")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompt", default="ROMEO:\n")
    p.add_argument("--max-batch", type=int, default=32, help="the server's --max-batch and the in-process batch")
    p.add_argument("--server-arg", action="append", default=[], help="extra argument for `genforge serve` (repeatable)")
    p.add_argument("--skip-replicas", action="store_true", help="leave out phase e")
    p.add_argument("--text-export"), p.add_argument("--image-export")
    p.add_argument("--free-python", help="a torch-free venv's python, for phase g (the exports' server)")
    p.add_argument("--workers", type=int, default=2, help="phase w: the server with --workers W (1: leave it out)")
    p.add_argument("--before-src", help="src/ of an earlier checkout: its server under phases a-c's load (phase z)")
    p.add_argument("--quick", action="store_true", help="smoke run: 4-s phases, 1-s warm-ups, 2-s baselines, 1 probe round")
    p.add_argument("--note", default="", help="for the reader, e.g. whether the box was otherwise idle")
    p.add_argument("--baseline-of", nargs=2, metavar=("KIND", "RUN"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.baseline_of:
        print(json.dumps(baseline_here(*args.baseline_of, args)))
        return
    if args.quick:
        args.seconds, args.warmup_seconds, args.baseline_seconds, args.probe_rounds = 4, 1, 2, 1
    T.wrk_binary()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    machine = cpu_kind()
    settings = {k: v for k, v in vars(args).items() if k not in ("note", "out", "work", "baseline_of")}
    settings["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS")
    out = {"machine": machine, "cores": len(os.sched_getaffinity(0)), "note": args.note, "settings": settings,
           "runs": {}, "in_process": {}, "servers": {}, "phases": {}}
    path = Path(args.out) / f"serve_load-{machine}.json"
    try:
        run_all(args, out)
    except BaseException as e:  # keep what was measured, beside the work files rather than over earlier results
        out["error"] = repr(e)
        path = Path(args.work) / "serve_load-partial.json"
        raise
    finally:
        out["aims"] = aims(out, args)
        path.write_text(json.dumps(out, indent=2) + "\n")
        print(table(out), f"\n-> {path}", flush=True)


if __name__ == "__main__":
    main()
