"""`genforge serve` in process (FastAPI's test client): routes, auth, limits, streaming, batching that
changes no result, overload. The live-server tests (openai client, disconnect, SIGTERM, workers) are in
test_serving_live.py."""

import base64
import io
import json
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import genforge
from genforge.errors import UserError
from genforge.serving.app import ServeSettings, create_app
from genforge.serving.auth import authorized, load_keys
from genforge.training import train
from genforge.training.config import validate
from tiny import tiny_config, tiny_lm_config

KEY = "test-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("serve")
    img = train(tiny_config(model={"conditional": True}), base / "img", progress=False).run_dir
    vae_raw = tiny_config().model_dump()
    vae_raw["family"] = "vae"
    vae_raw["model"] = {"latent_dim": 4, "width": 8, "hidden": 32}
    vae = train(validate(vae_raw), base / "vae", progress=False).run_dir
    txt = train(tiny_lm_config(), base / "txt", progress=False).run_dir
    return {"img": img, "vae": vae, "txt": txt}


@pytest.fixture(scope="module")
def models(runs):
    return {name: genforge.load(path, precision="no") for name, path in runs.items()}


def client(models, **settings) -> TestClient:
    return TestClient(create_app(models, ServeSettings(**{"api_keys": [KEY], **settings})))


def png(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def test_open_routes_and_an_accurate_openapi_document(models):
    with client(models) as c:
        assert c.get("/healthz").json()["status"] == "ok"
        assert c.get("/readyz").json() == {"status": "ready", "models": ["img", "vae", "txt"]}
        assert "genforge_requests_total" in c.get("/metrics").text
        page = c.get("/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert c.get("/static/playground.js").status_code == 200
        doc = c.get("/openapi.json").json()
        for path in ("/v1/models", "/v1/completions", "/v1/images/generations", "/healthz", "/readyz", "/metrics"):
            assert path in doc["paths"]
        ops = [op for item in doc["paths"].values() for op in item.values()]
        assert all("422" not in op["responses"] for op in ops)  # invalid bodies are 400s, documented as such
        assert "400" in doc["paths"]["/v1/completions"]["post"]["responses"]
        assert "top_k" in doc["components"]["schemas"]["CompletionRequest"]["properties"]


def test_every_v1_route_needs_the_key_and_health_does_not(models):
    with client(models) as c:
        for method, path, body in [("get", "/v1/models", None), ("get", "/v1/models/img", None),
                                   ("post", "/v1/completions", {"model": "txt", "prompt": "a"}),
                                   ("post", "/v1/images/generations", {"model": "img"})]:
            for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789"}, {"Authorization": KEY}):
                r = getattr(c, method)(path, headers=headers, **({"json": body} if body else {}))
                assert r.status_code == 401, (path, headers)
                assert r.json()["error"]["code"] == "invalid_api_key"
                assert KEY not in r.text
            r = getattr(c, method)(path, headers=AUTH, **({"json": body} if body else {}))
            assert r.status_code == 200, (path, r.text)
        assert c.get("/healthz").status_code == 200 and c.get("/metrics").status_code == 200
    with TestClient(create_app(models, ServeSettings())) as open_server:  # no keys: open, as on localhost
        assert open_server.get("/v1/models").status_code == 200


def test_keys_come_from_a_file_and_the_environment_and_are_checked_whole(tmp_path, monkeypatch):
    f = tmp_path / "keys"
    f.write_text("# ops team\n" + "a" * 20 + "\n\n")
    monkeypatch.setenv("GENFORGE_API_KEYS", "b" * 20 + ", " + "c" * 20)
    keys = load_keys(f)
    assert keys == ["a" * 20, "b" * 20, "c" * 20]
    assert authorized("Bearer " + "c" * 20, keys) and authorized("bearer " + "a" * 20, keys)
    assert not authorized("Bearer " + "a" * 19, keys) and not authorized("Basic " + "a" * 20, keys)
    assert not authorized(None, keys) and authorized(None, [])
    f.write_text("short\n")
    with pytest.raises(UserError, match="shorter than 16"):
        load_keys(f)


def test_models_list_modality_classes_options_and_limits(models):
    with client(models, max_tokens=100) as c:
        data = {m["id"]: m for m in c.get("/v1/models", headers=AUTH).json()["data"]}
    assert data["img"]["genforge"]["conditional"] and data["img"]["genforge"]["classes"][:3] == ["0", "1", "2"]
    assert data["img"]["genforge"]["image_size"] == "28x28"
    assert "temperature" in data["vae"]["genforge"]["options"]  # the family's own option, not known to the server
    assert data["txt"]["genforge"]["modality"] == "text" and data["txt"]["genforge"]["limits"]["max_tokens"] == 100


@pytest.mark.parametrize("path, body, status, param", [
    ("/v1/completions", {"model": "nope", "prompt": "a"}, 404, "model"),
    ("/v1/completions", {"model": "img", "prompt": "a"}, 400, "model"),
    ("/v1/completions", {"model": "txt", "prompt": "a", "max_tokens": 101}, 400, "max_tokens"),
    ("/v1/completions", {"model": "txt", "prompt": "a", "n": 5}, 400, "n"),
    ("/v1/completions", {"model": "txt", "prompt": ["a"] * 3, "n": 3}, 400, "prompt"),  # 9 rows > max_batch 8
    ("/v1/completions", {"model": "txt", "prompt": "x" * 3000}, 400, "prompt"),
    ("/v1/completions", {"model": "txt", "prompt": "a", "stop": ["a", "b", "c"]}, 400, "stop"),
    ("/v1/completions", {"model": "txt", "prompt": "a", "stop": "s" * 65}, 400, "stop"),
    ("/v1/completions", {"model": "txt", "prompt": "a", "temperature": -1}, 400, "temperature"),
    ("/v1/completions", {"model": "txt", "prompt": "a", "logprobs": 3}, 400, "logprobs"),
    ("/v1/completions", {"model": "txt", "prompt": "a", "bogus": 1}, 400, "bogus"),
    ("/v1/completions", {"model": "txt", "prompt": [1, 2]}, 400, "prompt"),
    ("/v1/images/generations", {"model": "img", "n": 9}, 400, "n"),
    ("/v1/images/generations", {"model": "img", "size": "64x64"}, 400, "size"),
    ("/v1/images/generations", {"model": "img", "label": 12}, 400, "label"),
    ("/v1/images/generations", {"model": "img", "prompt": "a cat"}, 400, "prompt"),
    ("/v1/images/generations", {"model": "img", "response_format": "url"}, 400, "response_format"),
    ("/v1/images/generations", {"model": "vae", "label": 1}, 400, "label"),
    ("/v1/images/generations", {"model": "vae", "temperature": 99}, 400, "temperature"),
    ("/v1/images/generations", {"model": "vae", "steps": 3}, 400, "steps"),
    ("/v1/images/generations", {"model": "txt"}, 400, "model"),
])
def test_each_limit_and_mistake_is_a_4xx_naming_the_field(models, path, body, status, param):
    with client(models, max_batch=8, max_tokens=100, max_n=4, max_stop=2, max_prompt_tokens=2000) as c:
        r = c.post(path, json=body, headers=AUTH)
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert err["param"] == param and err["message"] and err["type"]


def test_oversized_and_malformed_bodies_are_refused(models):
    with client(models, max_body_bytes=1000) as c:
        r = c.post("/v1/completions", content=json.dumps({"model": "txt", "prompt": "x" * 2000}), headers=AUTH)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        r = c.post("/v1/completions", content=b"{not json", headers={**AUTH, "Content-Type": "application/json"})
        assert r.status_code == 400
        assert c.get("/healthz").status_code == 200


def test_completion_usage_stop_and_echo(models):
    with client(models) as c:
        body = {"model": "txt", "prompt": "ROMEO:", "max_tokens": 30, "seed": 3, "temperature": 0.8}
        r = c.post("/v1/completions", json=body, headers=AUTH).json()
        text = r["choices"][0]["text"]
        assert len(text) == 30 and r["choices"][0]["finish_reason"] == "length"  # char model: a token a char
        assert r["usage"] == {"prompt_tokens": 6, "completion_tokens": 30, "total_tokens": 36}
        # the same as the library for the same settings and seed
        lib = models["txt"].generate("ROMEO:", max_new_tokens=30, temperature=0.8, seed=3)
        assert text == lib
        stop = text[10:12]
        r = c.post("/v1/completions", json={**body, "stop": [stop]}, headers=AUTH).json()
        assert r["choices"][0]["text"] == text[:text.index(stop)] and r["choices"][0]["finish_reason"] == "stop"
        r = c.post("/v1/completions", json={**body, "echo": True, "n": 2}, headers=AUTH).json()
        assert [ch["index"] for ch in r["choices"]] == [0, 1] and r["choices"][0]["text"].startswith("ROMEO:")
        assert r["choices"][0]["text"] != r["choices"][1]["text"]


def test_streaming_sends_the_same_text_in_pieces_then_done(models):
    with client(models) as c:
        body = {"model": "txt", "prompt": ["To be", "or not"], "max_tokens": 25, "seed": 5, "temperature": 0.9}
        whole = c.post("/v1/completions", json=body, headers=AUTH).json()
        with c.stream("POST", "/v1/completions", json={**body, "stream": True,
                                                        "stream_options": {"include_usage": True}}, headers=AUTH) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    texts, reasons = ["", ""], [None, None]
    for ch in chunks:
        for choice in ch["choices"]:
            texts[choice["index"]] += choice["text"]
            reasons[choice["index"]] = choice["finish_reason"] or reasons[choice["index"]]
    assert len(chunks) > 10  # pieces, not one blob
    assert texts == [ch["text"] for ch in whole["choices"]] and reasons == ["length", "length"]
    assert chunks[-1]["usage"] == whole["usage"] and chunks[-1]["choices"] == []
    assert chunks[-1]["provenance"] == {**whole["provenance"], "created": chunks[-1]["provenance"]["created"]}


def test_images_are_pngs_reproducible_by_seed_with_labels_and_options(models):
    with client(models) as c:
        r = c.post("/v1/images/generations", json={"model": "img", "n": 4, "seed": 7, "label": "3"}, headers=AUTH)
        imgs = [png(d["b64_json"]) for d in r.json()["data"]]
        assert len(imgs) == 4 and imgs[0].shape == (28, 28) and imgs[0].dtype == np.uint8
        lib = models["img"].generate(4, seed=7, labels="3")
        assert all(np.array_equal(a, b[..., 0]) for a, b in zip(imgs, lib))
        by_prompt = c.post("/v1/images/generations", json={"model": "img", "n": 4, "seed": 7, "prompt": "3"},
                           headers=AUTH).json()
        # pixels, not bytes: each file's metadata carries its creation time
        assert all(np.array_equal(png(a["b64_json"]), b) for a, b in zip(by_prompt["data"], imgs))
        cold = c.post("/v1/images/generations", json={"model": "vae", "n": 2, "seed": 1, "temperature": 0.1},
                      headers=AUTH).json()
        assert np.array_equal(png(cold["data"][0]["b64_json"]), models["vae"].generate(2, seed=1, temperature=0.1)[0, ..., 0])


def _content(item: dict):
    """What a choice or image says, without the metadata (whose creation time differs between two calls)."""
    return item["text"] if "text" in item else png(item["b64_json"]).tobytes()


def _concurrently(c, requests):
    out = [None] * len(requests)

    def go(i, path, body):
        out[i] = c.post(path, json=body, headers=AUTH)

    threads = [threading.Thread(target=go, args=(i, *req)) for i, req in enumerate(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_batching_merges_requests_without_changing_any_result(models):
    texts = [("/v1/completions", {"model": "txt", "prompt": p, "max_tokens": m, "seed": i, "temperature": t,
                                  **({"top_k": 5} if i % 2 else {"top_p": 0.9})})
             for i, (p, m, t) in enumerate([("ROMEO:", 40, 0.8), ("a", 12, 1.0), ("JULIET:\nO", 33, 0.0),
                                            ("The king", 20, 1.3), ("\n", 7, 0.5), ("Thou", 40, 0.7)])]
    images = [("/v1/images/generations", {"model": "img", "n": n, "seed": 10 + n, **({"label": n} if n % 2 else {})})
              for n in (1, 2, 3, 4)]
    with client(models) as alone:  # one request at a time: each is a batch of its own
        expected = [alone.post(path, json=body, headers=AUTH).json() for path, body in texts + images]
    with client(models, max_batch=64, max_wait_ms=300) as merged:
        got = [r.json() for r in _concurrently(merged, texts + images)]
        m = merged.get("/metrics").text
    for e, g in zip(expected, got):
        key = "choices" if "choices" in e else "data"
        assert [_content(x) for x in g[key]] == [_content(x) for x in e[key]]
    # and they really were merged: text rows shared decode steps (more rows per step than one on average)
    count = float(m.split('genforge_batch_rows_count{model="txt"} ')[1].split()[0])
    rows = float(m.split('genforge_batch_rows_sum{model="txt"} ')[1].split()[0])
    assert rows == sum(body["max_tokens"] for _, body in texts) and rows / count > 1.5
    assert 'genforge_batch_rows_bucket{le="1.0",model="txt"}' in m


def test_overload_is_refused_with_429_and_the_server_stays_healthy(models):
    with client(models, max_batch=1, max_queue=1, max_wait_ms=0) as c:
        slow = ("/v1/completions", {"model": "txt", "prompt": "a", "max_tokens": 400, "temperature": 1.0})
        rs = _concurrently(c, [slow] * 8)
        codes = sorted(r.status_code for r in rs)
        assert 429 in codes and 200 in codes and all(code in (200, 429) for code in codes)
        refused = next(r for r in rs if r.status_code == 429)
        assert int(refused.headers["Retry-After"]) >= 1 and refused.json()["error"]["type"] == "rate_limit_error"
        assert c.get("/healthz").status_code == 200
        assert c.post("/v1/completions", json={**slow[1], "max_tokens": 5}, headers=AUTH).status_code == 200
        assert 'genforge_rejected_total{model="txt"}' in c.get("/metrics").text


def test_a_request_over_the_timeout_gets_504_and_frees_its_rows(models):
    with client(models, timeout_s=0.3, max_tokens=20000) as c:
        r = c.post("/v1/completions", json={"model": "txt", "prompt": "a", "max_tokens": 20000}, headers=AUTH)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        # the abandoned row ended early, so a short request is answered at once rather than after 20,000 tokens
        ok = c.post("/v1/completions", json={"model": "txt", "prompt": "a", "max_tokens": 2}, headers=AUTH)
        assert ok.status_code == 200
        tokens = [ln for ln in c.get("/metrics").text.splitlines() if ln.startswith("genforge_generated_tokens_total")]
        assert float(tokens[0].split()[-1]) < 19000
