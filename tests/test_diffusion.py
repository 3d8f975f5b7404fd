"""The diffusion family: schedules and samplers against exact answers, and the family through the one loop."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import genforge
from genforge.cli import app
from genforge.diffusion import FlowSchedule, VPSchedule, make_schedule, sample, split_prediction, training_target
from genforge.errors import UserError
from genforge.methods.diffusion import guided_output, noised
from genforge.models.unet import UNet
from genforge.training import train
from genforge.training.checkpoint import latest_checkpoint
from genforge.training.config import read_raw, validate
from tiny import tiny_config


# -- schedules ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_vp_schedule_alpha_bar_falls_strictly_from_one_to_nearly_zero(kind):
    s = VPSchedule(kind, 1000)
    ab = s.alphas_cumprod
    assert ab[0] == 1.0 and np.all(np.diff(ab) < 0)
    assert ab[-1] < 1e-4
    a, sig = s.alpha_sigma(np.array([0.0, 1.0]))
    np.testing.assert_allclose(a**2 + sig**2, 1.0)
    assert a[0] == 1.0 and sig[0] == 0.0
    assert np.all(np.diff(s.log_snr(np.arange(1, 1001) / 1000)) < 0)
    grid = s.times(10)
    assert grid[0] == 1.0 and grid[-1] == 0.0 and len(grid) == 11 and np.all(np.diff(grid) < 0)
    t = s.training_times(np.array([0.0, 0.4999, 0.99999]))
    np.testing.assert_allclose(t, [0.001, 0.5, 1.0])
    if kind == "linear":
        np.testing.assert_allclose(s.betas[[0, -1]], [1e-4, 0.02])


def test_flow_path_is_the_straight_line():
    s = FlowSchedule()
    a, sig = s.alpha_sigma(np.array([0.0, 0.25, 1.0]))
    np.testing.assert_allclose(a, [1, 0.75, 0]) and np.testing.assert_allclose(sig, [0, 0.25, 1])
    np.testing.assert_allclose(s.times(4), [1, 0.5625, 0.25, 0.0625, 0])


def test_forward_noising_has_the_stated_mean_and_variance():
    schedule = VPSchedule("linear", 1000)
    x0 = torch.full((20_000, 1, 1, 1), 0.6)
    x_t, t, eps, a, s = noised(schedule, x0, torch.Generator().manual_seed(0))
    assert torch.equal(x_t, a * x0 + s * eps)
    alpha, sigma = schedule.alpha_sigma(t.double().numpy())
    np.testing.assert_allclose(a.flatten().numpy(), alpha, rtol=1e-6)
    z = ((x_t - a * x0) / s).flatten()
    assert abs(float(z.mean())) < 0.03 and abs(float(z.std()) - 1) < 0.02
    # at one fixed time: mean alpha x0, variance sigma^2
    late = t > 0.9
    m, v = float(x_t.flatten()[late].mean()), float(x_t.flatten()[late].var())
    a_mid, s_mid = [float(c.mean()) for c in schedule.alpha_sigma(t[late].double().numpy())]
    assert abs(m - a_mid * 0.6) < 0.03 and abs(v - s_mid**2) < 0.05
    assert 0 < float(t.min()) and float(t.max()) <= 1


@pytest.mark.parametrize("kind", ["eps", "v", "flow"])
def test_training_target_is_what_the_parameterisation_says_and_splits_back(kind):
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.rand(5, 3, generator=g) * 2 - 1, torch.randn(5, 3, generator=g)
    schedule = make_schedule(kind)
    a, s = (float(c) for c in schedule.alpha_sigma(0.3))
    target = training_target(kind, x0, eps, a, s)
    expected = {"eps": eps, "v": a * eps - s * x0, "flow": eps - x0}[kind]
    torch.testing.assert_close(target, expected)
    x = a * x0 + s * eps
    x0_hat, eps_hat = split_prediction(kind, target, x, a, s, clip=False)
    torch.testing.assert_close(x0_hat, x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(eps_hat, eps, atol=1e-5, rtol=0)


# -- samplers on a known target, with the exact denoiser -----------------------------------------------------------
MIX = (np.array([0.3, 0.7]), np.array([-0.5, 0.4]), np.array([0.08, 0.15]))  # weights, means, standard deviations


def exact_denoiser(schedule, weights, means, stds):
    """E[x0 | x_t] for 1-D Gaussian-mixture data, split into (x0_hat, eps_hat): what a perfect network returns."""
    def model(x, t):
        a, s = (float(c) for c in schedule.alpha_sigma(t))
        var = a**2 * stds**2 + s**2
        logp = np.log(weights) - 0.5 * np.log(var) - 0.5 * (x[:, None] - a * means) ** 2 / var
        r = np.exp(logp - logp.max(1, keepdims=True))
        r /= r.sum(1, keepdims=True)
        x0 = (r * (means + a * stds**2 / var * (x[:, None] - a * means))).sum(1)
        return x0, (x - a * x0) / s if s > 0 else np.zeros_like(x)
    return model


def _noise(n, seed=0):
    rng = np.random.default_rng(seed)
    return lambda i: rng.standard_normal(n)


def test_ddim_with_eta_1_and_all_T_steps_is_ddpm():
    schedule = VPSchedule("linear", 1000)
    model = exact_denoiser(schedule, *MIX)
    x = np.random.default_rng(5).standard_normal(4000)
    ddpm = sample(model, x, schedule, "ddpm", 1000, noise=_noise(4000))
    ddim = sample(model, x, schedule, "ddim", 1000, eta=1.0, noise=_noise(4000))
    np.testing.assert_allclose(ddim, ddpm, atol=1e-6)  # the same posterior written two ways, same noise
    # and the distribution is the data's: each mode's mass, mean and spread
    w, mu, sd = MIX
    for k, side in enumerate((ddpm < 0, ddpm >= 0)):
        assert abs(side.mean() - w[k]) < 0.03
        assert abs(ddpm[side].mean() - mu[k]) < 0.02
        assert abs(ddpm[side].std() - sd[k]) < 0.02


@pytest.mark.parametrize("schedule", [VPSchedule("linear"), VPSchedule("cosine"), FlowSchedule()],
                         ids=["linear", "cosine", "flow"])
@pytest.mark.parametrize("sampler,steps,eta", [("ddpm", 0, 0.0), ("ddim", 50, 0.0), ("ddim", 50, 1.0),
                                               ("dpmpp2m", 10, 0.0), ("dpmpp2m", 20, 0.0), ("unipc", 10, 0.0),
                                               ("unipc", 20, 0.0)])
def test_every_sampler_recovers_a_gaussian_targets_mean_and_variance(schedule, sampler, steps, eta):
    mean, std = 0.3, 0.2
    model = exact_denoiser(schedule, np.array([1.0]), np.array([mean]), np.array([std]))
    x = np.random.default_rng(1).standard_normal(20_000)
    out = sample(model, x, schedule, sampler, steps or None, eta, noise=_noise(20_000, 2))
    assert abs(out.mean() - mean) < 0.01, out.mean()
    # ancestral DDIM at 50 steps is the least accurate here (the DDIM paper's eta = 1 column at few steps); the
    # solvers at 10 steps overshoot the spread by up to 8% on the flow path (0.214 and 0.216 here)
    assert abs(out.std() - std) < (0.025 if eta else 0.02 if steps == 10 else 0.015), out.std()


def test_samplers_run_on_torch_tensors_and_numpy_arrays_alike():
    schedule = VPSchedule("cosine")
    model_np = exact_denoiser(schedule, *MIX)

    def model_torch(x, t):
        x0, eps = model_np(x.double().numpy(), t)
        return torch.from_numpy(x0), torch.from_numpy(eps)

    x = np.random.default_rng(3).standard_normal(500)
    for sampler, eta in (("dpmpp2m", 0.0), ("unipc", 0.0), ("ddim", 0.5)):
        a = sample(model_np, x, schedule, sampler, 15, eta, noise=_noise(500, 4))
        b = sample(model_torch, torch.from_numpy(x), schedule, sampler, 15, eta,
                   noise=(lambda f: (lambda i: torch.from_numpy(f(i))))(_noise(500, 4)))
        np.testing.assert_allclose(b.numpy(), a, atol=1e-12)


def test_solver_beats_ddim_at_ten_steps_on_the_mixture():
    """Second order pays: at 10 calls DPM-Solver++(2M) lands nearer the mixture's modes than DDIM does."""
    schedule = VPSchedule("linear")
    model = exact_denoiser(schedule, *MIX)
    x = np.random.default_rng(7).standard_normal(20_000)
    _, mu, sd = MIX

    def spread_error(out):
        return sum(abs(out[side].std() - sd[k]) for k, side in enumerate((out < 0, out >= 0)))

    ref = sample(model, x, schedule, "ddim", 1000)
    err_ddim = np.abs(sample(model, x, schedule, "ddim", 10) - ref).mean()
    for solver in ("dpmpp2m", "unipc"):
        err = np.abs(sample(model, x, schedule, solver, 10) - ref).mean()
        assert err < 0.75 * err_ddim, (solver, err, err_ddim)
        assert spread_error(sample(model, x, schedule, solver, 10)) < spread_error(sample(model, x, schedule, "ddim", 10))


@pytest.mark.parametrize("schedule", [VPSchedule("linear"), FlowSchedule()], ids=["linear", "flow"])
def test_unipc_makes_one_network_call_per_step_and_converges_faster_than_its_predictor(schedule):
    """UniPC's corrector is free (it re-uses the next step's call) and raises the order: its error against the
    1,000-step solution falls faster with the step count than DPM-Solver++(2M)'s, whose step is its predictor."""
    model = exact_denoiser(schedule, *MIX)
    calls = []

    def counted(x, t):
        calls.append(t)
        return model(x, t)

    x = np.random.default_rng(11).standard_normal(5000)
    sample(counted, x, schedule, "unipc", 8)
    assert len(calls) == 8 and len(set(calls)) == 8
    ref = sample(model, x, schedule, "dpmpp2m", 1000)
    err = {k: {n: np.abs(sample(model, x, schedule, k, n) - ref).mean() for n in (5, 10, 20)} for k in ("dpmpp2m", "unipc")}
    assert err["unipc"][20] < err["unipc"][10] < err["unipc"][5], err
    assert err["unipc"][20] < err["dpmpp2m"][20], err


# -- the network and guidance ----------------------------------------------------------------------------------
@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3), (64, 3), (16, 1)])
def test_unet_keeps_the_image_shape_and_starts_at_zero(size, channels):
    net = UNet(size, channels, 8, num_classes=3)
    x = torch.randn(2, channels, size, size)
    out = net(x, torch.rand(2), torch.tensor([0, 3]))
    assert out.shape == x.shape
    assert float(out.abs().max()) == 0.0  # zero-initialised output layer: the first loss is the target's variance


def test_guidance_0_is_unconditional_1_conditional_and_more_extrapolates():
    torch.manual_seed(0)
    net = UNet(16, 1, 8, num_classes=3)
    for p in net.parameters():  # away from the zero initialisation, so the label matters
        p.data.add_(torch.randn_like(p) * 0.05)
    x, t, y = torch.randn(4, 1, 16, 16), torch.rand(4), torch.tensor([0, 1, 2, 0])
    null = torch.full_like(y, 3)
    with torch.no_grad():
        cond, uncond = net(x, t, y), net(x, t, null)
        assert not torch.allclose(cond, uncond)
        torch.testing.assert_close(guided_output(net, x, t, y, 0.0), uncond)
        torch.testing.assert_close(guided_output(net, x, t, y, 1.0), cond)
        torch.testing.assert_close(guided_output(net, x, t, y, 3.0), uncond + 3 * (cond - uncond), atol=1e-5, rtol=1e-5)


# -- through the loop -----------------------------------------------------------------------------------------
def diffusion_config(model=None, **train_over):
    cfg = tiny_config(**{"max_steps": 6, **train_over}).model_dump()
    cfg["family"] = "diffusion"
    cfg["model"] = {"width": 8, "timesteps": 100, "steps": 5, **(model or {})}
    cfg["train"].update(lr=1e-3, beta1=0.9)
    return validate(cfg)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("diffusion")
    plain = train(diffusion_config(), base / "plain", progress=False).run_dir
    cond = train(diffusion_config({"conditional": True, "objective": "flow", "guidance": 2.0}), base / "cond",
                 progress=False).run_dir
    return plain, cond


def test_training_lowers_the_denoising_loss(tmp_path):
    cfg = diffusion_config({"objective": "eps"}, max_steps=60, batch_size=32, log_every=5, sample_every=1000,
                           checkpoint_every=1000)
    run = train(cfg, tmp_path / "run", progress=False).run_dir
    losses = [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert losses[-1] < 0.6 * losses[0], losses


@pytest.mark.parametrize("objective", ["eps", "v", "flow"])
def test_resume_is_exact(objective, tmp_path):
    model = {"objective": objective, "conditional": True}
    full = train(diffusion_config(model, max_steps=6, checkpoint_every=100), tmp_path / "full", progress=False).run_dir
    part = tmp_path / "part"
    train(diffusion_config(model, max_steps=3, checkpoint_every=100), part, progress=False)
    train(diffusion_config(model, max_steps=6, checkpoint_every=100), part, resume=True, progress=False)
    a, b = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sampling_options_seeds_and_batches(runs):
    plain, cond = (genforge.load(r, precision="no") for r in runs)
    opts = plain.options()
    assert set(opts) == {"sampler", "steps", "eta"} and opts["sampler"]["choices"] == ["ddpm", "ddim", "dpmpp2m", "unipc"]
    assert cond.options()["guidance"]["default"] == 2.0  # the run's own default
    for kw in ({}, {"sampler": "ddim", "steps": 4, "eta": 1.0}, {"sampler": "ddpm"}):
        a, b = plain.generate(3, seed=4, **kw), plain.generate(3, seed=4, **kw)
        assert a.shape == (3, 28, 28, 1) and a.dtype == np.uint8 and np.array_equal(a, b)
    # an image depends on its seed only, not on what shares its batch (the server merges requests)
    jobs = [plain.job(2, seed=1, sampler="ddim", eta=1.0, steps=4), plain.job(3, seed=2, sampler="ddim", eta=1.0, steps=4)]
    together = plain.run(jobs)
    assert np.array_equal(together[0], plain.generate(2, seed=1, sampler="ddim", eta=1.0, steps=4))
    assert np.array_equal(together[1], plain.generate(3, seed=2, sampler="ddim", eta=1.0, steps=4))
    sevens = cond.generate(4, seed=0, labels=7, guidance=3.0)
    assert sevens.shape == (4, 28, 28, 1)
    with pytest.raises(UserError, match="sampler"):
        plain.generate(2, sampler="euler")
    with pytest.raises(UserError, match="guidance"):
        plain.generate(2, guidance=2.0)  # unconditional: no guidance option
    with pytest.raises(UserError, match="steps"):
        plain.generate(2, sampler="ddim", steps=500)  # more than the model's T = 100
    walk = cond.interpolate(3, 8, steps=4, labels=2)
    assert walk.shape == (4, 28, 28, 1)


def test_cli_sample_and_eval_take_the_sampler_options(runs, tmp_path):
    r = CliRunner().invoke(app, ["sample", str(runs[1]), "--n", "4", "--label", "3", "--sampler", "ddim", "--steps", "3",
                                 "--eta", "0.5", "--guidance", "2", "--seed", "1", "--out", str(tmp_path / "g.png")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "g.png").exists()
    r = CliRunner().invoke(app, ["sample", str(runs[0]), "--n", "2", "--guidance", "2", "--out", str(tmp_path / "x.png")])
    assert r.exit_code == 2 and "guidance" in r.output
    r = CliRunner().invoke(app, ["sample", str(runs[0]), "--interpolate", "1", "2", "--walk-steps", "3",
                                 "--out", str(tmp_path / "walk.png")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["sample", str(runs[0]), "--interpolate", "1", "2", "--steps", "5",
                                 "--out", str(tmp_path / "walk2.png")])  # was a TypeError (steps passed twice)
    assert r.exit_code == 2 and "--walk-steps" in r.output, r.output


@pytest.mark.parametrize("preset", ["mnist-ddpm", "mnist-cddpm", "cifar10-ddpm-cpu", "cifar10-ddpm"])
def test_presets_train_a_few_steps_and_sample(preset, tmp_path):
    from test_vae import _folder

    raw = read_raw(preset)
    assert raw["family"] == "diffusion"
    raw["train"].update(max_steps=2, epochs=None, batch_size=4, sample_every=2, eval_every=None, mixed_precision="no")
    raw["model"].update(width=8)
    raw["data"]["dataset"] = "mnist-mini" if raw["data"]["dataset"] == "mnist" else f"folder:{_folder(tmp_path)}"
    run = train(validate(raw), tmp_path / preset, progress=False).run_dir
    model = genforge.load(run, precision="no")
    img = model.generate(2, seed=0, steps=2)
    assert img.shape[0] == 2 and img.shape[-1] == model.image_shape[-1]
    assert latest_checkpoint(run) is not None


def test_colour_images_train_and_sample(tmp_path):
    from test_vae import _folder

    cfg = diffusion_config(max_steps=2).model_dump()
    cfg["data"]["dataset"] = f"folder:{_folder(tmp_path)}"
    run = train(validate(cfg), tmp_path / "colour", progress=False).run_dir
    img = genforge.load(run, precision="no").generate(2, seed=0)
    assert img.shape[-1] == 3


def test_config_mistakes_are_clear(tmp_path):
    from test_vae import _folder

    cfg = diffusion_config({"conditional": True}).model_dump()
    cfg["data"]["dataset"] = f"folder:{_folder(tmp_path)}"  # no class sub-folders
    with pytest.raises(UserError, match="conditional"):
        train(validate(cfg), tmp_path / "x", progress=False)
    with pytest.raises(UserError, match="objective"):
        train(diffusion_config({"objective": "x0"}), tmp_path / "y", progress=False)


def test_server_lists_and_takes_the_sampler_options(runs):
    import base64
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from genforge.serving.app import ServeSettings, create_app

    model = genforge.load(runs[1], precision="no")
    with TestClient(create_app({"cddpm": model}, ServeSettings())) as c:
        opts = c.get("/v1/models").json()["data"][0]["genforge"]["options"]
        assert opts["sampler"]["choices"] == ["ddpm", "ddim", "dpmpp2m", "unipc"] and opts["guidance"]["default"] == 2.0
        body = {"model": "cddpm", "n": 2, "seed": 5, "label": "4", "sampler": "ddim", "steps": 3, "eta": 1.0, "guidance": 3.0}
        r = c.post("/v1/images/generations", json=body)
        assert r.status_code == 200, r.text
        got = [np.asarray(Image.open(io.BytesIO(base64.b64decode(d["b64_json"])))) for d in r.json()["data"]]
        want = model.generate(2, seed=5, labels="4", sampler="ddim", steps=3, eta=1.0, guidance=3.0)
        assert all(np.array_equal(a, b[..., 0]) for a, b in zip(got, want))
        for field, value in (("sampler", "euler"), ("steps", 20_000), ("eta", 2.0), ("guidance", -1)):
            bad = c.post("/v1/images/generations", json={"model": "cddpm", field: value})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == field, bad.text


def test_server_limits_what_a_request_costs_in_network_calls(runs):
    from fastapi.testclient import TestClient

    from genforge.serving.app import ServeSettings, create_app

    model = genforge.load(runs[1], precision="no")  # conditional, T = 100
    assert model.job(3, sampler="ddim", steps=5, guidance=1.0).calls == 15
    assert model.job(3, sampler="ddim", steps=5, guidance=2.0).calls == 30  # two predictions per step
    assert model.job(2, sampler="ddim", steps=5, guidance=0.0).calls == 10  # unconditional: one prediction
    assert genforge.load(runs[0], precision="no").job(2, sampler="ddpm").calls == 200  # ddpm: all T = 100 steps
    with TestClient(create_app({"cddpm": model}, ServeSettings(max_image_calls=40))) as c:
        assert c.get("/v1/models").json()["data"][0]["genforge"]["limits"]["max_image_calls"] == 40
        ok = c.post("/v1/images/generations", json={"model": "cddpm", "n": 4, "sampler": "ddim", "steps": 5})
        assert ok.status_code == 200, ok.text  # 4 x 5 x 2 (guided by the run's default 2.0) = 40
        bad = c.post("/v1/images/generations", json={"model": "cddpm", "n": 5, "sampler": "ddim", "steps": 5})
        err = bad.json()["error"]
        assert bad.status_code == 400 and err["code"] == "limit" and "at most 4 images" in err["message"], bad.text
        bad = c.post("/v1/images/generations", json={"model": "cddpm", "n": 1, "sampler": "ddpm"})
        assert bad.status_code == 400 and "fewer steps" in bad.json()["error"]["message"]
        assert c.get("/healthz").status_code == 200
