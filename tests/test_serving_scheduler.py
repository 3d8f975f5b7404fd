"""Step-level batching: rows that join and leave a running batch generate what they would alone (the engine,
GPT and LSTM, windows that slide included); through the server, a short completion sent while a long one runs
finishes first; streamed and whole answers are one text per seed under concurrent load; admission by estimated
wait answers 429 with a Retry-After taken from the estimate, which /metrics exports."""

import json
import threading
import time

import pytest
import torch
from fastapi.testclient import TestClient

import genforge
from genforge.models.sampling import generate_ids
from genforge.serving.app import ServeSettings, create_app
from genforge.training import train
from tiny import tiny_lm_config


@pytest.fixture(scope="module")
def lms(tmp_path_factory):
    base = tmp_path_factory.mktemp("sched")
    gpt = train(tiny_lm_config(), base / "gpt", progress=False).run_dir
    lstm = train(_lstm_config(), base / "lstm", progress=False).run_dir
    return {"gpt": genforge.load(gpt, precision="no"), "lstm": genforge.load(lstm, precision="no")}


def _lstm_config():
    from genforge.training.config import validate

    raw = tiny_lm_config().model_dump()
    raw["model"] = {"architecture": "lstm", "n_layer": 1, "hidden": 32, "warmup_steps": 2}
    return validate(raw)


@pytest.mark.parametrize("arch", ["gpt", "lstm"])
def test_rows_joining_and_leaving_a_running_batch_generate_what_they_would_alone(lms, arch):
    gen = lms[arch]
    jobs = gen.jobs(["x"] * 4, max_new_tokens=60, temperature=0.9, seed=0, mark=False)  # rngs replaced below
    prompts = [[5, 6, 7], [9] * 30, [1], [2, 3]]  # the second prompt's window slides (block_size 32)
    lengths = [60, 45, 20, 50]
    for i, job in enumerate(jobs):
        job.rng = torch.Generator().manual_seed(100 + i)
        job.top_k = 5 if i % 2 else None
    expected = [generate_ids(gen.net, [p], n, temperature=0.9, top_k=jobs[i].top_k,
                             generator=torch.Generator().manual_seed(100 + i))[0]
                for i, (p, n) in enumerate(zip(prompts, lengths))]
    engine = gen.engine(3)
    got: dict[int, list[int]] = {i: [] for i in range(4)}
    waiting, seq = [], []
    for step in range(200):
        waiting += {0: [0, 1], 7: [2], 25: [3]}.get(step, [])  # row 3 waits for a free slot
        new = waiting[:3 - len(engine.rows)]
        waiting = waiting[len(new):]
        engine.admit(new, [jobs[i] for i in new], [prompts[i] for i in new])
        seq += new
        if not engine.rows:
            continue
        order = sorted(range(len(engine.rows)), key=lambda b: seq.index(engine.rows[b]))
        ids = engine.sample(order, [])
        ended = []
        for b, (row, t) in enumerate(zip(engine.rows, ids)):
            got[row].append(t)
            if len(got[row]) == lengths[row]:
                ended.append(b)
        engine.drop(ended)
        engine.advance([got[row][-1] for row in engine.rows])
    assert 3 in seq and not waiting
    assert [got[i] for i in range(4)] == expected


KEY = "k-0123456789abcdef0123"
AUTH = {"Authorization": f"Bearer {KEY}"}


def client(models, **settings) -> TestClient:
    return TestClient(create_app(models, ServeSettings(**{"api_keys": [KEY], **settings})))


def test_a_short_completion_sent_while_a_long_one_runs_finishes_first(lms):
    done: dict[str, float] = {}
    with client({"txt": lms["gpt"]}) as c:
        c.post("/v1/completions", json={"model": "txt", "prompt": "a", "max_tokens": 2}, headers=AUTH)  # warm

        def long():
            r = c.post("/v1/completions", json={"model": "txt", "prompt": "a", "max_tokens": 1000,
                                                "temperature": 1.0}, headers=AUTH)
            assert r.status_code == 200
            done["long"] = time.perf_counter()

        t = threading.Thread(target=long)
        t.start()
        while 'genforge_generated_tokens_total{model="txt"} ' not in c.get("/metrics").text or float(
                c.get("/metrics").text.split('genforge_generated_tokens_total{model="txt"} ')[1].split()[0]) < 50:
            time.sleep(0.01)  # the long row is running
        r = c.post("/v1/completions", json={"model": "txt", "prompt": "b", "max_tokens": 5}, headers=AUTH)
        done["short"] = time.perf_counter()
        t.join()
    assert r.status_code == 200 and len(r.json()["choices"][0]["text"]) == 5
    assert done["short"] < done["long"]  # it joined the running batch rather than waiting for it to drain


def _streamed(c, body) -> str:
    with c.stream("POST", "/v1/completions", json={**body, "stream": True}, headers=AUTH) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    chunks = [json.loads(e) for e in events[:-1]]
    texts = [""] * body.get("n", 1)
    for ch in chunks:
        for choice in ch["choices"]:
            texts[choice["index"]] += choice["text"]
    assert "provenance" in chunks[-1]
    return texts


def test_one_text_per_seed_streamed_or_not_under_concurrent_load(lms):
    gen = lms["gpt"]
    bodies = [{"model": "txt", "prompt": p, "max_tokens": m, "seed": s, "temperature": 0.9, "n": n}
              for p, m, s, n in [("ROMEO:", 40, 1, 2), ("a", 25, 2, 1), ("The", 33, 3, 3), ("\n", 50, 4, 1)]]
    expected = [gen.generate([b["prompt"]] * b["n"], max_new_tokens=b["max_tokens"], temperature=0.9, seed=b["seed"])
                for b in bodies]
    results: dict[tuple[int, bool, int], list[str]] = {}
    with client({"txt": gen}) as c:
        def go(i, stream, k):
            body = bodies[i]
            results[(i, stream, k)] = (_streamed(c, body) if stream else
                                       [ch["text"] for ch in c.post("/v1/completions", json=body,
                                                                    headers=AUTH).json()["choices"]])

        threads = [threading.Thread(target=go, args=(i, stream, k)) for k in range(2) for i in range(4)
                   for stream in (False, True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(results) == 16
    for (i, _, _), texts in results.items():
        assert texts == expected[i]


def test_admission_by_estimated_wait_answers_429_with_the_estimate(lms):
    with client({"txt": lms["gpt"]}, max_batch=1, max_queue=100) as c:
        c.post("/v1/completions", json={"model": "txt", "prompt": "a", "max_tokens": 20}, headers=AUTH)  # measures
        slow = {"model": "txt", "prompt": "a", "max_tokens": 600, "temperature": 1.0}
        out = []
        threads = [threading.Thread(target=lambda: out.append(c.post("/v1/completions", json=slow, headers=AUTH)))]
        threads[0].start()
        time.sleep(0.3)  # the first is running; each next one would wait behind it
        for _ in range(3):
            threads.append(threading.Thread(target=lambda: out.append(c.post("/v1/completions", json=slow,
                                                                              headers=AUTH))))
            threads[-1].start()
            time.sleep(0.05)
        m = c.get("/metrics").text
        for t in threads:
            t.join()
    codes = sorted(r.status_code for r in out)
    assert codes.count(200) >= 1 and 429 in codes, codes
    refused = next(r for r in out if r.status_code == 429)
    ms = int(refused.headers["retry-after-ms"])
    assert ms > 0 and int(refused.headers["Retry-After"]) == -(-ms // 1000)
    assert "estimated wait" in refused.json()["error"]["message"] or "queue is full" in refused.json()["error"]["message"]
    assert 'genforge_queue_work{model="txt"}' in m and 'genforge_estimated_wait_seconds{model="txt"}' in m
