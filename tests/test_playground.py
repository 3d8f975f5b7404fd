"""End to end: the web playground of `genforge serve`, driven in headless Chromium (Playwright).

Trains tiny runs (a conditional GAN, a char GPT, an ABC GPT (music) and, where FSDD is at hand, a spectrogram GAN
of spoken digits), serves them with an API key, then uses the page as a person would: images first, then streamed
text, then a number read aloud into the audio player, then a tune shown as text and piano roll and played. GENFORGE_SCREENSHOT=1 also saves docs/playground.png.
"""

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(f"the playground test needs Chromium at {CHROMIUM} (Debian/Ubuntu: apt-get install chromium)",
                allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from genforge.training import train  # noqa: E402
from genforge.training.config import apply_overrides, read_raw, validate  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from tiny import tiny_config, tiny_lm_config  # noqa: E402

KEY = "sk-playground-test-0123456789"
MARK_KEY = "playground-mark-key-0123456789"  # the server marks what it makes, as a deployment would
N_IMAGES = 4
TIMEOUT_MS = 60_000
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-proxy-server"]
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "playground.png"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # FSDD for the speech model
SPEECH = ["train.max_steps=2", "train.budget_minutes=null", "train.batch_size=8", "data.subset=64", "model.g_width=8",
          "model.d_width=8", "train.mixed_precision=no", "train.sample_every=1000", "train.checkpoint_every=1000"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an http_proxy
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"genforge serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with opener.open(f"{url}/healthz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    pytest.fail(f"genforge serve did not answer {url}/healthz within {timeout:.0f} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("playground")
    image_run, text_run = root / "img", root / "txt"
    train(tiny_config(model={"conditional": True}), image_run, progress=False)  # labels: the class picker shows
    train(tiny_lm_config(), text_run, progress=False)
    served = [f"img={image_run}", f"txt={text_run}"]
    if importlib.util.find_spec("music21"):  # the music extra (part of the test extra)
        from test_serving_music import train_music_run

        served.append(f"folk={train_music_run(root / 'music')}")
    if (DATA / "fsdd" / "recordings").is_dir():
        train(validate(apply_overrides(read_raw("fsdd-specgan"), SPEECH)), root / "speech", data_dir=DATA,
              progress=False)
        served.append(f"speech={root / 'speech'}")
    keyfile = root / "keys.txt"
    keyfile.write_text(f"{KEY}\nsk-another-key-0123456789\n")
    port = free_port()
    log = root / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "genforge.cli", "serve", *served, "--host", "127.0.0.1",
                                 "--port", str(port), "--api-key-file", str(keyfile)], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "GENFORGE_MARK_KEY": MARK_KEY})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def enter_key(page, key):
    page.fill("#api-key", key)


def test_images_then_streamed_text(server, page):
    page.goto(f"{server}/")
    enter_key(page, KEY)
    page.wait_for_selector('#model option[value="img"]', state="attached")
    page.wait_for_selector('#model option[value="txt"]', state="attached")
    expect(page.locator("#error")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('genforge.apiKey')") == KEY
    assert KEY not in page.url

    # images: the form comes from the model's description (a class picker, its options)
    page.select_option("#model", "img")
    expect(page.locator("#image-fields")).to_be_visible()
    expect(page.locator("#text-fields")).to_be_hidden()
    labels = page.eval_on_selector_all("#label option", "os => os.map(o => o.value)")
    assert labels[0] == "" and len(labels) > 2, labels  # "every class in turn", then the classes
    page.select_option("#label", labels[3])
    page.fill("#n", str(N_IMAGES))
    page.fill("#image-seed", "1")
    page.click("#generate")
    page.wait_for_function(
        """n => { const imgs = [...document.querySelectorAll('#images img.sample')];
                  return imgs.length === n && imgs.every(i => i.complete && i.naturalWidth > 0); }""",
        arg=N_IMAGES)
    sizes = page.eval_on_selector_all("#images img.sample", "imgs => imgs.map(i => [i.naturalWidth, i.naturalHeight])")
    assert len(set(map(tuple, sizes))) == 1 and sizes[0][0] >= 28, sizes
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#generate")).to_be_enabled()

    # text, streamed: the page shows each piece as it arrives and counts them on #output[data-chunks]
    page.select_option("#model", "txt")
    expect(page.locator("#text-fields")).to_be_visible()
    expect(page.locator("#image-fields")).to_be_hidden()
    assert page.is_checked("#stream")
    page.fill("#prompt", "ROMEO:\n")
    page.fill("#max_tokens", "60")
    page.fill("#text-seed", "2")
    page.click("#generate")
    page.wait_for_function("['done', 'error', 'stopped'].includes(document.querySelector('#output').dataset.state)")
    expect(page.locator("#error")).to_be_hidden()
    assert page.get_attribute("#output", "data-state") == "done"
    streamed = page.text_content("#output")
    chunks = int(page.get_attribute("#output", "data-chunks"))
    assert streamed and chunks > 1, (chunks, streamed)
    status = page.text_content("#status")
    # the page says what the API's last event says: the text carries the keyed mark
    assert re.search(r"^finish reason: (length|stop) · \d+ prompt \+ \d+ completion tokens · carries the keyed text "
                     r"mark \(key [0-9a-f]+\) · [\d.]+ s$", status), status
    marked = json.loads(page.get_attribute("#output", "data-provenance"))
    assert marked["mark"] and marked["mark_scheme"] == "text-tournament" and marked["seed"] == 2
    expect(page.locator("#generate")).to_be_enabled()
    expect(page.locator("#stop-button")).to_be_disabled()

    # the same without streaming: one answer, same shape on the page
    page.uncheck("#stream")
    page.click("#generate")
    page.wait_for_function("['done', 'error', 'stopped'].includes(document.querySelector('#output').dataset.state)")
    expect(page.locator("#error")).to_be_hidden()
    assert page.text_content("#output") == streamed  # one text per seed, streamed or not
    assert re.search(r"\d+ prompt \+ \d+ completion tokens · carries the keyed text mark", page.text_content("#status"))
    assert json.loads(page.get_attribute("#output", "data-provenance"))["mark"] == marked["mark"]
    page.check("#stream")

    if os.environ.get("GENFORGE_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)


def test_a_number_read_aloud_plays_in_the_audio_player(server, page):
    if not (DATA / "fsdd" / "recordings").is_dir():
        pytest.skip(f"the speech model trains on FSDD at {DATA}/fsdd")
    page.goto(f"{server}/")
    enter_key(page, KEY)
    page.wait_for_selector('#model option[value="speech"]', state="attached")
    page.select_option("#model", "speech")
    # the form comes from the model's entry: a text box, its voices, the formats this browser plays
    expect(page.locator("#audio-fields")).to_be_visible()
    expect(page.locator("#image-fields")).to_be_hidden()
    expect(page.locator("#text-fields")).to_be_hidden()
    assert page.eval_on_selector_all("#voice option", "os => os.map(o => o.value)") == ["default"]
    assert "wav" in page.eval_on_selector_all("#audio-format option", "os => os.map(o => o.value)")
    assert "8000 Hz" in page.text_content("#model-info")

    page.fill("#speech-input", "hello")  # not digits: the server's message, nothing played
    page.click("#generate")
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error")).to_contain_text("not a digit")
    expect(page.locator("#generate")).to_be_enabled()

    page.fill("#speech-input", "415 555 0199")
    page.fill("#speech-seed", "3")
    page.select_option("#audio-format", "wav")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#speech').dataset.state === 'done'")
    expect(page.locator("#error")).to_be_hidden()
    src = page.get_attribute("#player", "src")
    duration = page.evaluate("document.querySelector('#player').duration")
    assert src and src.startswith("blob:") and duration > 1.0, (src, duration)  # ten digits and their pauses
    assert re.search(r"^[\d.]+ s of audio · 8000 Hz · seed 3 · [\d.]+ KiB wav · [\d.]+ s$", page.text_content("#status"))
    assert page.get_attribute("#download", "download") == "speech.wav"


def test_a_tune_shows_its_text_and_piano_roll_and_plays(server, page):
    if not importlib.util.find_spec("music21"):
        pytest.skip("the music model needs the music extra (music21)")
    page.goto(f"{server}/")
    enter_key(page, KEY)
    page.wait_for_selector('#model option[value="folk"]', state="attached")
    page.select_option("#model", "folk")
    # the form comes from the model's entry: modality music, ABC text, an example header prompt
    expect(page.locator("#music-fields")).to_be_visible()
    expect(page.locator("#text-fields")).to_be_hidden()
    assert page.input_value("#music-prompt") == "M:6/8\nK:D"
    assert "music" in page.text_content("#model-info") and "abc" in page.text_content("#model-info")

    page.fill("#music-temperature", "0.5")
    page.fill("#music-max-tokens", "120")
    page.fill("#music-seed", "7")
    page.click("#generate")
    page.wait_for_function("['done', 'error', 'stopped'].includes(document.querySelector('#music').dataset.state)")
    expect(page.locator("#error")).to_be_hidden()
    tune = page.text_content("#tune")
    assert tune.startswith("X:1\nM:6/8\nL:1/8\nK:D\n|") and "\n\n" not in tune, tune  # one whole tune
    width, height = page.evaluate("[document.querySelector('#piano-roll').naturalWidth, "
                                  "document.querySelector('#piano-roll').naturalHeight]")
    assert width > 100 and height > 50, (width, height)
    duration = page.evaluate("document.querySelector('#music-player').duration")
    assert 2 < duration < 30, duration  # four bars of 6/8 and the release
    status = page.text_content("#status")
    assert re.search(r"^[\d.]+ s of music · seed 7 · finish reason: stop · \d+ tokens · [\d.]+ s$", status), status
    assert page.get_attribute("#midi-download", "download") == "tune.mid"
    assert page.get_attribute("#tune-download", "download") == "tune.abc"

    page.fill("#music-prompt", "M:6/8\nK:D\n|: [[[ (((")  # a start that is not music: the text, then the server's 400
    page.click("#generate")
    page.wait_for_function("['done', 'error', 'stopped'].includes(document.querySelector('#music').dataset.state)")
    expect(page.locator("#error")).to_contain_text("does not read as ABC")
    assert page.text_content("#tune").startswith("X:1\nM:6/8\nL:1/8\nK:D\n|: [[[")
    expect(page.locator("#piano-roll")).to_be_hidden()
    expect(page.locator("#generate")).to_be_enabled()


def test_missing_or_wrong_key_asks_for_the_key(server, page):
    page.goto(f"{server}/")
    # no key at all: the model list is refused and the page says what to do
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error")).to_contain_text("API key")

    enter_key(page, KEY)  # the right key lists the models and clears the message
    page.wait_for_selector('#model option[value="img"]', state="attached")
    expect(page.locator("#error")).to_be_hidden()
    page.select_option("#model", "img")
    page.fill("#n", "2")

    enter_key(page, "sk-wrong")  # a wrong one: refused, with the server's message, and nothing generated
    page.click("#generate")
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error")).to_contain_text("API key")
    expect(page.locator("#generate")).to_be_enabled()
    assert page.locator("#images img.sample").count() == 0

    page.reload()  # the key stays for this tab (sessionStorage), never in the URL
    assert page.input_value("#api-key") == "sk-wrong"
    assert "sk-wrong" not in page.url
