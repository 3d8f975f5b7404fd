"""`genforge edit`, `genforge vary` and `genforge upscale` end to end on tiny runs: both mask conventions give the
same file, the input's own transparency is a mask, a wrong-size input is converted with a note, the kept region
comes back exactly, strength 0 returns the input, upscale reports bicubic beside the model, GANs are refused in
one line, exports edit without torch, and an edited file carries the mark and says it was edited."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from genforge.cli import app
from genforge.data.loading import load_image_dataset
from genforge.export import export
from genforge.media.provenance import EDITED_SOURCE_TYPE
from genforge.media.watermark import MarkKey
from genforge.training import train, validate
from tiny import tiny_config

runner = CliRunner()
KEY = MarkKey(b"0123456789abcdef0123456789abcdef")
FAST = ["--no-progress", "--seed", "1"]


def _config(family, model):
    cfg = tiny_config(max_steps=3).model_dump()
    cfg["family"], cfg["model"] = family, model
    cfg["train"].update(lr=2e-3, beta1=0.9, sample_every=1000, checkpoint_every=1000)
    return validate(cfg)


RUNS = {
    "ddpm": ("diffusion", {"width": 8, "timesteps": 50, "steps": 4, "objective": "eps"}),
    "sr": ("diffusion", {"width": 8, "steps": 4, "objective": "flow", "upscale_from": 14}),
    "vae": ("vae", {"latent_dim": 4, "width": 8, "hidden": 32}),
    "gan": ("gan", {"z_dim": 8, "g_width": 8, "d_width": 8}),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli-edit-runs")
    return {name: train(_config(*spec), base / name, progress=False).run_dir for name, spec in RUNS.items()}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A digit (PNG), OpenAI's alpha mask and the equivalent black-and-white mask (lower half edited), the digit
    with its lower half transparent, the digit at 56x56 in colour (JPEG) and at 14x14 (a low-resolution input)."""
    d = tmp_path_factory.mktemp("cli-edit-files")
    digit = load_image_dataset("mnist-mini").images[0].numpy()[..., 0]
    Image.fromarray(digit).save(d / "digit.png")
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = digit[..., None], 255
    rgba[14:, :, 3] = 0
    Image.fromarray(rgba).save(d / "alpha.png")
    Image.fromarray(rgba).save(d / "holes.png")
    bw = np.zeros((28, 28), np.uint8)
    bw[14:] = 255
    Image.fromarray(bw).save(d / "bw.png")
    Image.fromarray(np.repeat(digit[..., None], 3, -1)).resize((56, 56)).save(d / "big.jpg", quality=95)
    Image.fromarray(digit).resize((14, 14), Image.Resampling.BOX).save(d / "low.png")
    return {p.stem: p for p in d.iterdir()} | {"digit_pixels": digit}


@pytest.fixture(autouse=True)
def no_env_key(monkeypatch):
    monkeypatch.delenv("GENFORGE_MARK_KEY", raising=False)
    monkeypatch.delenv("GENFORGE_MARK_KEY_FILE", raising=False)


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def shell(*args):
    """The real command (python -m genforge.cli): warnings shown as notes, errors as one line."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("GENFORGE_MARK_KEY", None)
    env.pop("GENFORGE_MARK_KEY_FILE", None)
    return subprocess.run([sys.executable, "-m", "genforge.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env)


def pixels(path):
    return np.asarray(Image.open(path))


def test_alpha_and_bw_masks_give_the_same_file_and_keep_the_known_pixels(runs, files, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    plain = ["--no-mark", "--no-metadata", *FAST]
    cli("edit", runs["ddpm"], "--in", files["digit"], "--mask", files["alpha"], "--out", a, *plain)
    cli("edit", runs["ddpm"], "--in", files["digit"], "--mask", files["bw"], "--bw-mask", "--out", b, *plain)
    assert a.read_bytes() == b.read_bytes()
    out = pixels(a)
    assert out.shape == (28, 28)  # one result: the image itself, not a grid of one
    assert (out[:14] == files["digit_pixels"][:14]).all()  # the kept half, exactly
    assert (out[14:] != files["digit_pixels"][14:]).mean() > 0.3  # the edited half was filled


def test_the_inputs_own_transparency_is_the_mask(runs, files, tmp_path):
    cli("edit", runs["ddpm"], "--in", files["digit"], "--mask", files["alpha"], "--out", tmp_path / "m.png",
        "--no-mark", *FAST)
    cli("edit", runs["ddpm"], "--in", files["holes"], "--out", tmp_path / "own.png", "--no-mark", *FAST)
    assert np.array_equal(pixels(tmp_path / "m.png"), pixels(tmp_path / "own.png"))
    p = shell("edit", runs["ddpm"], "--in", files["digit"], "--out", tmp_path / "x.png")
    assert p.returncode == 2 and "needs a mask" in p.stderr and "Traceback" not in p.stderr
    p = shell("edit", runs["ddpm"], "--in", files["digit"], "--mask", files["bw"], "--out", tmp_path / "x.png")
    assert p.returncode == 2 and "--bw-mask" in p.stderr  # a black-and-white mask read as an alpha mask


def test_a_wrong_size_input_is_converted_with_a_one_line_notice(runs, files, tmp_path):
    out = tmp_path / "big.png"
    p = shell("edit", runs["ddpm"], "--in", files["big"], "--mask", files["alpha"], "--out", out, "--no-mark",
              *FAST)
    assert p.returncode == 0, p.stderr
    notes = [line for line in p.stderr.splitlines() if line.startswith("note: converted")]
    assert len(notes) == 1 and "56x56 -> 28x28" in notes[0] and "3 -> 1 channels" in notes[0]
    assert pixels(out).shape == (28, 28)


def test_a_gan_run_is_refused_in_one_line(runs, files, tmp_path):
    for command in (["edit", "--mask", files["alpha"]], ["vary"]):
        p = shell(command[0], runs["gan"], "--in", files["digit"], *command[1:], "--out", tmp_path / "g.png")
        assert p.returncode == 2, p.stderr
        assert p.stderr.startswith("error:") and "GAN" in p.stderr and len(p.stderr.strip().splitlines()) == 1
        assert "Traceback" not in p.stderr + p.stdout
    p = shell("upscale", runs["ddpm"], "--in", files["low"], "--out", tmp_path / "u.png")
    assert p.returncode == 2 and "super-resolution" in p.stderr and "Traceback" not in p.stderr


def test_options_of_another_family_are_named(runs, files, tmp_path):
    result = runner.invoke(app, ["edit", str(runs["vae"]), "--in", str(files["digit"]), "--mask", str(files["alpha"]),
                                 "--out", str(tmp_path / "v.png"), "--jump", "3"])
    assert result.exit_code == 2 and "--jump" in result.output and "--iterations" in result.output


def test_vae_completion_n_results_to_a_folder_and_a_before_after_grid(runs, files, tmp_path):
    folder, grid = tmp_path / "each", tmp_path / "grid.png"
    result = cli("edit", runs["vae"], "--in", files["digit"], "--mask", files["alpha"], "--out", f"{folder}/",
                 "--n", "3", "--iterations", "3", "--grid", grid, "--no-mark", *FAST)
    written = sorted(folder.glob("*.png"))
    assert len(written) == 3 and "input | mask" in result.output
    for f in written:
        assert (pixels(f)[:14] == files["digit_pixels"][:14]).all()
    tile = (28 + 2) * 3  # five 28 px tiles, 2 px apart, enlarged 3x; the mask overlay makes it colour
    assert Image.open(grid).size == (5 * tile + 6, tile + 6) and Image.open(grid).mode == "RGB"


@pytest.mark.parametrize("run", ["ddpm", "vae"])
def test_vary_at_strength_zero_returns_the_input(runs, files, tmp_path, run):
    out = tmp_path / "v.png"
    cli("vary", runs[run], "--in", files["digit"], "--strength", "0", "--out", out, "--no-mark", *FAST)
    assert np.array_equal(pixels(out), files["digit_pixels"])
    grid = tmp_path / "vg.png"
    cli("vary", runs[run], "--in", files["digit"], "--strength", "0.5", "--n", "2", "--out", tmp_path / "v2.npy",
        "--grid", grid, "--no-mark", *FAST)
    assert np.load(tmp_path / "v2.npy").shape == (2, 28, 28, 1) and grid.is_file()


def test_upscale_reports_the_bicubic_baseline_and_writes_the_comparison(runs, files, tmp_path):
    out, grid = tmp_path / "up.png", tmp_path / "cmp.png"
    result = cli("upscale", runs["sr"], "--in", files["low"], "--out", out, "--grid", grid, "--no-mark", *FAST)
    line = next(s for s in result.output.splitlines() if s.startswith("consistency PSNR"))
    assert "model" in line and "bicubic" in line and line.count("dB") == 2
    assert pixels(out).shape == (28, 28)
    tile = (28 + 2) * 3
    assert Image.open(grid).size == (3 * tile + 6, tile + 6)  # input (nearest) | bicubic | model
    # a full-size input: its area-averaged version is upscaled, with a note
    p = shell("upscale", runs["sr"], "--in", files["digit"], "--out", tmp_path / "full.png", "--no-mark", *FAST)
    assert p.returncode == 0 and "area-averaged" in p.stderr and "bicubic" in p.stdout


def test_an_export_edits_without_torch(runs, files, tmp_path):
    exported = export(runs["ddpm"], tmp_path / "ddpm-export")
    out = tmp_path / "x.png"
    cli("edit", exported, "--in", files["digit"], "--mask", files["alpha"], "--out", out, "--no-mark", *FAST)
    assert (pixels(out)[:14] == files["digit_pixels"][:14]).all()
    result = runner.invoke(app, ["vary", str(exported), "--in", str(files["digit"]), "--out", str(out),
                                 "--select", "best"])
    assert result.exit_code == 2 and "export" in result.output


def test_an_edited_file_is_marked_and_says_it_is_an_edit(runs, files, tmp_path):
    key = tmp_path / "mark.key"
    key.write_text(KEY.secret.decode())
    out = tmp_path / "marked.png"
    cli("edit", runs["ddpm"], "--in", files["digit"], "--mask", files["alpha"], "--out", out, "--mark-key", key,
        *FAST)
    found = runner.invoke(app, ["verify", str(out), "--key", str(key), "--json"])
    report = json.loads(found.output)
    assert found.exit_code == 0 and report["marks"][0]["detected"], report
    assert report["metadata"]["digital_source_type"] == EDITED_SOURCE_TYPE
    assert report["metadata"]["parameters"]["task"] == "inpaint" and report["metadata"]["mark"] == KEY.id
    import hashlib

    digest = hashlib.sha256(files["digit"].read_bytes()).hexdigest()
    assert report["edit_of"] == [{"title": "digit.png", "sha256": digest}]
    text = runner.invoke(app, ["verify", str(out)]).output
    assert f"an edit of: digit.png (SHA-256 {digest})" in text
