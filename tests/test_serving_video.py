"""/v1/videos, OpenAI's video job API: a live server (uvicorn on loopback, in a thread) of stand-in video models
that follow the generator API (`generate` reports progress and can be held step by step by the test), driven by
the official openai client where it covers the routes and plain httpx where it does not: the job states and
integer progress, the content variants (the MP4 decodes to the clip), each refusal, the bounded queue, delete
as cancellation, expiry, a failing generator, the metrics, /v1/models and the playground (in Chromium when it
is installed; end to end in test_serving_video_e2e.py)."""

import io
import socket
import threading
import time
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from genforge.marking import Marking
from genforge.media.video import mp4_scale
from genforge.serving.app import ServeSettings, create_app

av = pytest.importorskip("av")
openai = pytest.importorskip("openai")
pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")  # the client's notice

KEY = "video-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
H, W, T, FPS = 16, 24, 8, 4.0
CLASSES = ["0", "1", "2", "3+7"]


def fake_clip(seed: int, label: int, frames: int) -> np.ndarray:
    """A bright square sliding right on a background set by the seed, its brightness set by the label."""
    clip = np.full((frames, H, W, 1), 20 + seed % 50, np.uint8)
    for t in range(frames):
        x = (2 * t) % (W - 6)
        clip[t, 5:11, x:x + 6] = 160 + 30 * label
    return clip


class FakeVideo(Marking):
    """The video generator API the route needs, without a network: `steps` progress reports per clip, each
    waiting for a permit of `gate` when the test holds the model."""

    modality, frames, fps, classes, image_shape = "video", T, FPS, CLASSES, (H, W, 1)

    def __init__(self, fail: bool = False, conditional: bool = True):
        self.meta = {"family": "fake-video", "name": "fake-video",
                     "data": {"height": H, "width": W, "channels": 1, "frames": T, "fps": FPS, "classes": CLASSES}}
        self.fail, self.gate, self.conditional = fail, None, conditional
        self.calls, self.stopped = [], []
        self.use_mark_key(False)

    def options(self):
        return {"frames": {"type": "int", "default": T, "min": 2, "max": 32, "help": "frames per clip"},
                "steps": {"type": "int", "default": 4, "min": 1, "max": 20, "help": "progress reports per clip"},
                "loop": {"type": "bool", "default": False, "min": None, "max": None, "help": "a boolean option"}}

    def generate(self, n, seed=None, labels=None, batch_size=64, progress=None, frames=T, steps=4, loop=False):
        self.calls.append({"seed": seed, "labels": labels, "frames": frames, "steps": steps, "loop": loop})
        try:
            for i in range(steps):
                if self.gate is not None:
                    assert self.gate.acquire(timeout=20), "the test never released this step"
                if self.fail:
                    raise RuntimeError("the network blew up")
                if progress is not None:
                    progress(i + 1, steps)
        except BaseException as e:
            self.stopped.append((seed, type(e).__name__))
            raise
        return fake_clip(seed, CLASSES.index(labels) if labels is not None else 0, frames)[None].repeat(n, 0)

    def hold(self) -> threading.Semaphore:
        self.gate = threading.Semaphore(0)
        return self.gate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live(models: dict, **settings):
    """A real server on loopback in a thread (the stand-ins live in this process), with the test's key."""
    app = create_app(models, ServeSettings(**{"api_keys": [KEY], **settings}))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "the server did not start"
        time.sleep(0.02)
    url = f"http://127.0.0.1:{server.config.port}"
    try:
        yield url
    finally:
        for gen in models.values():  # let a held generator finish so that the worker can stop
            if getattr(gen, "gate", None) is not None:
                gen.gate.release(100)
        server.should_exit = True
        thread.join(30)


def http(url: str, key: str = KEY) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, trust_env=False, timeout=30)


def client(url: str):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)


def wait(c: httpx.Client, video_id: str, until, timeout: float = 20.0) -> dict:
    deadline = time.time() + timeout
    while True:
        job = c.get(f"/v1/videos/{video_id}").json()
        if until(job):
            return job
        assert time.time() < deadline, job
        time.sleep(0.02)


def create(c: httpx.Client, **body) -> httpx.Response:
    return c.post("/v1/videos", json={"model": "fake", "prompt": "1", **body})


def mp4_frames(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="gray") for f in container.decode(video=0)])


def metric(c: httpx.Client, line_start: str) -> float:
    for line in c.get("/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.split()[-1])
    return 0.0


def test_job_states_progress_and_content_through_the_openai_client():
    gen = FakeVideo()
    gate = gen.hold()
    with live({"fake": gen}) as url, http(url) as c:
        oc = client(url)
        first = oc.videos.create(model="fake", prompt="a 7+3 clip, bouncing", seconds="2", extra_body={"seed": 5})
        assert (first.status, first.progress, first.object) == ("queued", 0, "video")
        assert first.id.startswith("video_") and first.seconds == "2" and first.size == f"{W}x{H}"
        second = oc.videos.create(model="fake", prompt="2", extra_body={"frames": 4, "steps": 1, "seed": 6})
        assert second.seconds == "1" and second.status == "queued"
        seen = [wait(c, first.id, lambda j: j["status"] == "in_progress")]
        assert oc.videos.retrieve(second.id).status == "queued"  # one job at a time per model
        early = c.get(f"/v1/videos/{first.id}/content")
        assert early.status_code == 409 and early.json()["error"]["code"] == "video_not_ready"
        for _ in range(4):  # each permit lets the generator report one step
            before = seen[-1]["progress"]
            gate.release()
            seen.append(wait(c, first.id, lambda j, b=before: j["progress"] > b or j["status"] == "completed"))
        wait(c, first.id, lambda j: j["status"] == "completed")  # after the last step: the files are written
        done = oc.videos.retrieve(first.id)
        statuses = [j["status"] for j in seen] + [done.status]
        progress = [j["progress"] for j in seen] + [done.progress]
        assert statuses[0] == "in_progress" and statuses[-1] == "completed", statuses
        assert progress == sorted(progress) and len(set(progress)) >= 4 and progress[-1] == 100, progress
        assert all(isinstance(x, int) and 0 <= x <= 100 for x in progress)
        assert done.completed_at >= done.created_at and done.expires_at > done.completed_at and done.error is None
        assert gen.calls[0] == {"seed": 5, "labels": "3+7", "frames": 8, "steps": 4, "loop": False}

        clip = fake_clip(5, 3, 8)[..., 0]
        mp4 = oc.videos.download_content(first.id).content  # variant=video is the default
        frames = mp4_frames(mp4)  # written at least 64 px a side (media.video.mp4_scale), so the mark survives
        k = mp4_scale(H, W)
        assert frames.shape == (8, H * k, W * k)
        frames = frames.reshape(8, H, k, W, k).mean(axis=(2, 4))
        psnr = 10 * np.log10(255**2 / np.mean((frames.astype(float) - clip) ** 2))
        assert psnr > 28, psnr
        raw = oc.videos.with_raw_response.download_content(first.id, variant="thumbnail")
        assert raw.headers["content-type"] == "image/webp"
        thumb = np.asarray(Image.open(io.BytesIO(raw.content)).convert("L"))
        assert np.array_equal(thumb, clip[0])  # lossless WebP of the first frame
        sheet = c.get(f"/v1/videos/{first.id}/content", params={"variant": "spritesheet"})
        assert sheet.status_code == 200 and sheet.headers["content-type"] == "image/jpeg"
        strip = Image.open(io.BytesIO(sheet.content))
        assert strip.width >= 8 * W and strip.height >= H  # frames across
        assert c.get(f"/v1/videos/{first.id}/content", params={"variant": "gif"}).status_code == 400

        from genforge.media.video import decode_clip
        _, fps, record, _ = decode_clip(mp4)
        assert fps == pytest.approx(FPS) and record["seed"] == 5
        assert record["parameters"]["label"] == "3+7" and record["parameters"]["frames"] == 8

        gate.release(1)
        wait(c, second.id, lambda j: j["status"] == "completed")
        assert mp4_frames(oc.videos.download_content(second.id).content).shape[0] == 4

        # the list: newest first, a cursor page as OpenAI's
        assert [v.id for v in oc.videos.list()] == [second.id, first.id]
        page = oc.videos.list(order="asc", limit=1)
        assert [v.id for v in page.data] == [first.id] and page.has_more
        assert [v.id for v in page.get_next_page().data] == [second.id]
        assert c.get("/v1/videos", params={"after": "video_gone"}).status_code == 400

        # delete a completed job: it and its content are gone
        deleted = oc.videos.delete(first.id)
        assert (deleted.id, deleted.deleted, deleted.object) == (first.id, True, "video.deleted")
        with pytest.raises(openai.NotFoundError):
            oc.videos.retrieve(first.id)
        with pytest.raises(openai.NotFoundError):
            oc.videos.download_content(first.id)
        assert [v.id for v in oc.videos.list()] == [second.id]
        assert metric(c, 'genforge_video_jobs{model="fake",status="completed"}') == 1
        assert metric(c, 'genforge_video_jobs_finished_total{model="fake",outcome="completed"}') == 2
        assert metric(c, 'genforge_generated_video_seconds_total{model="fake"}') == pytest.approx(3.0)

        with pytest.raises(openai.BadRequestError, match="size"):
            oc.videos.create(model="fake", prompt="1", size="1280x720")
        with pytest.raises(openai.NotFoundError):
            oc.videos.create(model="sora-2", prompt="1")


@pytest.mark.parametrize("body, param, says", [
    ({"size": "64x64"}, "size", f"{W}x{H}"),
    ({"prompt": "a cat"}, "prompt", "name one"),
    ({"prompt": "1 and 2"}, "prompt", "several classes"),
    ({"label": "cat"}, "label", "Unknown label"),
    ({"label": 7}, "label", "out of range"),
    ({"seconds": "9"}, "seconds", "2..32 frames"),  # 36 frames at 4 fps
    ({"seconds": "0"}, "seconds", "positive"),
    ({"seconds": "soon"}, "seconds", "positive"),
    ({"frames": 33}, "frames", "2..32 frames"),
    ({"frames": 4, "seconds": 1}, "seconds", "not both"),
    ({"steps": 0}, "steps", "out of range"),
    ({"steps": "many"}, "steps", "int"),
    ({"loop": "maybe"}, "loop", "true or false"),
    ({"bogus": 1}, "bogus", "not a field"),
    ({"n": 2}, "n", "not a field"),
    ({"input_reference": "x"}, "input_reference", "not supported"),
    ({"seed": -1}, "seed", "greater than"),
])
def test_each_mistake_is_a_400_naming_the_field(refusing, body, param, says):
    c, gen = refusing
    r = create(c, **body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and says in error["message"], error
    assert gen.calls == []


@pytest.fixture(scope="module")
def refusing():
    gen = FakeVideo()
    with live({"fake": gen}, max_video_frames=40) as url, http(url) as c:
        yield c, gen


def test_json_multipart_and_urlencoded_bodies_and_one_model_by_default():
    gen = FakeVideo()
    with live({"fake": gen}) as url, http(url) as c:
        a = create(c, seconds=1, seed=1, loop=True)
        b = c.post("/v1/videos", files={"prompt": (None, "3+7"), "frames": (None, "6"), "loop": (None, "false"),
                                        "seed": (None, "2")})  # form fields, no model: the only video model
        d = c.post("/v1/videos", data={"prompt": "2", "steps": "2", "seed": "3"})
        for r in (a, b, d):
            assert r.status_code == 200, r.text
            wait(c, r.json()["id"], lambda j: j["status"] == "completed")
        ref = c.post("/v1/videos", files={"prompt": (None, "1"), "input_reference": ("x.png", b"png", "image/png")})
        assert ref.status_code == 400 and ref.json()["error"]["param"] == "input_reference"
        assert c.post("/v1/videos", content=b"{nope", headers={"content-type": "application/json"}).status_code == 400
        assert c.post("/v1/videos", json=[1, 2]).status_code == 400
    assert [(x["seed"], x["labels"], x["frames"], x["steps"], x["loop"]) for x in gen.calls] == [
        (1, "1", 4, 4, True), (2, "3+7", 6, 4, False), (3, "2", 8, 2, False)]


def test_a_full_queue_is_refused_with_429_and_retry_after():
    gen = FakeVideo()
    gate = gen.hold()
    with live({"fake": gen}, max_video_queue=1) as url, http(url) as c:
        running = create(c, seed=1).json()
        wait(c, running["id"], lambda j: j["status"] == "in_progress")
        queued = create(c, seed=2)
        assert queued.status_code == 200
        full = create(c, seed=3)
        assert full.status_code == 429 and int(full.headers["retry-after"]) >= 1
        assert full.json()["error"]["code"] == "queue_full"
        assert metric(c, 'genforge_queue_depth{model="fake"}') == 1
        assert metric(c, 'genforge_video_jobs{model="fake",status="in_progress"}') == 1
        assert metric(c, 'genforge_video_jobs{model="fake",status="queued"}') == 1
        assert metric(c, 'genforge_rejected_total{model="fake"}') == 1
        gate.release(8)
        wait(c, queued.json()["id"], lambda j: j["status"] == "completed")
        again = create(c, seed=4)  # room again
        assert again.status_code == 200
        gate.release(4)
        wait(c, again.json()["id"], lambda j: j["status"] == "completed")
    assert [x["seed"] for x in gen.calls] == [1, 2, 4]


def test_delete_cancels_a_queued_job_before_it_runs_and_a_running_one_at_its_next_step():
    gen = FakeVideo()
    gate = gen.hold()
    with live({"fake": gen}) as url, http(url) as c:
        running = create(c, seed=1).json()
        wait(c, running["id"], lambda j: j["status"] == "in_progress")
        queued = create(c, seed=2).json()
        r = c.delete(f"/v1/videos/{queued['id']}")
        assert r.status_code == 200 and r.json() == {"id": queued["id"], "object": "video.deleted", "deleted": True}
        assert c.get(f"/v1/videos/{queued['id']}").status_code == 404
        assert c.delete(f"/v1/videos/{queued['id']}").status_code == 404
        gate.release(1)
        wait(c, running["id"], lambda j: j["progress"] > 0)
        assert c.delete(f"/v1/videos/{running['id']}").status_code == 200  # running: stops at its next step
        gate.release(1)
        deadline = time.time() + 10
        while not gen.stopped and time.time() < deadline:
            time.sleep(0.02)
        assert gen.stopped == [(1, "JobCancelled")]
        after = create(c, seed=3, steps=1).json()  # the worker is free again
        gate.release(1)
        wait(c, after["id"], lambda j: j["status"] == "completed")
        assert [v["id"] for v in c.get("/v1/videos").json()["data"]] == [after["id"]]
        assert metric(c, 'genforge_video_jobs_finished_total{model="fake",outcome="cancelled"}') == 2
    assert [x["seed"] for x in gen.calls] == [1, 3]  # the queued job never ran


def test_finished_jobs_expire_with_their_content():
    gen = FakeVideo()
    with live({"fake": gen}, video_expiry_s=0.5) as url, http(url) as c:
        job = create(c, seed=1, steps=1).json()
        done = wait(c, job["id"], lambda j: j["status"] == "completed")
        assert done["expires_at"] - done["completed_at"] <= 2
        assert c.get(f"/v1/videos/{job['id']}/content").status_code == 200
        time.sleep(0.8)
        assert c.get(f"/v1/videos/{job['id']}").status_code == 404
        assert c.get(f"/v1/videos/{job['id']}/content").status_code == 404
        assert c.get("/v1/videos").json()["data"] == []
        assert metric(c, 'genforge_video_jobs_finished_total{model="fake",outcome="expired"}') == 1
        assert metric(c, 'genforge_video_jobs{model="fake",status="completed"}') == 0
    with live({"fake": gen}, max_video_kept=2) as url, http(url) as c:  # and at most so many finished jobs
        ids = [create(c, seed=i, steps=1).json()["id"] for i in range(3)]
        wait(c, ids[-1], lambda j: j["status"] == "completed")
        assert [v["id"] for v in c.get("/v1/videos").json()["data"]] == ids[:0:-1]  # the oldest went first


def test_a_generator_that_raises_fails_its_job_and_the_server_keeps_serving():
    broken, slow, good = FakeVideo(fail=True), FakeVideo(), FakeVideo()
    gate = slow.hold()
    with live({"broken": broken, "slow": slow, "fake": good}, video_timeout_s=0.3) as url, http(url) as c:
        job = c.post("/v1/videos", json={"model": "broken", "prompt": "1"}).json()
        failed = wait(c, job["id"], lambda j: j["status"] in ("completed", "failed"))
        assert failed["status"] == "failed" and failed["error"]["code"] == "generation_failed"
        assert "RuntimeError" in failed["error"]["message"] and failed["expires_at"] is not None
        r = c.get(f"/v1/videos/{job['id']}/content")
        assert r.status_code == 409 and "failed" in r.json()["error"]["message"]
        # a job past the server's time limit fails at its next step
        late = c.post("/v1/videos", json={"model": "slow", "prompt": "1"}).json()
        wait(c, late["id"], lambda j: j["status"] == "in_progress")
        time.sleep(0.4)
        gate.release(1)
        timed_out = wait(c, late["id"], lambda j: j["status"] == "failed")
        assert timed_out["error"]["code"] == "timeout"
        assert c.get("/healthz").status_code == 200
        ok = create(c, seed=1, steps=1).json()
        assert wait(c, ok["id"], lambda j: j["status"] in ("completed", "failed"))["status"] == "completed"
        assert metric(c, 'genforge_video_jobs{model="broken",status="failed"}') == 1
        again = c.post("/v1/videos", json={"model": "broken", "prompt": "2"})  # the broken model still takes jobs
        assert again.status_code == 200


def test_jobs_are_seen_only_by_the_key_that_made_them():
    gen = FakeVideo()
    other = "another-key-0123456789abcdef"
    with live({"fake": gen}, api_keys=[KEY, other]) as url, http(url) as c, http(url, other) as o:
        job = create(c, seed=1, steps=1).json()
        wait(c, job["id"], lambda j: j["status"] == "completed")
        assert o.get(f"/v1/videos/{job['id']}").status_code == 404
        assert o.delete(f"/v1/videos/{job['id']}").status_code == 404
        assert o.get("/v1/videos").json()["data"] == []
        assert c.get(f"/v1/videos/{job['id']}").status_code == 200
        assert httpx.get(f"{url}/v1/videos", trust_env=False).status_code == 401


def test_models_describe_the_video_model_and_the_document_has_the_routes():
    with live({"fake": FakeVideo()}, max_video_frames=20) as url, http(url) as c:
        assert [m.id for m in client(url).models.list()] == ["fake"]
        info = c.get("/v1/models/fake").json()["genforge"]
        assert info["modality"] == "video" and info["image_size"] == f"{W}x{H}" and info["channels"] == 1
        assert (info["frames"], info["fps"], info["classes"], info["conditional"]) == (T, FPS, CLASSES, True)
        assert set(info["options"]) == {"frames", "steps", "loop"}
        assert info["limits"]["max_frames"] == 20 and info["limits"]["min_frames"] == 2
        assert info["limits"]["max_seconds"] == 5 and info["limits"]["max_queued_jobs"] == 16
        doc = c.get("/openapi.json").json()
        assert {"/v1/videos", "/v1/videos/{video_id}", "/v1/videos/{video_id}/content"} <= set(doc["paths"])
        body = doc["paths"]["/v1/videos"]["post"]["requestBody"]["content"]
        assert {"application/json", "multipart/form-data"} <= set(body)
        assert "409" in doc["paths"]["/v1/videos/{video_id}/content"]["get"]["responses"]
        page = c.get("/").text
        assert 'id="video-fields"' in page and "<video" in page and 'id="video-progress"' in page
        script = c.get("/static/video.js")
        assert script.status_code == 200 and "/v1/videos" in script.text


def test_a_signing_server_puts_a_c2pa_manifest_in_every_variant(tmp_path):
    pytest.importorskip("c2pa", reason="the provenance extra is installed by the test extra")
    from genforge.media.provenance import c2pa_read, throwaway_certificate

    signer = throwaway_certificate()[0]
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(signer.cert_chain)
    key.write_bytes(signer.private_key)
    with live({"fake": FakeVideo()}, sign_cert=str(cert), sign_key=str(key)) as url, http(url) as c:
        job = create(c, seed=9, steps=1).json()
        wait(c, job["id"], lambda j: j["status"] == "completed")
        for variant in ("video", "thumbnail", "spritesheet"):
            data = c.get(f"/v1/videos/{job['id']}/content", params={"variant": variant}).content
            manifest = c2pa_read(data)
            assert manifest["state"] == "Valid", (variant, manifest)
            assert manifest["record"]["seed"] == 9 and manifest["record"]["parameters"]["label"] == "1"
