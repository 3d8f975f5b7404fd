"""`genforge serve` as users run it: a real process on loopback, driven by the official openai client and
httpx; a client that leaves mid-stream frees its rows; SIGTERM drains; --workers shares one port."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import httpx
import pytest

from genforge.training import train
from tiny import tiny_config, tiny_lm_config

KEY = "live-key-0123456789abcdef"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("live")
    img = train(tiny_config(model={"conditional": True}), base / "img", progress=False).run_dir
    txt = train(tiny_lm_config(), base / "txt", progress=False).run_dir
    keys = base / "keys"
    keys.write_text(KEY + "\n")
    return {"img": img, "txt": txt, "keys": keys}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(runs, *extra):
    port = free_port()
    cmd = [sys.executable, "-m", "genforge.cli", "serve", f"img={runs['img']}", f"txt={runs['txt']}",
           "--port", str(port), "--api-key-file", str(runs["keys"]), "--precision", "no", "--log-level", "warning",
           *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"server did not start: {proc.stdout.read()}")
            time.sleep(0.3)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def metric(url: str, name: str, model: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(f'{name}{{model="{model}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_the_official_openai_client_works_unchanged(runs):
    openai = pytest.importorskip("openai")
    with server(runs) as (url, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        assert sorted(m.id for m in client.models.list()) == ["img", "txt"]
        done = client.completions.create(model="txt", prompt="ROMEO:", max_tokens=20, seed=4, temperature=0.7)
        assert len(done.choices[0].text) == 20 and done.usage.completion_tokens == 20
        pieces = [c.choices[0].text for c in client.completions.create(model="txt", prompt="ROMEO:", max_tokens=20,
                                                                       seed=4, temperature=0.7, stream=True)
                  if c.choices]
        assert len(pieces) > 1 and "".join(pieces) == done.choices[0].text
        images = client.images.generate(model="img", prompt="7", n=2, response_format="b64_json",
                                        extra_body={"seed": 1})
        assert len(images.data) == 2 and images.data[0].b64_json
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong-key-0123456789", max_retries=0).models.list()
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="nope", prompt="a")
        with pytest.raises(openai.BadRequestError, match="max_tokens"):
            client.completions.create(model="txt", prompt="a", max_tokens=10**6)


def test_a_client_that_leaves_mid_stream_frees_its_rows(runs):
    with server(runs, "--max-tokens", "50000", "--max-batch", "1") as (url, _):
        body = {"model": "txt", "prompt": "a", "max_tokens": 50000, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60,
                          headers={"Authorization": f"Bearer {KEY}"}) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    break  # one piece arrived; now leave
        # with one row per batch, a short request can only run once the abandoned row has ended
        t = time.time()
        short = httpx.post(f"{url}/v1/completions", json={"model": "txt", "prompt": "a", "max_tokens": 3},
                           headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
        assert short.status_code == 200
        tokens = metric(url, "genforge_generated_tokens_total", "txt")
        assert 3 < tokens < 50000 - 1000, (tokens, time.time() - t)  # the abandoned row stopped early


def test_sigterm_drains_requests_in_flight_then_exits(runs):
    with server(runs, "--max-tokens", "4000") as (url, proc):
        got, first = {}, threading.Event()

        def stream():
            body = {"model": "txt", "prompt": "a", "max_tokens": 4000, "stream": True,
                    "stream_options": {"include_usage": True}}
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120,
                              headers={"Authorization": f"Bearer {KEY}"}) as r:
                lines = []
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        lines.append(line[6:])
                        first.set()
                got["lines"] = lines

        reader = threading.Thread(target=stream)
        reader.start()
        assert first.wait(60)
        proc.send_signal(signal.SIGTERM)
        reader.join(120)
        # uvicorn re-raises the SIGTERM it caught once it has drained, so the exit is "terminated by SIGTERM"
        assert proc.wait(120) in (0, -signal.SIGTERM)
        lines = got["lines"]
        assert lines[-1] == "[DONE]" and json.loads(lines[-2])["usage"]["completion_tokens"] == 4000
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/healthz", timeout=2)


@pytest.mark.skipif(os.cpu_count() is not None and os.cpu_count() < 2, reason="two worker processes need two cores")
def test_two_workers_serve_one_port(runs):
    with server(runs, "--workers", "2") as (url, _):
        pids = set()
        deadline = time.time() + 60
        while len(pids) < 2 and time.time() < deadline:
            with httpx.Client() as c:  # a new connection each time: the kernel spreads them over the workers
                pids.add(c.get(f"{url}/healthz", headers={"Connection": "close"}).json()["pid"])
        assert len(pids) == 2
        r = httpx.post(f"{url}/v1/completions", json={"model": "txt", "prompt": "a", "max_tokens": 5},
                       headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
        assert r.status_code == 200
        assert "genforge_requests_total" in httpx.get(f"{url}/metrics").text


def test_schemathesis_finds_no_server_error_and_the_document_is_accurate(runs):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                                   status_code_conformance)

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

    with server(runs, "--max-tokens", "20", "--max-images", "4", "--max-batch", "8") as (url, _):
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        failures, calls = [], []
        for op in schema.get_all_operations():
            operation = op.ok()

            @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
            @given(case=operation.as_strategy())
            def check(case):
                case.headers = {**(case.headers or {}), "Authorization": f"Bearer {KEY}"}
                response = case.call(base_url=url)
                calls.append(response.status_code)
                try:  # no 5xx, and the status, content type and body are what the document says
                    case.validate_response(response, checks=checks)
                except Exception as e:  # noqa: BLE001 - schemathesis raises its own failure types
                    failures.append((operation.label, response.status_code, str(e)[:300]))

            check()
        assert not failures, failures
        assert len(calls) > 50 and 200 in calls and any(400 <= c < 500 for c in calls)  # valid and invalid both tried
        assert httpx.get(f"{url}/healthz").status_code == 200
