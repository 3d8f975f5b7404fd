"""Two `genforge serve` replicas behind Debian's nginx, running deploy/nginx/genforge.conf as docs/guides/serving.md
shows it (only its three port numbers changed to free ones): requests spread over both replicas, and a
replica stopped mid-run (SIGTERM: it stops accepting, finishes what it holds, exits) costs no request."""

import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from genforge.training import train
from tiny import tiny_lm_config

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "deploy" / "nginx" / "genforge.conf"
PORTS = ("127.0.0.1:8001", "127.0.0.1:8002", "listen 8000;")  # what the test replaces in the file


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if not found:  # not a skip: CI installs it (.ci/run), and a skipped balancer test would hide a broken config
        pytest.fail("nginx is not installed; install Debian's: apt-get install -y nginx (.ci/run does)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train(tiny_lm_config(), tmp_path_factory.mktemp("balancer") / "txt", progress=False).run_dir


def start_replica(run_dir, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "genforge.cli", "serve", f"txt={run_dir}", "--port", str(port), "--precision", "no",
           "--log-level", "warning"]
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def wait_ready(url: str, proc: subprocess.Popen, log: Path, seconds: float = 180) -> None:
    deadline = time.time() + seconds
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise AssertionError(f"{url} did not become ready:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def balancer_conf(front: int, a: int, b: int) -> str:
    text = CONF.read_text()
    for old in PORTS:
        assert text.count(old) == 1, f"{CONF} changed: the test expects {old!r} exactly once"
    return (text.replace(PORTS[0], f"127.0.0.1:{a}").replace(PORTS[1], f"127.0.0.1:{b}")
            .replace(PORTS[2], f"listen 127.0.0.1:{front};"))


@contextmanager
def nginx(tmp: Path, front: int, a: int, b: int):
    """nginx as this user, everything under tmp: the file above included into a minimal main configuration."""
    for d in ("logs", "temp"):
        (tmp / d).mkdir(exist_ok=True)
    (tmp / "genforge.conf").write_text(balancer_conf(front, a, b))
    temps = "".join(f"    {k}_temp_path temp/{k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp / "nginx.conf").write_text(
        "daemon off;\nworker_processes 1;\npid nginx.pid;\nerror_log logs/error.log info;\n"
        + (f"user {getpass.getuser()};\n" if os.geteuid() == 0 else "")
        + "events { worker_connections 512; }\nhttp {\n"
        "    log_format upstream '$status $request_method $uri upstream=$upstream_addr statuses=$upstream_status';\n"
        f"    access_log logs/access.log upstream;\n{temps}    include {tmp / 'genforge.conf'};\n}}\n")
    binary = nginx_binary()
    check = subprocess.run([binary, "-t", "-p", str(tmp), "-e", "logs/error.log", "-c", "nginx.conf"],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([binary, "-p", str(tmp), "-e", "logs/error.log", "-c", "nginx.conf"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        url, deadline = f"http://127.0.0.1:{front}", time.time() + 30
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=2)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"nginx did not start:\n{(tmp / 'logs/error.log').read_text()[-3000:]}")
                time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful stop
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def cluster(run_dir, tmp_path):
    """Two replicas on free ports and nginx in front: (front url, {port: (url, process)}, nginx's access log)."""
    nginx_binary()  # before the replicas start: a missing nginx fails at once
    ports = [free_port(), free_port()]
    with ExitStack() as stack:
        replicas = {}
        for port in ports:  # both start at once (each imports torch and loads the model)
            log = tmp_path / f"replica-{port}.log"
            proc = start_replica(run_dir, port, log)
            stack.callback(stop, proc)
            replicas[port] = (f"http://127.0.0.1:{port}", proc, log)
        for url, proc, log in replicas.values():
            wait_ready(url, proc, log)
        front = stack.enter_context(nginx(tmp_path, free_port(), *ports))
        yield front, {p: (u, pr) for p, (u, pr, _) in replicas.items()}, tmp_path / "logs" / "access.log"


def served(url: str) -> int:
    """Requests a replica answered on /v1/completions (its genforge_requests_total, all statuses)."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("genforge_requests_total{") and 'route="/v1/completions"' in line:
            total += float(line.split()[-1])
    return int(total)


def complete(client: httpx.Client, seed: int) -> httpx.Response:
    return client.post("/v1/completions", json={"model": "txt", "prompt": "ROMEO:", "max_tokens": 8,
                                                "temperature": 0.8, "seed": seed})


def test_nginx_spreads_requests_over_both_replicas(cluster):
    front, replicas, _ = cluster
    pids = {httpx.get(f"{url}/healthz", timeout=10).json()["pid"] for url, _ in replicas.values()}
    assert pids == {proc.pid for _, proc in replicas.values()}
    with httpx.Client(base_url=front, timeout=60) as c:
        seen = [c.get("/healthz").json()["pid"] for _ in range(10)]
        assert set(seen) == pids, seen  # each /healthz through nginx says which replica answered
        answers = [complete(c, seed) for seed in range(12)]
    assert [r.status_code for r in answers] == [200] * 12
    counts = [served(url) for url, _ in replicas.values()]
    assert sum(counts) == 12 and min(counts) >= 3, counts  # least_conn, one at a time: round robin


def test_a_replica_stopped_mid_run_costs_no_request(cluster):
    front, replicas, access_log = cluster
    (url_a, _), (url_b, proc_b) = replicas.values()
    results, done = [], threading.Event()

    def client(i: int) -> None:
        with httpx.Client(base_url=front, timeout=60) as c:
            n = 0
            while not done.is_set():
                try:
                    r = complete(c, i * 100_000 + n)
                    results.append((time.time(), r.status_code, r.text[:200] if r.status_code != 200 else ""))
                except httpx.HTTPError as e:
                    results.append((time.time(), type(e).__name__, str(e)))
                n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        deadline = time.time() + 60
        while (served(url_a) < 5 or served(url_b) < 5) and time.time() < deadline:
            time.sleep(0.2)
        assert served(url_b) >= 5, "replica B got no traffic before the stop"
        stopped = time.time()
        proc_b.send_signal(signal.SIGTERM)  # drains: stops accepting, finishes what it holds, exits
        assert proc_b.wait(60) in (0, -signal.SIGTERM)
        exited = time.time()
        time.sleep(2.0)  # traffic goes on, to A alone
    finally:
        done.set()
        for t in threads:
            t.join(60)
    failed = [r for r in results if r[1] != 200]
    assert not failed, failed[:5]
    during = [r for r in results if stopped <= r[0]]
    assert len(during) >= 10, (len(results), len(during), exited - stopped)
    # the failover was exercised: some request reached B after it stopped listening and was passed on to A
    port_a, port_b = url_a.rsplit(":", 1)[1], url_b.rsplit(":", 1)[1]
    log = access_log.read_text()
    assert re.search(rf"upstream=127\.0\.0\.1:{port_b}, 127\.0\.0\.1:{port_a} statuses=502, 200", log), \
        log[-2000:]
    assert httpx.get(f"{url_a}/readyz", timeout=10).status_code == 200


def test_the_docs_show_the_configuration_that_runs():
    text = (ROOT / "docs" / "guides" / "serving.md").read_text()
    blocks = re.findall(r"^```nginx\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)
    assert CONF.read_text() in blocks, "docs/guides/serving.md must show deploy/nginx/genforge.conf verbatim in an ```nginx block"
