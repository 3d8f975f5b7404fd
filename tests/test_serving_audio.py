"""POST /v1/audio/speech: a tiny spectrogram GAN trained on FSDD for two steps, served in process (every format,
every refusal, batching that changes no result, marks and provenance), through the official openai client on a
live server, from a torch-free export, and by a stand-in model in a process where torch cannot be imported."""

import io
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from tiny import tiny_lm_config

import genforge
from genforge.media.audio import decode_audio, quantize16
from genforge.media.audio_mark import AudioMark
from genforge.media.watermark import MarkKey
from genforge.serving.app import ServeSettings, create_app
from genforge.training import train
from genforge.training.config import apply_overrides, read_raw, validate

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not (DATA / "fsdd" / "recordings").is_dir():
    pytest.skip(f"the speech server tests train on FSDD at {DATA}/fsdd", allow_module_level=True)

KEY = "audio-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
MARK = MarkKey(b"0123456789abcdef0123456789abcdef")
NUMBER = "415 555 0199"
# two optimizer steps of the fsdd-specgan preset, narrow, on 64 clips: a real audio run in seconds
TINY_SPEECH = ["train.max_steps=2", "train.budget_minutes=null", "train.batch_size=8", "data.subset=64",
               "model.g_width=8", "model.d_width=8", "train.mixed_precision=no", "train.sample_every=1000",
               "train.checkpoint_every=1000", "train.seed=3"]


def train_tiny_speech(out: Path) -> Path:
    return train(validate(apply_overrides(read_raw("fsdd-specgan"), TINY_SPEECH)), out, data_dir=DATA,
                 progress=False).run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("speech-serve")
    return {"speech": train_tiny_speech(base / "speech"),
            "txt": train(tiny_lm_config(), base / "txt", progress=False).run_dir}


@pytest.fixture(scope="module")
def models(runs):
    out = {name: genforge.load(path, precision="no") for name, path in runs.items()}
    for gen in out.values():
        gen.use_mark_key(False)  # whatever the environment holds: these clips are compared with the library's
    return out


def client(models, **settings) -> TestClient:
    return TestClient(create_app(models, ServeSettings(**{"api_keys": [KEY], **settings})))


def speak(c, **body):
    return c.post("/v1/audio/speech", json={"model": "speech", "input": NUMBER, "seed": 1, **body}, headers=AUTH)


def ints(library_clip: np.ndarray) -> np.ndarray:
    return quantize16(library_clip)


def test_models_list_voices_rate_formats_and_limits(models):
    with client(models, max_batch=16, max_input_chars=200) as c:
        entry = c.get("/v1/models/speech", headers=AUTH).json()["genforge"]
        listed = {m["id"]: m["genforge"]["modality"] for m in c.get("/v1/models", headers=AUTH).json()["data"]}
    assert listed == {"speech": "audio", "txt": "text"}
    assert entry["modality"] == "audio" and entry["family"] == "gan" and entry["sample_rate"] == 8000
    assert entry["voices"] == ["default"]  # the spectrogram GAN is not conditioned on speakers
    assert entry["classes"] == [str(d) for d in range(10)]
    assert entry["response_formats"] == ["wav", "flac", "pcm", "mp3"]
    limits = entry["limits"]
    assert limits["max_digits"] == 16 and limits["max_input_chars"] == 200 and limits["max_audio_calls"] == 4096


@pytest.mark.parametrize("fmt, mime", [("wav", "audio/wav"), ("flac", "audio/flac"), ("pcm", "audio/pcm"),
                                       ("mp3", "audio/mpeg")])
def test_every_format_is_the_library_clip_with_its_provenance(models, fmt, mime):
    want = ints(models["speech"].speak(NUMBER, seed=1, speed=1.25))
    with client(models) as c:
        r = speak(c, response_format=fmt, speed=1.25)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == mime and r.headers["x-sample-rate"] == "8000" and r.headers["x-seed"] == "1"
    if fmt == "pcm":  # raw 16-bit little-endian mono: exactly the library's samples
        assert r.headers["x-sample-format"] == "s16le"
        assert np.array_equal(np.frombuffer(r.content, "<i2"), want)
        return
    samples, rate, found = decode_audio(r.content)
    assert rate == 8000 and samples.ndim == 1
    if fmt == "mp3":  # lossy, and padded by the encoder's delay: same length within a frame, same loudness
        assert abs(len(samples) - len(want)) <= 2304
        assert np.std(samples) == pytest.approx(np.std(want / 32768), rel=0.3)
    else:
        assert np.array_equal(np.round(samples * 32768).astype(np.int16), want)
    assert found["model"] and found["family"] == "gan" and found["seed"] == 1
    assert found["parameters"]["voice"] == "default" and found["parameters"]["digits"] == 10
    assert found.get("mark") in (None, "")  # this server holds no key


def test_voices_speed_and_seed_change_the_clip_as_the_library_does(models):
    with client(models) as c:
        a, b = speak(c, response_format="pcm"), speak(c, response_format="pcm", seed=2)
        slow = speak(c, response_format="pcm", speed=0.5)
        by_object = c.post("/v1/audio/speech", headers=AUTH, json={"model": "speech", "input": NUMBER, "seed": 1,
                                                                   "voice": {"id": "default"}, "response_format": "pcm"})
        words = speak(c, response_format="pcm", input="four one five, five five five, oh one nine nine")
        unseeded = c.post("/v1/audio/speech", headers=AUTH, json={"model": "speech", "input": "7"})
    assert a.content != b.content and by_object.content == a.content
    assert len(slow.content) > 1.5 * len(a.content)  # half speed: twice the digits' length, twice the pauses
    assert words.status_code == 200 and len(words.content) > 0
    assert unseeded.status_code == 200 and int(unseeded.headers["x-seed"]) >= 0  # the seed drawn is reported


@pytest.mark.parametrize("body, param, says", [
    ({"model": "nope"}, "model", "does not exist"),
    ({"model": "txt"}, "model", "/v1/completions"),
    ({"input": "hello"}, "input", "not a digit or a number word"),
    ({"input": "   "}, "input", "no digits"),
    ({"input": "1" * 65}, "input", "65 digits"),
    ({"input": "12345 67890"}, "input", "at most 8 digits"),
    ({"input": "1" + " " * 120}, "input", "at most 100 characters"),
    ({"voice": "alloy"}, "voice", "Its voices: default"),
    ({"voice": {"id": "nova"}}, "voice", "Its voices: default"),
    ({"response_format": "opus"}, "response_format", "wav"),
    ({"speed": 4.5}, "speed", "4"),
    ({"speed": 0.1}, "speed", "0.25"),
    ({"seed": -1}, "seed", "0"),
    ({"instructions": "cheerfully"}, "instructions", "not supported"),
    ({"stream_format": "sse"}, "stream_format", "audio"),
    ({"steps": 4}, "steps", "no options beyond"),
    ({"input": None}, "input", "string"),
])
def test_each_mistake_is_a_4xx_naming_the_field(models, body, param, says):
    with client(models, max_batch=8, max_input_chars=100) as c:
        r = c.post("/v1/audio/speech", json={"model": "speech", "input": "12", **body}, headers=AUTH)
    assert r.status_code == (404 if body.get("model") == "nope" else 400), r.text
    err = r.json()["error"]
    assert err["param"] == param and says in err["message"], err


def test_the_cost_bound_and_the_other_routes_refuse_audio_models(models):
    with client(models, max_audio_calls=4) as c:
        r = speak(c, input="12345")
        assert r.status_code == 400 and r.json()["error"]["code"] == "limit" and "4 per request" in r.text
        assert speak(c, input="1234").status_code == 200
        r = c.post("/v1/images/generations", json={"model": "speech"}, headers=AUTH)
        assert r.status_code == 400 and "/v1/audio/speech" in r.json()["error"]["message"]
        r = c.post("/v1/completions", json={"model": "speech", "prompt": "1"}, headers=AUTH)
        assert r.status_code == 400 and r.json()["error"]["code"] == "wrong_modality"
        assert c.post("/v1/audio/speech", json={"model": "speech", "input": "1"}).status_code == 401  # no key
        doc = c.get("/openapi.json").json()
        ok = doc["paths"]["/v1/audio/speech"]["post"]["responses"]["200"]["content"]
        assert {"audio/wav", "audio/flac", "audio/mpeg", "audio/pcm"} <= set(ok)
        speed = doc["components"]["schemas"]["SpeechRequest"]["properties"]["speed"]
        assert speed["minimum"] == 0.25 and speed["maximum"] == 4.0
        assert 'genforge_generated_audio_seconds_total{model="speech"}' in c.get("/metrics").text


def _concurrently(c, bodies):
    out = [None] * len(bodies)

    def go(i, body):
        out[i] = c.post("/v1/audio/speech", json={"model": "speech", "response_format": "pcm", **body}, headers=AUTH)

    threads = [threading.Thread(target=go, args=(i, b)) for i, b in enumerate(bodies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _batches(metrics_text: str) -> tuple[float, float]:
    count = float(metrics_text.split('genforge_batch_rows_count{model="speech"} ')[1].split()[0])
    rows = float(metrics_text.split('genforge_batch_rows_sum{model="speech"} ')[1].split()[0])
    return count, rows


def test_concurrent_requests_share_one_render_and_get_what_they_would_alone(models):
    bodies = [{"input": NUMBER, "seed": 5}, {"input": "867-5309", "seed": 6, "speed": 1.5}]
    with client(models) as alone:
        expected = [r.content for r in _concurrently(alone, bodies[:1]) + _concurrently(alone, bodies[1:])]
    with client(models, max_wait_ms=1500) as merged:
        got = _concurrently(merged, bodies)
        count, rows = _batches(merged.get("/metrics").text)
    assert all(r.status_code == 200 for r in got)
    assert [r.content for r in got] == expected
    assert count == 1 and rows == 17  # one render of both requests' 10 + 7 digits


def test_marked_and_signed_clips_carry_the_mark_the_record_and_a_manifest(runs, models, tmp_path):
    from genforge.media.provenance import c2pa_read, throwaway_certificate

    pytest.importorskip("c2pa", reason="the provenance extra is installed by the test extra")
    signer = throwaway_certificate()[0]
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(signer.cert_chain)
    key.write_bytes(signer.private_key)
    marked = genforge.load(runs["speech"], precision="no")
    marked.use_mark_key(MARK)
    settings = ServeSettings(sign_cert=str(cert), sign_key=str(key))
    with TestClient(create_app({"speech": marked}, settings)) as c:
        wav = c.post("/v1/audio/speech", json={"model": "speech", "input": NUMBER, "seed": 1})
        flac = c.post("/v1/audio/speech", json={"model": "speech", "input": NUMBER, "seed": 1,
                                                "response_format": "flac"})
    for r in (wav, flac):
        assert r.status_code == 200, r.text
        samples, rate, found = decode_audio(r.content)
        assert found["mark"] == MARK.id and found["seed"] == 1
        assert AudioMark(MARK).detect(samples, rate)["detected"]
        manifest = c2pa_read(r.content)
        assert manifest["state"] == "Valid" and manifest["record"]["seed"] == 1
    with client(models) as c:
        plain = decode_audio(speak(c).content)[0]
    assert not AudioMark(MARK).detect(plain, 8000)["detected"]


def test_an_export_is_served_as_the_run_is(runs, tmp_path):
    """The route asks only for the generator API, so the runtime's audio model (onnxruntime) serves the same
    requests with the same limits and gives the clips its own `speak` gives."""
    from genforge.export import export
    from genforge.runtime.audio import ExportedAudioModel
    from genforge.serving.server import load_models

    assert hasattr(ExportedAudioModel, "speech_job")  # from speaking.Speaking, shared with the torch generator
    out = export(runs["speech"], tmp_path / "ex")
    models = load_models({"ex": str(out)})
    ex = models["ex"]
    ex.use_mark_key(False)
    with TestClient(create_app(models)) as c:
        assert c.get("/v1/models/ex").json()["genforge"]["voices"] == ["default"]
        r = c.post("/v1/audio/speech", json={"model": "ex", "input": NUMBER, "seed": 4, "response_format": "pcm"})
    assert r.status_code == 200, r.text
    assert np.array_equal(np.frombuffer(r.content, "<i2"), ints(ex.speak(NUMBER, seed=4)))
    # and in a process where torch cannot be imported, as `genforge serve EXPORT` runs on a torch-free install
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None
        from fastapi.testclient import TestClient
        from genforge.serving.app import create_app
        from genforge.serving.server import load_models
        models = load_models({{"ex": {str(out)!r}}})
        models["ex"].use_mark_key(False)
        with TestClient(create_app(models)) as c:
            r = c.post("/v1/audio/speech", json={{"model": "ex", "input": {NUMBER!r}, "seed": 4, "response_format": "pcm"}})
        assert r.status_code == 200, r.text
        sys.stdout.write(r.content.hex())
    """)
    alone = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=180)
    assert alone.returncode == 0, alone.stderr
    assert bytes.fromhex(alone.stdout) == r.content


STAND_IN = textwrap.dedent('''
    import sys
    sys.modules["torch"] = None  # `import torch` now fails: the server must not need it
    import numpy as np
    from fastapi.testclient import TestClient
    from genforge.marking import Marking
    from genforge.speaking import Speaking
    from genforge.serving.app import create_app

    class Job:
        def __init__(self, n, options, labels, speaker):
            self.n, self.options, self.labels, self.speaker, self.calls = n, options, labels, speaker, n

    class Tones(Speaking, Marking):
        """The audio generator API in forty lines: each digit a tone, each voice an octave."""
        modality, sample_rate, classes, speakers = "audio", 8000, [str(d) for d in range(10)], ["ann", "bob"]
        meta = {"family": "tones", "name": "tones"}
        renders = 0

        def options(self):
            return {}

        def job(self, n, seed=None, labels=None, speaker=None, **options):
            return Job(n, options, list(labels), self.speaker_index(speaker))

        def run(self, jobs):
            self.renders += 1
            t = np.arange(4000) / 8000
            return [np.stack([0.5 * np.sin(2 * np.pi * (300 + 40 * d) * (1 + j.speaker) * t) for d in j.labels])
                    .astype(np.float32) for j in jobs]

        def speech_job(self, text, speaker=None, speed=1.0, seed=None, **options):
            utterance, labels, speaker = self.speech_labels(text, speaker, seed)
            job = self.job(len(labels), seed, labels, speaker, **options)
            job.utterance, job.speed = utterance, speed
            return job

        def finish_speech(self, job, clips):
            return self.join_speech(job.utterance, clips, job.speed)

    gen = Tones()
    gen.use_mark_key(False)
    with TestClient(create_app({"tones": gen})) as c:
        entry = c.get("/v1/models/tones").json()["genforge"]
        assert entry["voices"] == ["ann", "bob", "default"], entry
        a = c.post("/v1/audio/speech", json={"model": "tones", "input": "12", "voice": "bob", "seed": 1})
        assert a.status_code == 200 and a.headers["content-type"] == "audio/wav", a.text
        b = c.post("/v1/audio/speech", json={"model": "tones", "input": "12", "voice": "carol"})
        assert b.status_code == 400 and "Its voices: ann, bob, default" in b.json()["error"]["message"], b.text
    assert gen.renders == 1
    print("ok", sorted(m for m in sys.modules if m.split(".")[0] == "torch" and sys.modules[m] is not None))
''')


def test_the_route_needs_only_the_generator_api_and_no_torch():
    r = subprocess.run([sys.executable, "-c", STAND_IN], check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok []", r.stdout + r.stderr


# -- the official client against a live server ------------------------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_official_openai_client_reads_a_number_aloud(runs, tmp_path):
    openai = pytest.importorskip("openai")
    sf = pytest.importorskip("soundfile")
    keys = tmp_path / "keys"
    keys.write_text(KEY + "\n")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("GENFORGE_MARK_KEY", "GENFORGE_MARK_KEY_FILE")}
    proc = subprocess.Popen([sys.executable, "-m", "genforge.cli", "serve", f"speech={runs['speech']}",
                             f"txt={runs['txt']}", "--port", str(port), "--api-key-file", str(keys), "--precision",
                             "no", "--log-level", "warning"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
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
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        assert sorted(m.id for m in client.models.list()) == ["speech", "txt"]
        audio = client.audio.speech.create(model="speech", voice="default", input=NUMBER, response_format="wav")
        samples, rate = sf.read(io.BytesIO(audio.content))
        assert rate == 8000 and samples.ndim == 1 and len(samples) > 8000  # ten digits with pauses: over a second
        assert np.abs(samples).max() > 0  # sound, however quiet two training steps make it
        raw = client.audio.speech.with_raw_response.create(model="speech", voice="default", input="7",
                                                           response_format="pcm", speed=2.0)
        assert raw.headers["x-sample-rate"] == "8000" and len(raw.content) % 2 == 0 and len(raw.content) > 0
        with pytest.raises(openai.BadRequestError, match="not a digit"):
            client.audio.speech.create(model="speech", voice="default", input="hello world")
        with pytest.raises(openai.BadRequestError, match="voice"):
            client.audio.speech.create(model="speech", voice="alloy", input="1")
        with pytest.raises(openai.BadRequestError, match="text model"):
            client.audio.speech.create(model="txt", voice="default", input="1")
        with pytest.raises(openai.NotFoundError):
            client.audio.speech.create(model="tts-1", voice="alloy", input="1")
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
