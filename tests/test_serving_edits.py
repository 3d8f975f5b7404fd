"""/v1/images/edits and /v1/images/variations: the official openai client against a real server on loopback
(inpainting with both mask conventions and with the image's own transparency, variations, upscaling through
edits), the known pixels kept through the API, reproducibility by seed, every mistake a 4xx naming the fix, an
export served by the torch-free runtime, and the playground's edit panel painted with the mouse in Chromium."""

import base64
import hashlib
import io
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

import genforge
from genforge.media import decode
from genforge.media.provenance import parse_xmp
from genforge.serving.app import ServeSettings, create_app
from genforge.training import train
from genforge.training.config import apply_overrides, read_raw, validate
from tiny import tiny_config

openai = pytest.importorskip("openai")

KEY = "edits-key-0123456789abcdef"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--no-proxy-server"]
TINY = ["data.dataset=mnist-mini", "train.max_steps=4", "train.batch_size=16", "train.mixed_precision=no",
        "train.budget_minutes=null", "train.sample_every=1000", "train.checkpoint_every=1000", "model.width=8"]
FAST = {"steps": 2}  # two sampler steps: the edits' paths, not their quality


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_run(preset: str, out: Path, *extra: str) -> Path:
    return train(validate(apply_overrides(read_raw(preset), [*TINY, *extra])), out, progress=False).run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A class-conditional diffusion run (inpaint, vary), a super-resolution one (upscale), a VAE and a GAN."""
    base = tmp_path_factory.mktemp("edits")
    return {"dif": tiny_run("mnist-cddpm", base / "dif"), "sr": tiny_run("mnist-sr", base / "sr"),
            "vae": tiny_run("mnist-vae", base / "vae", "model.hidden=32"),
            "gan": train(tiny_config(), base / "gan", progress=False).run_dir}


@pytest.fixture(scope="module")
def models(runs):
    return {name: genforge.load(path, precision="no") for name, path in runs.items()}


@contextmanager
def live(models: dict, **settings):
    """A real server on loopback in a thread, without marks (so known pixels can be compared exactly)."""
    app = create_app(models, ServeSettings(**{"api_keys": [KEY], "mark": False, **settings}))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def url(models):
    with live(models, max_batch=8, max_image_calls=400) as u:
        yield u


def client(url: str):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)


def http(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, trust_env=False, timeout=60)


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels).save(buf, "PNG")
    return buf.getvalue()


def pixels(b64: str) -> np.ndarray:
    return decode(base64.b64decode(b64))[0]


@pytest.fixture(scope="module")
def digit(models):
    """A 28x28 grey image to edit, and a mask (True: edit) over its middle."""
    image = models["vae"].generate(1, seed=4)[0]
    mask = np.zeros((28, 28), bool)
    mask[8:20, 6:22] = True
    return image, mask


def alpha_mask(mask: np.ndarray) -> bytes:
    """OpenAI's convention: transparent where to edit."""
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[..., 3] = np.where(mask, 0, 255)
    return png(rgba)


def test_models_list_their_edits_for_the_playground(url):
    with http(url) as c:
        info = {m["id"]: m["genforge"] for m in c.get("/v1/models").json()["data"]}
    assert set(info["dif"]["edits"]) == {"inpaint", "vary"}
    assert {"jump", "resample", "steps", "sampler"} <= set(info["dif"]["edits"]["inpaint"])
    assert info["dif"]["edits"]["vary"]["strength"]["type"] == "float"
    assert set(info["sr"]["edits"]) == {"upscale"}
    assert "iterations" in info["vae"]["edits"]["inpaint"]
    assert info["gan"]["edits"] == {}


def test_inpainting_through_the_openai_client_keeps_the_known_pixels(url, digit, tmp_path):
    image, mask = digit
    (tmp_path / "digit.png").write_bytes(png(image))
    (tmp_path / "mask.png").write_bytes(alpha_mask(mask))
    with open(tmp_path / "digit.png", "rb") as f, open(tmp_path / "mask.png", "rb") as m:
        resp = client(url).images.edit(model="dif", image=f, mask=m, prompt="", n=2, size="28x28",
                                       response_format="b64_json", extra_body={"seed": 5, **FAST})
    outs = [pixels(d.b64_json) for d in resp.data]
    assert len(outs) == 2 and all(o.shape == (28, 28, 1) for o in outs)
    for out in outs:
        assert (out[~mask] == image[~mask]).all()  # the known region, exactly (no mark key on this server)
        assert (out[mask] != image[mask]).any()
    assert not (outs[0] == outs[1]).all()  # two draws, not one twice
    record = parse_xmp(decode(base64.b64decode(resp.data[1].b64_json))[1])
    assert record["seed"] == 5 and record["parameters"]["task"] == "inpaint"
    assert record["parameters"]["steps"] == 2 and record["parameters"]["index"] == 1
    assert record["action"] == "edited"  # not created: an edit of the uploaded file, named by its hash
    assert record["ingredients"] == [{"title": "digit.png", "sha256": hashlib.sha256(png(image)).hexdigest(),
                                      "format": "image/png"}]


def test_a_signing_server_signs_edits_as_c2pa_edited_with_the_source(models, digit, tmp_path):
    pytest.importorskip("c2pa", reason="the provenance extra is installed by the test extra")
    from genforge.media.provenance import c2pa_read, throwaway_certificate

    signer = throwaway_certificate()[0]
    (tmp_path / "cert.pem").write_bytes(signer.cert_chain)
    (tmp_path / "key.pem").write_bytes(signer.private_key)
    image, mask = digit
    settings = ServeSettings(mark=False, sign_cert=str(tmp_path / "cert.pem"), sign_key=str(tmp_path / "key.pem"))
    with TestClient(create_app({"vae": models["vae"]}, settings)) as c:
        r = c.post("/v1/images/edits", data={"model": "vae", "iterations": "2"},
                   files={"image": ("photo.png", png(image), "image/png"),
                          "mask": ("m.png", alpha_mask(mask), "image/png")})
    assert r.status_code == 200, r.text
    found = c2pa_read(base64.b64decode(r.json()["data"][0]["b64_json"]))
    assert found["state"] == "Valid" and found["action"] == "edited"
    assert [(i["title"], i["sha256"]) for i in found["ingredients"]] == [("photo.png",
                                                                          hashlib.sha256(png(image)).hexdigest())]


def test_several_images_are_edited_each_with_the_one_mask(url, digit):
    image, mask = digit
    other = 255 - image
    resp = client(url).images.edit(model="dif", image=[("a.png", png(image)), ("b.png", png(other))],
                                   mask=("m.png", alpha_mask(mask)), prompt="", n=2, response_format="b64_json",
                                   extra_body={"seed": 1, **FAST})  # the client sends OpenAI's array, image[]
    outs = [pixels(d.b64_json) for d in resp.data]
    assert len(outs) == 4  # n per image, image-major
    for out, source in zip(outs, [image, image, other, other]):
        assert (out[~mask] == source[~mask]).all()


def test_both_mask_conventions_and_the_images_own_transparency_edit_alike(url, digit):
    image, mask = digit
    white = png(np.where(mask, 255, 0).astype(np.uint8))
    see_through = np.concatenate([np.repeat(image, 3, -1), np.where(mask, 0, 255)[..., None]], -1).astype(np.uint8)
    c = client(url)
    common = dict(model="dif", prompt="", response_format="b64_json")
    seed = {"seed": 11, **FAST}
    alpha = c.images.edit(image=("d.png", png(image)), mask=("m.png", alpha_mask(mask)), extra_body=seed, **common)
    bw = c.images.edit(image=("d.png", png(image)), mask=("m.png", white), extra_body={**seed, "mask_kind": "white"},
                       **common)
    own = c.images.edit(image=("d.png", png(see_through)), extra_body=seed, **common)
    a, b, o = (pixels(r.data[0].b64_json) for r in (alpha, bw, own))
    assert (a == b).all() and (a == o).all()
    assert (a[mask] != image[mask]).any()


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the client marks create_variation so
def test_variations_are_reproducible_by_seed(url, digit):
    image, _ = digit
    c = client(url)

    def vary(seed):
        r = c.images.create_variation(model="dif", image=("d.png", png(image)), n=2, response_format="b64_json",
                                      extra_body={"seed": seed, "strength": 0.5, **FAST})
        return np.stack([pixels(d.b64_json) for d in r.data])

    first, again, other = vary(1), vary(1), vary(2)
    assert first.shape == (2, 28, 28, 1)
    assert (first == again).all() and not (first == other).all()
    with http(url) as h:  # the VAE varies too, around the image's posterior
        r = h.post("/v1/images/variations", data={"model": "vae", "seed": "3", "strength": "0.2"},
                   files={"image": ("d.png", png(image), "image/png")})
    assert r.status_code == 200, r.text
    assert r.json()["task"] == "vary" and r.json()["seed"] == 3


def test_a_super_resolution_model_upscales_through_edits(url, digit):
    image, _ = digit
    small = np.asarray(Image.fromarray(image[..., 0]).resize((14, 14), Image.Resampling.BOX))[..., None]
    resp = client(url).images.edit(model="sr", image=("small.png", png(small)), prompt="", response_format="b64_json",
                                   extra_body={"seed": 2, **FAST})
    assert pixels(resp.data[0].b64_json).shape == (28, 28, 1)
    with http(url) as c:  # a full-size image: upscaled from its 14x14 version, and the response says so
        r = c.post("/v1/images/edits", data={"model": "sr", "steps": "2", "consistent": "false"},
                   files={"image": ("big.png", png(image), "image/png")})
    assert r.status_code == 200, r.text
    assert r.json()["task"] == "upscale" and any("14x14" in notice for notice in r.json()["notices"])


def test_metrics_count_the_edited_images(url, digit):
    image, mask = digit

    def count():
        with http(url) as c:
            line = next((x for x in c.get("/metrics").text.splitlines()
                         if x.startswith('genforge_generated_images_total{model="vae"}')), "x 0")
        return float(line.split()[-1])

    before = count()
    with http(url) as c:
        r = c.post("/v1/images/edits", data={"model": "vae", "n": "3", "iterations": "2"},
                   files={"image": ("d.png", png(image), "image/png"), "mask": ("m.png", alpha_mask(mask), "image/png")})
    assert r.status_code == 200, r.text
    assert count() == before + 3


GOOD = object()  # the digit's PNG


@pytest.mark.parametrize("path, fields, files, status, param, says", [
    ("edits", {"model": "gan"}, {}, 400, "model", "GAN"),
    ("variations", {"model": "gan"}, {}, 400, "model", "GAN"),
    ("variations", {"model": "sr"}, {}, 400, "model", "/v1/images/edits"),
    ("edits", {"model": "nope"}, {}, 404, "model", "Models here"),
    ("edits", {"model": "dif"}, {"image": b"not a picture"}, 400, "image", "PNG, JPEG or WebP"),
    ("edits", {"model": "dif"}, {"mask": "small"}, 400, "mask", "same size"),
    ("edits", {"model": "dif"}, {"mask": None}, 400, "mask", "mask_kind=white"),
    ("edits", {"model": "dif"}, {"mask": "opaque"}, 400, "mask", "no alpha channel"),
    ("edits", {"model": "dif", "mask_kind": "white"}, {"mask": None}, 400, "mask_kind", "send the mask"),
    ("edits", {"model": "sr"}, {}, 400, "mask", "omit mask"),
    ("edits", {"model": "dif", "n": "9"}, {}, 400, "n", "at most 8"),
    ("edits", {"model": "dif", "n": "0"}, {}, 400, "n", "greater than or equal to 1"),
    ("edits", {"model": "dif", "bogus": "1"}, {}, 400, "bogus", "its inpaint options"),
    ("variations", {"model": "dif", "jump": "2"}, {}, 400, "jump", "its vary options"),
    ("edits", {"model": "dif", "steps": "two"}, {}, 400, "steps", "whole number"),
    ("edits", {"model": "dif", "steps": "500"}, {}, 400, "n", "fewer steps"),
    ("variations", {"model": "dif", "strength": "2"}, {}, 400, "strength", "out of range"),
    ("edits", {"model": "dif", "size": "64x64"}, {}, 400, "size", "28x28"),
    ("edits", {"model": "dif", "response_format": "url"}, {}, 400, "response_format", "b64_json"),
    ("edits", {"model": "dif", "prompt": "a cat"}, {}, 400, "prompt", "class name"),
    ("edits", {"model": "vae", "label": "3"}, {}, 400, "label", "not class-conditional"),
    ("edits", {}, {}, 400, "model", "model"),
    ("edits", {"model": "dif"}, {"image": None}, 400, "image", "image"),
])
def test_every_mistake_is_a_4xx_that_names_the_fix(url, digit, path, fields, files, status, param, says):
    image, mask = digit
    masks = {"small": alpha_mask(mask[:14, :14]), "opaque": png(np.full((28, 28), 255, np.uint8))}
    upload = {"image": png(image), "mask": alpha_mask(mask), **{k: masks.get(v, v) for k, v in files.items()}}
    if path == "variations":
        upload.pop("mask")
    sent = {name: (f"{name}.png", data, "image/png") for name, data in upload.items() if data is not None}
    with http(url) as c:
        fast = FAST if fields.get("model") in ("dif", "sr") else {}
        r = c.post(f"/v1/images/{path}", data={**fast, **fields}, files=sent)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and says in error["message"], error


def test_the_openai_client_sees_a_bad_request_for_a_model_that_cannot_edit(url, digit):
    with pytest.raises(openai.BadRequestError, match="GAN"):
        client(url).images.edit(model="gan", image=("d.png", png(digit[0])), prompt="")


def test_an_export_edits_through_the_torch_free_runtime(runs, models, digit, tmp_path):
    from genforge.export import export
    from genforge.runtime import load as load_export

    exported = load_export(export(runs["dif"], tmp_path / "dif-export"))
    if not getattr(exported, "edit_tasks", None) or not exported.edit_tasks():
        pytest.skip("this export's runtime has no edits yet")
    image, mask = digit
    with live({"run": models["dif"], "export": exported}) as u, http(u) as c:
        info = {m["id"]: m["genforge"] for m in c.get("/v1/models").json()["data"]}
        assert info["export"]["edits"] == info["run"]["edits"]
        outs = []
        for name in ("run", "export", "export"):  # (the runtime draws its noise with numpy: images of its own)
            r = c.post("/v1/images/edits", data={"model": name, "seed": "9", "n": "2", **FAST},
                       files={"image": ("d.png", png(image), "image/png"),
                              "mask": ("m.png", alpha_mask(mask), "image/png")})
            assert r.status_code == 200, r.text
            outs.append(np.stack([pixels(d["b64_json"]) for d in r.json()["data"]]))
            assert outs[-1].shape == (2, 28, 28, 1) and (outs[-1][:, ~mask] == image[~mask]).all()
            assert (outs[-1][:, mask] != image[mask]).any()
        assert (outs[1] == outs[2]).all()  # reproducible by seed
        r = c.post("/v1/images/variations", data={"model": "export", "seed": "1", "strength": "0.4", **FAST},
                   files={"image": ("d.png", png(image), "image/png")})
        assert r.status_code == 200 and r.json()["task"] == "vary", r.text


# Chromium does not show a test the body of a request with files, so the page's multipart forms are copied as they
# are sent: {url, fields: {name: [is a file, text or base64 bytes]}}
RECORD_FORMS = """
window.sentForms = [];
const send = window.fetch;
window.fetch = async (input, init) => {
  if (init && init.body instanceof FormData) {
    const fields = {};
    for (const [name, value] of init.body.entries()) {
      if (value instanceof Blob) {
        const bytes = new Uint8Array(await value.arrayBuffer());
        fields[name] = [true, btoa(Array.from(bytes, (b) => String.fromCharCode(b)).join(""))];
      } else fields[name] = [false, value];
    }
    window.sentForms.push({url: String(input), fields});
  }
  return send(input, init);
};
"""


def sent_forms(page) -> list[dict]:
    return [{"url": form["url"], **{name: base64.b64decode(value) if is_file else value
                                    for name, (is_file, value) in form["fields"].items()}}
            for form in page.evaluate("window.sentForms")]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"the playground test needs Chromium at {CHROMIUM}")
def test_the_playground_paints_a_mask_and_shows_the_inpainting(url, digit, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    image, _ = digit
    (tmp_path / "digit.png").write_bytes(png(image))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.add_init_script(RECORD_FORMS)
        page.set_default_timeout(60_000)
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(f"{url}/")
        page.fill("#api-key", KEY)
        page.wait_for_selector('#model option[value="dif"]', state="attached")
        page.select_option("#model", "dif")
        expect(page.locator("#edit-fields")).to_be_visible()
        tasks = page.eval_on_selector_all("#edit-task option", "os => os.map(o => o.value)")
        assert tasks == ["", "inpaint", "vary"], tasks  # from the model's `edits`
        page.select_option("#edit-task", "inpaint")
        expect(page.locator("#image-fields")).to_be_hidden()
        expect(page.locator("#edit-opt-jump")).to_be_visible()  # the edit's own options, as form controls
        page.set_input_files("#edit-image", str(tmp_path / "digit.png"))
        canvas = page.locator("#edit-canvas")
        expect(canvas).to_be_visible()
        box = canvas.bounding_box()
        assert box["width"] >= 200  # enlarged from 28 px
        # paint three strokes across the middle with the mouse: rows 0.4..0.6, columns 0.3..0.7 of the image
        for row in (0.4, 0.5, 0.6):
            page.mouse.move(box["x"] + 0.3 * box["width"], box["y"] + row * box["height"])
            page.mouse.down()
            page.mouse.move(box["x"] + 0.7 * box["width"], box["y"] + row * box["height"], steps=10)
            page.mouse.up()
        assert int(canvas.get_attribute("data-painted")) > 40
        page.fill("#edit-opt-steps", "2")
        page.fill("#edit-n", "2")
        page.fill("#edit-seed", "3")
        page.click("#generate")
        page.wait_for_function("""() => { const imgs = [...document.querySelectorAll('#edit-results img.sample')];
                                          return imgs.length === 2 && imgs.every(i => i.complete && i.naturalWidth); }""")
        expect(page.locator("#error")).to_be_hidden()
        assert "inpaint" in page.text_content("#status") and "seed 3" in page.text_content("#status")
        sources = page.eval_on_selector_all("#edit-results img.sample", "imgs => imgs.map(i => i.src)")
        (parts,) = sent_forms(page)
        browser.close()
    assert not errors, errors
    assert parts["url"] == "/v1/images/edits" and parts["model"] == "dif" and parts["image"] == png(image)
    assert parts["steps"] == "2" and parts["n"] == "2" and parts["seed"] == "3"
    mask_rgba = np.asarray(Image.open(io.BytesIO(parts["mask"])).convert("RGBA"))
    edit = mask_rgba[..., 3] < 128  # transparent where painted
    rows, cols = np.nonzero(edit)
    assert edit.sum() > 40 and 7 <= rows.min() and rows.max() <= 20 and 5 <= cols.min() and cols.max() <= 22
    assert not edit[:5].any() and not edit[-5:].any()
    for src in sources:  # the results differ from the input only where the mask was painted
        out = pixels(src.split(",", 1)[1])
        assert (out[~edit] == image[~edit]).all() and (out[edit] != image[edit]).any()
