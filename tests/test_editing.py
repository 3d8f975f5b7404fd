"""Image editing in the library: RePaint inpainting, SDEdit variations, super-resolution and the VAE's completion,
through `genforge.load` and through an export's torch-free runtime (parity on the same drawn inputs)."""

import warnings

import numpy as np
import pytest
import torch

import genforge
from genforge import edits
from genforge.diffusion import editing, make_schedule
from genforge.errors import UserError
from genforge.export import export
from genforge.media.masks import read_mask
from genforge.runtime import load as load_export
from genforge.training import train, validate
from tiny import tiny_config

SAMPLERS = ("unipc", "dpmpp2m", "ddim", "ddpm")


def _config(family, model, dataset="mnist-mini"):
    cfg = tiny_config(max_steps=3).model_dump()
    cfg["family"], cfg["model"] = family, model
    cfg["data"]["dataset"] = dataset
    cfg["train"].update(lr=2e-3, beta1=0.9, sample_every=1000, checkpoint_every=1000)
    return validate(cfg)


RUNS = {
    "ddpm": ("diffusion", {"width": 8, "timesteps": 50, "steps": 4, "objective": "eps"}),
    "flow": ("diffusion", {"width": 8, "steps": 4, "objective": "flow"}),
    "cflow": ("diffusion", {"width": 8, "steps": 4, "objective": "flow", "conditional": True, "guidance": 2.0}),
    "sr": ("diffusion", {"width": 8, "steps": 4, "objective": "flow", "upscale_from": 14}),
    "vae": ("vae", {"latent_dim": 4, "width": 8, "hidden": 32}),
    "gan": ("gan", {"z_dim": 8, "g_width": 8, "d_width": 8}),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("edit-runs")
    return {name: train(_config(*spec), base / name, progress=False).run_dir for name, spec in RUNS.items()}


def _load(run):
    gen = genforge.load(run, precision="no")
    gen.use_mark_key(False)
    return gen


@pytest.fixture(scope="module")
def digits():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    mask = np.zeros((28, 28), bool)
    mask[14:] = True  # the lower half is edited
    return images, mask


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_inpainting_keeps_the_known_pixels_exactly_and_fills_the_rest(runs, digits, sampler):
    gen, (images, mask) = _load(runs["ddpm"]), digits
    out = gen.inpaint(images, mask, seed=1, sampler=sampler, steps=6, jump=2, resample=2)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert (out[:, :14] == images[:, :14]).all()
    assert (out[:, 14:] != images[:, 14:]).mean() > 0.5


def test_the_vae_completion_keeps_the_known_pixels(runs, digits):
    images, mask = digits
    out = _load(runs["vae"]).inpaint(images, mask, n=2, seed=0, iterations=5)
    assert out.shape == (6, 28, 28, 1)
    assert (out[:, :14] == np.repeat(images, 2, 0)[:, :14]).all()
    assert (out[:, 14:] != np.repeat(images, 2, 0)[:, 14:]).mean() > 0.5


def test_resampling_costs_steps_times_resample_network_calls(runs, digits):
    gen, (images, mask) = _load(runs["flow"]), digits
    seen = []
    gen.inpaint(images[:1], mask, seed=0, steps=6, jump=2, resample=3, progress=lambda done, total: seen.append(total))
    job = gen.edit_job("inpaint", images[:1], mask, steps=6, resample=3)
    assert seen[-1] == 18 and len(seen) == 18 and job.calls == 18


def test_edits_are_reproducible_by_seed_and_independent_of_their_batch(runs, digits):
    gen, (images, mask) = _load(runs["flow"]), digits
    a = gen.inpaint(images, mask, seed=5, sampler="ddpm", steps=4)
    assert (a == gen.inpaint(images, mask, seed=5, sampler="ddpm", steps=4)).all()
    assert not (a == gen.inpaint(images, mask, seed=6, sampler="ddpm", steps=4)).all()
    one = gen.edit_job("vary", images[:1], seed=1, strength=0.5)
    two = gen.edit_job("vary", images[1:], seed=2, strength=0.5)
    together = gen.run([one, two])
    assert (together[0] == gen.run([one])[0]).all() and (together[1] == gen.run([two])[0]).all()


def test_strength_zero_returns_the_input_and_one_ignores_it(runs, digits):
    images = digits[0]
    for name in ("ddpm", "flow", "vae"):
        gen = _load(runs[name])
        assert (gen.vary(images, strength=0.0, seed=3) == images).all()
        a = gen.vary(images[:1], strength=1.0, seed=3)
        b = gen.vary(images[2:], strength=1.0, seed=3)
        assert (a == b).all(), name
    flow = _load(runs["flow"])  # strength 1 starts where generation starts: the same image for the same seed
    assert (flow.vary(images[:1], strength=1.0, seed=9) == flow.generate(1, seed=9)).all()
    some = flow.vary(images[:1], strength=0.3, seed=9, n=4)
    assert some.shape == (4, 28, 28, 1) and len({x.tobytes() for x in some}) == 4


def test_a_variation_walks_the_part_of_the_grid_below_its_strength():
    flow, vp = make_schedule("flow"), make_schedule("eps", "linear", 1000)
    assert np.isclose(editing.vary_times(flow, 0.5, 20)[0], 0.5) and len(editing.vary_times(flow, 0.5, 20)) == 11
    times = editing.vary_times(vp, 0.3, 20)
    assert times[0] == 0.3 and times[-1] == 0 and (np.diff(times) < 0).all()
    assert editing.vary_calls(vp, 0.0, 20) == 0 and editing.vary_calls(vp, 1.0, 20) == 20


def test_upscaling_is_consistent_with_its_input_and_refuses_to_generate(runs):
    gen = _load(runs["sr"])
    low = np.random.default_rng(1).integers(0, 256, (4, 14, 14, 1), dtype=np.uint8)
    up = gen.upscale(low, seed=0)
    assert up.shape == (4, 28, 28, 1)
    err = np.abs(edits.area_downsample(up, 14).astype(int) - low)
    assert err.max() <= 8 and err.mean() < 1.0  # exact but for clipping at 0 / 255 and rounding
    plain = gen.upscale(low, seed=0, consistent=False)  # SR3's own sampling: this 3-step model ignores its input
    assert np.abs(edits.area_downsample(plain, 14).astype(int) - low).mean() > 5 * err.mean()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        big = gen.upscale(np.repeat(np.repeat(low, 2, 1), 2, 2), seed=0)  # full size: area-downsampled first
    assert any("already 28x28" in str(w.message) for w in seen) and (big == up).all()
    with pytest.raises(UserError, match="super-resolution"):
        gen.generate(2)
    with pytest.raises(UserError, match="upscales"):
        gen.inpaint(np.zeros((28, 28, 1), np.uint8), np.ones((28, 28), bool))


def test_families_that_cannot_edit_say_so(runs, digits):
    images, mask = digits
    with pytest.raises(UserError, match="GAN inversion is not built"):
        _load(runs["gan"]).inpaint(images, mask)
    with pytest.raises(UserError, match="only a super-resolution model upscales"):
        _load(runs["flow"]).upscale(images)
    with pytest.raises(UserError, match="not an option of inpaint"):
        _load(runs["flow"]).inpaint(images, mask, strength=0.5)
    with pytest.raises(UserError, match="masks for 3 images"):
        _load(runs["flow"]).inpaint(images, np.zeros((2, 28, 28), bool))
    assert _load(runs["gan"]).edit_tasks() == () and _load(runs["sr"]).edit_tasks() == ("upscale",)


def test_inputs_of_another_size_or_mode_are_converted_with_a_notice(runs):
    gen = _load(runs["flow"])
    rgb = np.random.default_rng(2).integers(0, 256, (56, 56, 3), dtype=np.uint8)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = gen.vary(rgb, strength=0.5, seed=0)
    assert out.shape == (1, 28, 28, 1)
    assert any("56x56 -> 28x28" in str(w.message) and "3 -> 1 channels" in str(w.message) for w in seen)
    with pytest.raises(UserError, match="crop it"):
        gen.vary(np.zeros((20, 28, 1), np.uint8), strength=0.5)


def test_a_conditional_model_edits_with_or_without_a_label(runs, digits):
    gen, (images, mask) = _load(runs["cflow"]), digits
    free = gen.inpaint(images, mask, seed=0)  # no label: the model's "no class" prediction
    sevens = gen.inpaint(images, mask, seed=0, labels=7)
    assert (free[:, :14] == images[:, :14]).all() and (sevens[:, :14] == images[:, :14]).all()
    assert not (free == sevens).all()
    assert gen.edit_job("inpaint", images, mask, labels=[1, 2, 3], n=2).drawn["labels"].tolist() == [1, 1, 2, 2, 3, 3]


def test_both_mask_conventions_read_to_the_same_mask(tmp_path, runs, digits):
    from PIL import Image

    images, mask = digits
    alpha = np.full((28, 28, 4), 255, np.uint8)
    alpha[..., 3] = np.where(mask, 0, 255)  # OpenAI: transparent where to edit
    Image.fromarray(alpha, "RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L").save(tmp_path / "bw.png")  # white where to edit
    a, b = read_mask(tmp_path / "alpha.png", "alpha"), read_mask(tmp_path / "bw.png", "white")
    assert (a == mask).all() and (b == mask).all()
    gen = _load(runs["flow"])
    assert (gen.inpaint(images, a, seed=2) == gen.inpaint(images, b, seed=2)).all()
    with pytest.raises(UserError, match="--bw-mask"):
        read_mask(tmp_path / "bw.png", "alpha")


@pytest.fixture(scope="module")
def exports(runs, tmp_path_factory):
    base = tmp_path_factory.mktemp("edit-exports")
    return {name: export(runs[name], base / name) for name in ("ddpm", "cflow", "sr", "vae")}


@pytest.mark.parametrize("name,task,options", [
    ("ddpm", "inpaint", {"sampler": "ddpm", "steps": 6, "jump": 3, "resample": 2}),
    ("cflow", "inpaint", {"sampler": "unipc", "steps": 4, "guidance": 2.0}),
    ("ddpm", "vary", {"sampler": "dpmpp2m", "strength": 0.5}),
    ("sr", "upscale", {"steps": 4}),
    ("sr", "upscale", {"steps": 4, "consistent": False}),
    ("vae", "inpaint", {"iterations": 4}),
    ("vae", "vary", {"strength": 0.4}),
])
def test_the_runtime_edits_as_the_torch_path_does(runs, exports, digits, name, task, options):
    gen, ex = _load(runs[name]), load_export(exports[name])
    ex.use_mark_key(False)
    assert ex.edit_tasks() == gen.edit_tasks() and ex.edit_options(task) == gen.edit_options(task)
    images, mask = digits
    if task == "upscale":
        images = edits.area_downsample(images, 14)
    job = gen.edit_job(task, images, mask if task == "inpaint" else None, seed=4, labels=[3, 5, 7] if name == "cflow" else None,
                       **options)
    with torch.no_grad():
        ref = gen.method.render(gen.net, job.drawn, "cpu", **job.options).float().numpy()
    got = ex.family.render({k: v.numpy() for k, v in job.drawn.items()}, None, **job.options)
    assert np.abs(ref - got).max() < 2e-3
    # and the runtime's own API end to end
    out = getattr(ex, task)(images, mask, seed=1, **options) if task == "inpaint" else getattr(ex, task)(images, seed=1, **options)
    assert out.dtype == np.uint8 and len(out) == 3
    if task == "inpaint":
        assert (out[:, :14] == images[:, :14]).all()
