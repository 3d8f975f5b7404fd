"""Helpers of serve_load.py: wrk as the load generator (with a Lua script that logs every request), CPU time of
processes from /proc, `genforge serve` and nginx as subprocesses, and /metrics scraping."""

from __future__ import annotations

import contextlib
import getpass
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
NGINX_CONF = ROOT / "deploy" / "nginx" / "genforge.conf"
TICK = os.sysconf("SC_CLK_TCK")

# One wrk thread per connection, so that request() and response() of a thread alternate and one clock pairs
# them: every request is logged with its status, start (CLOCK_MONOTONIC, as Python's time.monotonic), latency,
# tokens or images, the Retry-After / retry-after-ms it carried, and whether it was a retry after a 429.
WRK_LUA = r"""
local ffi = require("ffi")
ffi.cdef[[ typedef struct { long tv_sec; long tv_nsec; } gf_ts; int clock_gettime(int, gf_ts *); ]]
local ts = ffi.new("gf_ts")
local function now() ffi.C.clock_gettime(1, ts); return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9 end
local threads, count = {}, 0

function setup(thread)
  count = count + 1
  thread:set("id", count)
  threads[count] = thread
end

function init(args)
  path, template = os.getenv("WRK_PATH"), os.getenv("WRK_BODY")
  text, backoff = os.getenv("WRK_KIND") == "text", os.getenv("WRK_BACKOFF") == "1"
  headers = {["Content-Type"] = "application/json"}
  log, n, wait_ms, retrying, waited, started = {}, 0, 0, 0, 0, 0
end

function request()
  n = n + 1
  started = now()
  local body = template:gsub('"__SEED__"', tostring(id * 1000000 + n))
  return wrk.format("POST", path, headers, body)
end

function delay()
  local d = wait_ms
  wait_ms = 0
  return d
end

function response(status, hdrs, body)
  local t, amount = now(), 0
  if status == 200 then
    if text then amount = tonumber(body:match('"completion_tokens":%s*(%d+)')) or 0
    else local _, k = body:gsub('"b64_json"', ''); amount = k end
  end
  local ra = hdrs["retry-after"] or hdrs["Retry-After"] or ""
  local ram = hdrs["retry-after-ms"] or hdrs["Retry-After-Ms"] or ""
  log[#log + 1] = string.format("%d\t%.6f\t%.6f\t%d\t%s\t%s\t%d\t%.0f", status, started, t - started, amount,
                                ra, ram, retrying, waited)
  retrying, waited = 0, 0
  if status == 429 and backoff then  -- as OpenAI's clients: retry-after-ms first, then Retry-After; at most 60 s
    local ms = tonumber(ram) or (tonumber(ra) or 0.5) * 1000
    wait_ms, retrying, waited = math.min(ms, 60000), 1, math.min(ms, 60000)
  end
end

function done(summary, latency, requests)
  local f = io.open(os.getenv("WRK_OUT"), "w")
  local e = summary.errors
  f:write(string.format("#\t%d\t%d\t%d\t%d\n", e.connect, e.read, e.write, e.timeout))
  for _, t in ipairs(threads) do
    for _, line in ipairs(t:get("log")) do f:write(line, "\n") end
  end
  f:close()
end
"""


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is not installed: apt-get install -y wrk (Debian's package; the benchmark's load generator)")
    return found


def run_wrk(url: str, path: str, kind: str, body: dict, clients: int, seconds: float, work: Path, label: str,
            backoff: bool = True) -> dict:
    """wrk against url+path for `seconds` with `clients` connections, each sending back to back (each waits a
    429's retry-after-ms before its next request when `backoff`). Returns the requests and wrk's CPU time."""
    script, out = work / "wrk.lua", work / f"wrk-{label}.tsv"
    script.write_text(WRK_LUA)
    env = {**os.environ, "WRK_PATH": path, "WRK_KIND": kind, "WRK_BACKOFF": "1" if backoff else "0",
           "WRK_OUT": str(out), "WRK_BODY": json.dumps({**body, "seed": "__SEED__"})}
    cmd = [wrk_binary(), "-t", str(clients), "-c", str(clients), "-d", f"{max(1, round(seconds))}s",
           "--timeout", "600s", "-s", str(script), url]
    with (work / f"wrk-{label}.stderr").open("w+") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # wrk's own CPU time (not other children reaped meanwhile)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"wrk failed ({proc.returncode}): {err.read()[-2000:]}")
    lines = out.read_text().splitlines()
    errors = dict(zip(("connect", "read", "write", "timeout"), map(int, lines[0].split("\t")[1:])))
    recs = []
    for line in lines[1:]:
        st, start, lat, amount, ra, ram, retry, waited = line.split("\t")
        recs.append({"status": int(st), "start": float(start), "latency": float(lat), "amount": int(amount),
                     "retry_after": float(ra) if ra else None, "retry_after_ms": float(ram) if ram else None,
                     "retry": retry == "1", "waited_ms": float(waited)})
    return {"records": recs, "socket_errors": errors, "wrk_cpu_s": usage.ru_utime + usage.ru_stime}


# -- CPU time from /proc ---------------------------------------------------------------------------------------
def tree(pid: int) -> list[int]:
    """pid and its descendants."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            kids += [int(c) for c in (task / "children").read_text().split()]
    return [pid] + [d for k in kids for d in tree(k)]


def ticks(pid: int) -> tuple[int, int]:
    """(utime + stime, cutime + cstime) of one process, in clock ticks (0, 0 once it is gone)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12]), int(f[13]) + int(f[14])
    return 0, 0


class CpuMeter:
    """CPU-seconds used between start() and stop() by named process trees (children that end meanwhile are
    counted through their parent's cutime: roughly), by this process, by wrk (its rusage, measured by run_wrk),
    and by the whole box (/proc/stat: anything else running shows up as `other`)."""

    def __init__(self, roots: dict[str, list[int]]):
        self.roots = roots

    def _sample(self) -> dict:
        per = {name: {p: ticks(p) for root in roots for p in tree(root)} for name, roots in self.roots.items()}
        box = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return {"per": per, "box": sum(box) - box[3] - box[4], "self": time.process_time(), "t": time.monotonic()}

    def start(self) -> CpuMeter:
        self.a = self._sample()
        return self

    def stop(self, wrk_cpu_s: float = 0.0) -> dict:
        b = self._sample()
        dt = b["t"] - self.a["t"]
        out = {}
        for name, now in b["per"].items():
            then = self.a["per"][name]
            used = sum(max(0, v[0] - then.get(p, (0, 0))[0]) for p, v in now.items())
            used += sum(max(0, v[1] - then.get(p, (0, 0))[1]) for p, v in now.items())
            out[name] = round(used / TICK / dt, 3)
        out["load_generator"] = round(wrk_cpu_s / dt, 3)
        out["benchmark_process"] = round((b["self"] - self.a["self"]) / dt, 3)
        box = (b["box"] - self.a["box"]) / TICK / dt
        out["other"] = round(max(0.0, box - sum(out.values())), 3)
        out["box_total"] = round(box, 3)
        out["cores"] = len(os.sched_getaffinity(0))
        return out


# -- processes -------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(models: dict[str, str], args: list[str], log: Path, python: str | None = None,
                 src: str | None = None) -> tuple[subprocess.Popen, str]:
    """`genforge serve` of `models` with `python` (default: this interpreter; a torch-free venv's for exports), or
    with the genforge of another checkout's `src` (an earlier version, measured in the same run)."""
    port = free_port()
    cmd = [python or sys.executable, "-m", "genforge.cli", "serve", *(f"{k}={v}" for k, v in models.items()),
           "--host", "127.0.0.1", "--port", str(port), *args]
    env = {**os.environ, "PYTHONPATH": src} if src else None
    return (subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env),
            f"http://127.0.0.1:{port}")


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 300) -> float:
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}) before ready: {log.read_text()[-2000:]}")
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"server not ready after {timeout} s; see {log}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return time.monotonic() - t0
        time.sleep(0.3)


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 150) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def start_nginx(work: Path, front: int, upstreams: list[str]) -> subprocess.Popen:
    """Debian's nginx as this user with everything under work/nginx, running deploy/nginx/genforge.conf with its
    three ports changed (as tests/test_serving_balancer.py does)."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(binary, os.X_OK):
        raise SystemExit("nginx is not installed: apt-get install -y nginx")
    prefix = work / "nginx"
    for d in ("logs", "temp"):
        (prefix / d).mkdir(parents=True, exist_ok=True)
    text = NGINX_CONF.read_text()
    for old, new in zip(("127.0.0.1:8001", "127.0.0.1:8002"), upstreams):
        text = text.replace(old, new.removeprefix("http://"))
    (prefix / "genforge.conf").write_text(text.replace("listen 8000;", f"listen 127.0.0.1:{front};"))
    temps = "".join(f"    {k}_temp_path temp/{k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (prefix / "nginx.conf").write_text(
        "daemon off;\nworker_processes 1;\npid nginx.pid;\nerror_log logs/error.log warn;\n"
        + (f"user {getpass.getuser()};\n" if os.geteuid() == 0 else "")
        + "events { worker_connections 4096; }\nhttp {\n    access_log off;\n"
        f"{temps}    include {prefix / 'genforge.conf'};\n}}\n")
    proc = subprocess.Popen([binary, "-p", str(prefix), "-e", "logs/error.log", "-c", "nginx.conf"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    for _ in range(100):
        with contextlib.suppress(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{front}/healthz", timeout=2)
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"nginx did not start: {(prefix / 'logs' / 'error.log').read_text()[-2000:]}")


# -- /metrics --------------------------------------------------------------------------------------------------
def scrape(url: str, names: tuple[str, ...], model: str) -> dict[str, float]:
    out = {}
    with contextlib.suppress(httpx.HTTPError):
        for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
            for name in names:
                if line.startswith(f'{name}{{model="{model}"}}'):
                    out[name] = float(line.split()[-1])
    return out


class Scraper(threading.Thread):
    """Samples gauges every `every` seconds while a phase runs; .summary() gives each one's mean and max, and
    None for a gauge the server does not export."""

    def __init__(self, url: str, names: tuple[str, ...], model: str, every: float = 0.5):
        super().__init__(daemon=True)
        self.url, self.names, self.model, self.every = url, names, model, every
        self.samples: list[tuple[float, dict]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.every):
            self.samples.append((time.monotonic(), scrape(self.url, self.names, self.model)))

    def summary(self) -> dict:
        self.halt.set()
        self.join()
        out = {}
        for name in self.names:
            xs = [s[name] for _, s in self.samples if name in s]
            out[name] = {"mean": round(sum(xs) / len(xs), 3), "max": round(max(xs), 3), "samples": len(xs)} if xs else None
        return out


def pct(xs: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    xs = sorted(xs)
    return xs[max(0, math.ceil(q / 100 * len(xs)) - 1)] if xs else None
