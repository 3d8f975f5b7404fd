"""/v1/videos end to end: the playground in Chromium (progress, then the clip plays), schemathesis on the video
routes (no 5xx; statuses, types and bodies as documented), and a real space-time diffusion run trained for two
steps on Moving MNIST, served as the library samples it. The stand-in model and the live server are
test_serving_video.py's."""

from pathlib import Path

import numpy as np
import pytest
from genforge.media.video import mp4_scale
from test_serving_video import AUTH, CLASSES, FPS, KEY, H, T, W, FakeVideo, client, http, live, wait

pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")  # the client's notice

# -- the playground in a browser ------------------------------------------------------------------------------------
CHROMIUM = "/usr/bin/chromium"


def test_the_playground_shows_progress_and_plays_the_clip():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"the browser test needs Chromium at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api")
    gen = FakeVideo()
    with live({"fake": gen}) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu",
                                                                    "--no-proxy-server"])
        page = browser.new_page()
        page.set_default_timeout(30_000)
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(f"{url}/")
        page.fill("#api-key", KEY)
        page.wait_for_selector('#model option[value="fake"]', state="attached")
        page.select_option("#model", "fake")
        sync_api.expect(page.locator("#video-fields")).to_be_visible()
        assert page.eval_on_selector_all("#video-label option", "os => os.map(o => o.value)") == CLASSES
        assert page.input_value("#video-frames") == str(T) and page.get_attribute("#video-frames", "max") == "32"
        assert page.locator("#opt-steps").count() == 1 and page.locator("#opt-frames").count() == 0
        page.select_option("#video-label", "3+7")
        page.fill("#video-seed", "4")
        page.fill("#opt-steps", "3")
        gate = gen.hold()
        page.click("#generate")
        page.wait_for_function("document.querySelector('#status').textContent.startsWith('Generating')")
        gate.release(3)
        page.wait_for_function("['done', 'error'].includes(document.querySelector('#video').dataset.state)")
        sync_api.expect(page.locator("#error")).to_be_hidden()
        assert page.evaluate("document.querySelector('#video-progress').value") == 100
        played = page.evaluate("(() => { const v = document.querySelector('#clip'); "
                               "return [v.readyState, v.videoWidth, v.videoHeight, v.duration]; })()")
        assert played[0] >= 2 and played[1:3] == [W * mp4_scale(H, W), H * mp4_scale(H, W)] and played[3] == pytest.approx(T / FPS, abs=0.3), played
        assert page.evaluate("document.querySelector('#spritesheet').naturalWidth") >= 8 * W
        assert gen.calls[-1] == {"seed": 4, "labels": "3+7", "frames": T, "steps": 3, "loop": False}
        browser.close()
        assert not errors, errors


def test_schemathesis_finds_no_server_error_on_the_video_routes():
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                                   status_code_conformance)

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    with live({"fake": FakeVideo(conditional=False)}, max_video_queue=4) as url:  # any prompt makes a job
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json").include(path_regex="^/v1/videos")
        failures, calls = [], []
        for op in schema.get_all_operations():
            operation = op.ok()

            @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
            @given(case=operation.as_strategy())
            def check(case):
                case.headers = {**(case.headers or {}), **AUTH}
                response = case.call(base_url=url)
                calls.append((operation.label, response.status_code))
                try:  # no 5xx, and the status, content type and body are what the document says
                    case.validate_response(response, checks=checks)
                except Exception as e:  # noqa: BLE001 - schemathesis raises its own failure types
                    failures.append((operation.label, response.status_code, str(e)[:300]))

            check()
        assert not failures, failures
        assert all(status < 500 for _, status in calls)
        assert {("POST /v1/videos", 200), ("POST /v1/videos", 400), ("GET /v1/videos", 200),
                ("GET /v1/videos/{video_id}", 404)} <= set(calls), sorted(set(calls))


# -- a real video run ---------------------------------------------------------------------------------------------
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # MNIST, from which Moving MNIST is drawn


def test_a_trained_space_time_diffusion_run_is_served_as_the_library_samples_it(tmp_path):
    assert (SHARED_DATA / "mnist").is_dir(), f"the video run trains on Moving MNIST drawn from {SHARED_DATA}/mnist"
    import genforge
    from genforge.media.video import decode_clip
    from genforge.training import train
    from genforge.training.config import validate

    config = validate({
        "name": "tiny-video", "family": "diffusion",
        "data": {"dataset": "moving-mnist", "video": {"frames": 4, "size": 16, "clips": 64}},
        "model": {"width": 8, "objective": "flow", "steps": 3, "conditional": True, "guidance": 2.0},
        "train": {"batch_size": 4, "max_steps": 2, "mixed_precision": "no", "sample_every": 100,
                  "checkpoint_every": 100, "seed": 3}})
    gen = genforge.load(train(config, tmp_path / "run", SHARED_DATA, progress=False).run_dir, precision="no")
    gen.use_mark_key(False)
    with live({"mm": gen}) as url, http(url) as c:
        info = c.get("/v1/models/mm").json()["genforge"]
        assert info["modality"] == "video" and info["image_size"] == "16x16" and info["frames"] == 4
        assert "steps" in info["options"] and info["classes"] == [str(d) for d in range(10)]
        seconds = 6 / gen.fps
        job = client(url).videos.create(model="mm", prompt="a 7 bouncing", seconds=f"{seconds:g}",
                                        extra_body={"seed": 11, "steps": 2})
        done = wait(c, job.id, lambda j: j["status"] in ("completed", "failed"), timeout=120)
        assert done["status"] == "completed" and done["progress"] == 100, done
        mp4 = c.get(f"/v1/videos/{job.id}/content").content
    frames, _, record, fmt = decode_clip(mp4, native=True)  # written enlarged to 64 px; the record says so
    want = gen.generate(1, seed=11, labels="7", frames=6, steps=2)[0]
    assert fmt == "mp4" and frames.shape == want.shape == (6, 16, 16, 1)
    psnr = 10 * np.log10(255**2 / max(np.mean((frames.astype(float) - want) ** 2), 1e-9))
    assert psnr > 28, psnr
    assert record["parameters"]["label"] == "7" and record["parameters"]["steps"] == 2 and record["seed"] == 11
