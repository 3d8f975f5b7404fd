"""`genforge eval RUN --task inpaint|vary|upscale` (evaluation/editing.py, edit_metrics.py): the masks, the metrics
against hand-computed values, the baselines, and the evaluation end to end on tiny runs.

The evaluator is the short one of tests/test_evaluation.py (120 steps on real MNIST subsets of the shared data,
$GENFORGE_SHARED_DATA or ../shared/data), trained once per module into a tmp folder; the runs are 4-step ones on
the bundled mnist-mini, so the figures are only checked for shape, range and repeatability.
"""

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import genforge
from genforge.cli import app
from genforge.data import load_image_dataset
from genforge.edits import area_downsample
from genforge.errors import UserError
from genforge.evaluation import edit_metrics as em
from genforge.evaluation import evaluate_run, train_evaluator
from genforge.evaluation.editing import evaluate_edits
from genforge.training import train
from genforge.training.config import read_raw, validate
from test_evaluation import SHARED_DATA, write_idx
from tiny import tiny_config

METRICS = {"psnr", "psnr_masked", "ssim", "ssim_masked", "fid", "kid", "accuracy"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shared_data(tmp_path_factory):
    """Real MNIST subsets laid out like the shared folder (as test_evaluation.py, smaller)."""
    assert (SHARED_DATA / "mnist").is_dir(), f"shared datasets not found in {SHARED_DATA}"
    out = tmp_path_factory.mktemp("data")
    (out / "mnist").mkdir()
    for split, prefix, count in (("train", "train", 6_000), ("test", "t10k", 1_000)):
        ds = load_image_dataset("mnist", SHARED_DATA, split, download=False)
        write_idx(out / "mnist" / f"{prefix}-images-idx3-ubyte", ds.images[:count, :, :, 0].numpy(), 0x803)
        write_idx(out / "mnist" / f"{prefix}-labels-idx1-ubyte", ds.labels[:count].numpy().astype(np.uint8), 0x801)
    return out


@pytest.fixture(scope="module")
def root(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluators")
    train_evaluator("mnist", shared_data, root=root, max_steps=120, device="cpu")
    return root


def _preset(name: str, **model):
    raw = read_raw(name)
    raw["data"]["dataset"] = "mnist-mini"
    raw["model"].update(width=8, **model)
    raw["train"].update(max_steps=4, epochs=None, budget_minutes=None, batch_size=16, sample_every=1000,
                        checkpoint_every=1000, eval_every=None, mixed_precision="no")
    return validate(raw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("edit-runs")
    return {
        "ddpm": train(_preset("mnist-ddpm"), base / "ddpm", progress=False).run_dir,
        "sr": train(_preset("mnist-sr"), base / "sr", progress=False).run_dir,
        "gan": train(tiny_config(max_steps=2), base / "gan", progress=False).run_dir,
    }


# -- masks ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("side", [28, 32])
def test_masks_cover_their_stated_shares_and_repeat(side):
    assert em.centre_mask(side, side).mean() == 0.25 and em.lower_half_mask(side, side).mean() == 0.5
    centre = em.centre_mask(side, side)
    rows, cols = np.flatnonzero(centre.any(1)), np.flatnonzero(centre.any(0))
    assert rows[0] + rows[-1] == side - 1 and cols[0] + cols[-1] == side - 1  # centred
    assert em.lower_half_mask(side, side)[side // 2:].all() and not em.lower_half_mask(side, side)[: side // 2].any()
    strokes = em.masks_for("strokes", range(300), side, side, seed=0)
    share = strokes.mean(axis=(1, 2))
    assert share.min() >= 0.25 and share.max() <= 0.35, (share.min(), share.max())
    assert len({m.tobytes() for m in strokes}) == 300  # a different mask per image
    again = em.masks_for("strokes", [7, 3], side, side, seed=0)  # per image: whatever else is evaluated
    assert np.array_equal(again[0], strokes[7]) and np.array_equal(again[1], strokes[3])
    assert not np.array_equal(em.masks_for("strokes", [3], side, side, seed=1)[0], strokes[3])
    # strokes are thick: every masked pixel has a masked neighbour on both sides in some direction
    m = np.pad(strokes[0], 1)
    inner = m[1:-1, 1:-1]
    thick = (m[:-2, 1:-1] & m[2:, 1:-1]) | (m[1:-1, :-2] & m[1:-1, 2:])
    assert (thick[inner]).mean() > 0.8
    with pytest.raises(UserError, match="mask kind"):
        em.masks_for("circle", [0], side, side)


# -- metrics ----------------------------------------------------------------------------------------------------------
def test_psnr_matches_hand_computed_values_and_the_mask_counts_only_its_pixels():
    target = np.zeros((2, 16, 16, 1), np.uint8)
    pred = np.full_like(target, 51)  # 0.2 everywhere: MSE 0.04, PSNR 10 log10(25)
    np.testing.assert_allclose(em.psnr(pred, target), 10 * math.log10(25), rtol=1e-6)
    mask = np.zeros((2, 16, 16), bool)
    mask[:, 4:8, 4:12] = True
    wild = np.full_like(target, 255)  # unmasked pixels as wrong as they can be ...
    wild[:, 4:8, 4:12] = 51 // 2  # ... the masked ones off by 25/255: PSNR 20 log10(255/25)
    np.testing.assert_allclose(em.psnr(wild, target, mask), 20 * math.log10(255 / 25), rtol=1e-9)
    assert em.psnr(wild, target).max() < 1.0  # the whole image is nearly all wrong
    full = np.ones((2, 16, 16), bool)
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8) for _ in range(2))
    np.testing.assert_allclose(em.psnr(a, b, full), em.psnr(a, b), rtol=1e-6)  # torchmetrics' whole-image PSNR
    se = ((a.astype(float) - b) / 255) ** 2  # colour: the squared error of every channel counts
    np.testing.assert_allclose(em.psnr(a, b), 10 * np.log10(1 / se.mean(axis=(1, 2, 3))), rtol=1e-6)
    assert list(em.psnr(a, a)) == [em.PSNR_CAP, em.PSNR_CAP]  # identical: the cap, not infinity
    assert np.isnan(em.psnr(a, b, np.zeros((2, 16, 16), bool))).all()
    assert em.mean_of(np.array([1.0, np.nan, 3.0])) == 2.0


def test_ssim_whole_and_masked():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (3, 24, 24, 1), dtype=np.uint8)
    np.testing.assert_allclose(em.ssim(a, a), 1.0, atol=1e-6)
    b = a.copy()
    b[:, 16:] = 255 - b[:, 16:]  # damage the bottom third only
    whole = em.ssim(b, a)
    full = np.ones((3, 24, 24), bool)
    np.testing.assert_allclose(em.ssim(b, a, full), whole, rtol=1e-5)  # the map's mean is the image's SSIM
    top = np.zeros((3, 24, 24), bool)
    top[:, :8] = True  # 8+ rows from the damage: farther than the 11x11 window reaches (5 px)
    bottom = ~top
    bottom[:, :16] = False
    np.testing.assert_allclose(em.ssim(b, a, top), 1.0, atol=1e-5)
    assert (em.ssim(b, a, bottom) < whole).all() and (whole < 0.9).all()


def test_upscaling_baselines_and_consistency():
    images = load_image_dataset("mnist-mini", split="test").images[:20].numpy()
    low = area_downsample(images, 14)
    nearest, bicubic = em.resize(low, 28, 28, "nearest"), em.resize(low, 28, 28, "bicubic")
    assert nearest.shape == bicubic.shape == images.shape
    assert np.array_equal(area_downsample(nearest, 14), low)  # a perfect upscaler for consistency ...
    assert list(em.psnr(area_downsample(nearest, 14), low)) == [em.PSNR_CAP] * 20  # ... scores the cap
    c = em.mean_of(em.psnr(area_downsample(bicubic, 14), low))
    assert 20 < c < 60, c  # bicubic does not keep the block means exactly
    assert em.mean_of(em.psnr(bicubic, images)) > em.mean_of(em.psnr(nearest, images)) - 1


def test_telea_and_mean_fill_keep_the_known_pixels_and_fill_the_hole():
    ramp = np.tile(np.linspace(0, 250, 28).astype(np.uint8)[None, :, None], (28, 1, 1))
    images = np.stack([ramp, np.full_like(ramp, 90)])
    masks = np.stack([em.centre_mask(28, 28)] * 2)
    for out in (em.telea(images, masks), em.mean_fill(images, masks)):
        assert out.shape == images.shape and out.dtype == np.uint8
        assert np.array_equal(out[~masks], images[~masks])
        assert np.abs(out[1].astype(int) - 90).max() <= 3  # a flat image stays flat (Telea: within OpenCV's rounding)
    telea = em.telea(images, masks)
    closer = em.psnr(telea[:1], images[:1], masks[:1])[0] - em.psnr(em.mean_fill(images, masks)[:1], images[:1], masks[:1])[0]
    assert closer > 3, closer  # a smooth ramp is continued, better than by its mean
    filled = em.mean_fill(images, masks)[0]
    assert (filled[masks[0]] == round(float(ramp[~masks[0]].mean()))).all()
    colour = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    cm = em.masks_for("strokes", [0, 1], 32, 32)
    out = em.telea(colour, cm)
    assert out.shape == colour.shape and np.array_equal(out[~cm], colour[~cm])
    assert em.overlay(colour[:, :, :, :1], cm).shape == (2, 32, 32, 3)


# -- the evaluation ---------------------------------------------------------------------------------------------------
def test_cli_inpaint_writes_the_report_and_the_grid(runs, shared_data, root, tmp_path):
    run = runs["ddpm"]
    r = CliRunner().invoke(app, ["eval", str(run), "--task", "inpaint", "--n", "16", "--steps", "2", "--data-dir",
                                 str(shared_data), "--grid", str(tmp_path / "grid.png"), "--no-progress"],
                           env={"GENFORGE_EVALUATORS": str(root)})
    assert r.exit_code == 0, r.output
    report = json.loads((run / "eval-inpaint.json").read_text())
    assert report["task"] == "inpaint" and report["n"] == 16 and report["options"]["steps"] == 2
    assert set(report["results"]) == {"centre", "lower_half", "strokes"}
    for methods in report["results"].values():
        assert set(methods) == {"model", "telea", "mean_fill"}
        for m in methods.values():
            assert set(m) == METRICS and all(np.isfinite(v) for v in m.values())
            assert 0 <= m["accuracy"] <= 1 and 0 < m["psnr_masked"] <= m["psnr"] + 1e-9
    assert set(report["real"]) == {"fid", "kid", "accuracy"}
    assert report["details"]["masks"]["centre"]["mean_fraction"] == 0.25
    assert 0.25 <= report["details"]["masks"]["strokes"]["mean_fraction"] <= 0.35
    assert report["data"]["inputs_seen_in_training"] is True  # mnist-mini trains on the test images
    assert report["grid"]["rows"][:5] == ["centre: mask", "centre: mean_fill", "centre: telea", "centre: model",
                                          "centre: truth"]
    from PIL import Image

    grid = Image.open(tmp_path / "grid.png")
    assert grid.mode == "RGB" and grid.height > grid.width  # 15 rows of 8 examples
    assert "telea" in r.output and "eval-inpaint.json" in r.output
    assert not (run / "eval.json").exists()  # the sample evaluation's report is another file


def test_vary_and_upscale_reports_and_repeatability(runs, shared_data, root):
    common = {"n": 12, "data_dir": shared_data, "evaluator_root": root, "write": False}
    v = evaluate_run(runs["ddpm"], task="vary", sample_options={"steps": 2}, edit={"strengths": [0.25, 1.0]}, **common)
    assert set(v["results"]) == {"strength=0.25", "strength=1"}
    for r in v["results"].values():
        assert set(r["model"]) == {"psnr", "ssim", "fid", "kid", "accuracy"}
    # weaker strength stays closer to the input
    assert v["results"]["strength=0.25"]["model"]["psnr"] > v["results"]["strength=1"]["model"]["psnr"]
    u = evaluate_run(runs["sr"], task="upscale", sample_options={"steps": 2}, **common)
    methods = u["results"]["14->28"]
    assert set(methods) == {"model", "bicubic", "nearest"}
    assert set(methods["model"]) == {"psnr", "ssim", "consistency_psnr", "fid", "kid", "accuracy"}
    assert methods["nearest"]["consistency_psnr"] == em.PSNR_CAP and methods["bicubic"]["consistency_psnr"] < 60
    assert u["options"]["consistent"] is True and methods["model"]["consistency_psnr"] > 35  # DDNM's projection
    # each image has its own seed: the batch size does not change a figure
    model = genforge.load(runs["ddpm"], precision="no")
    a = evaluate_edits(runs["ddpm"], "inpaint", options={"steps": 2}, batch_size=5, model=model, **common)
    b = evaluate_edits(runs["ddpm"], "inpaint", options={"steps": 2}, batch_size=200, model=model, **common)
    assert a["results"] == b["results"]


@pytest.mark.parametrize("case", ["upscale-on-ddpm", "inpaint-on-gan", "option-without-task", "unknown-option"])
def test_cli_mistakes_are_one_clear_line(case, runs, shared_data, root):
    args, expect = {
        "upscale-on-ddpm": (["eval", str(runs["ddpm"]), "--task", "upscale"], "super-resolution"),
        "inpaint-on-gan": (["eval", str(runs["gan"]), "--task", "inpaint"], "GAN"),
        "option-without-task": (["eval", str(runs["ddpm"]), "--option", "jump=3"], "--task"),
        "unknown-option": (["eval", str(runs["ddpm"]), "--task", "inpaint", "--option", "iterations=3"], "jump"),
    }[case]
    r = CliRunner().invoke(app, [*args, "--n", "16", "--data-dir", str(shared_data), "--no-progress"],
                           env={"GENFORGE_EVALUATORS": str(root)})
    assert r.exit_code == 2, r.output
    assert expect in r.output and "Traceback" not in r.output
