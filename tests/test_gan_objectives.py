"""Stabilised GAN objectives: hinge / Wasserstein losses, WGAN-GP and R1 penalties, n_critic, spectral norm,
DiffAugment, the InfoGAN sample grid, the presets that use them, and exact resume with each."""

import copy
import math

import numpy as np
import pytest
import torch
from PIL import Image

import genforge
from genforge.data import Augment
from genforge.errors import UserError
from genforge.methods.base import DataSpec
from genforge.methods.diffaugment import diff_augment, parse_policy
from genforge.methods.gan import CriticSteps, GANConfig, GANMethod
from genforge.methods.gan_losses import d_loss, g_loss, gradient_penalty, interpolate, r1_penalty
from genforge.methods.images import ImageData
from genforge.models.dcgan import Discriminator, Generator, init_weights
from genforge.training import train
from genforge.training.autoprecision import _ProbeAccelerator
from genforge.training.checkpoint import latest_checkpoint
from genforge.training.config import TrainConfig, apply_overrides, read_raw, validate
from test_training import ckpt_weights, weights
from tiny import tiny_config

D_REAL = torch.tensor([2.0, 0.5, -1.0])
D_FAKE = torch.tensor([-2.0, 0.0, 1.5])


# --- losses ---------------------------------------------------------------------------------------------

def test_hinge_and_wgan_losses_match_hand_computed_values():
    # hinge D: relu(1 - [2, .5, -1]) = [0, .5, 2] -> 2.5/3;  relu(1 + [-2, 0, 1.5]) = [0, 1, 2.5] -> 3.5/3
    assert d_loss("hinge", D_REAL, D_FAKE).item() == pytest.approx(2.0)
    assert g_loss("hinge", D_FAKE).item() == pytest.approx(0.5 / 3)  # -mean(D(G(z))) = -(-0.5/3)
    # wgan D: mean(D(fake)) - mean(D(real)) = -0.5/3 - 1.5/3
    assert d_loss("wgan", D_REAL, D_FAKE).item() == pytest.approx(-2.0 / 3)
    assert g_loss("wgan", D_FAKE).item() == pytest.approx(0.5 / 3)
    # ns: -log sigmoid(real) - log(1 - sigmoid(fake)), and G's -log sigmoid(fake)
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    ns_d = sum(softplus(-v) for v in D_REAL.tolist()) / 3 + sum(softplus(v) for v in D_FAKE.tolist()) / 3
    assert d_loss("ns", D_REAL, D_FAKE).item() == pytest.approx(ns_d, rel=1e-6)
    assert g_loss("ns", D_FAKE).item() == pytest.approx(sum(softplus(-v) for v in D_FAKE.tolist()) / 3, rel=1e-6)
    with pytest.raises(ValueError, match="hinge"):
        d_loss("lsgan", D_REAL, D_FAKE)


def test_losses_are_fp32_whatever_the_logits():
    assert d_loss("hinge", D_REAL.bfloat16(), D_FAKE.bfloat16()).dtype == torch.float32
    assert g_loss("wgan", D_FAKE.half()).dtype == torch.float32


# --- gradient penalties ---------------------------------------------------------------------------------

def linear_critic(w: torch.Tensor, b: float = 0.3):
    return lambda x: x.flatten(1) @ w.flatten() + b


def test_gradient_penalty_differentiates_at_points_between_real_and_fake():
    method = GANMethod(GANConfig(loss="wgan", gp_weight=10.0, d_norm="layer"), DataSpec(4, 4, 2, 0))
    real, fake = torch.randn(6, 2, 4, 4), torch.randn(6, 2, 4, 4)
    seen, w = [], torch.randn(32, requires_grad=True)

    def D(x, fp32=False):
        assert fp32 and x.requires_grad
        seen.append(x.detach().clone())
        return x.flatten(1) @ w

    terms = method._penalize(_ProbeAccelerator(torch.device("cpu")), D, real, fake, None, torch.Generator().manual_seed(0), 1)
    assert set(terms) == {"loss_gp"}
    (x,) = seen
    # x = fake + t (real - fake) with 0 <= t <= 1 for every image: a point on its segment, a different one each
    d = (real - fake).flatten(1)
    t = ((x - fake).flatten(1) * d).sum(1) / d.square().sum(1)
    assert torch.allclose(x, fake + t.view(-1, 1, 1, 1) * (real - fake), atol=1e-5)
    assert (t >= 0).all() and (t <= 1).all() and len(set(t.tolist())) == 6
    # the pure function with the same eps picks the same points
    eps = torch.rand(6, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(interpolate(real, fake, eps), x)


def test_gradient_penalty_is_zero_for_a_unit_norm_linear_critic():
    real, fake, eps = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4), torch.rand(5)
    w = torch.randn(3, 4, 4)
    w = w / w.norm()  # 1-Lipschitz with gradient norm exactly 1 everywhere
    assert gradient_penalty(linear_critic(w), real, fake, eps).item() < 1e-10
    assert gradient_penalty(linear_critic(3 * w), real, fake, eps).item() == pytest.approx(4.0, rel=1e-5)  # (3-1)^2


def test_r1_matches_hand_computed_values():
    real = torch.randn(4, 1, 2, 2)
    w = torch.tensor([1.0, 2.0, 2.0, 4.0]).view(1, 2, 2)
    assert r1_penalty(linear_critic(w), real).item() == pytest.approx(0.5 * 25.0)  # 1/2 ||w||^2, any x
    # D(x) = sum x^2: grad 2x, so R1 = mean over images of 1/2 * 4 ||x_i||^2
    expected = (2 * real.flatten(1).square().sum(1)).mean().item()
    assert r1_penalty(lambda x: x.flatten(1).square().sum(1), real).item() == pytest.approx(expected, rel=1e-5)


def tiny_method(**model) -> GANMethod:
    torch.manual_seed(0)
    cfg = GANConfig(**{"z_dim": 8, "g_width": 8, "d_width": 8, **model})
    method = GANMethod(cfg, DataSpec(28, 28, 1, 0))
    method.setup(TrainConfig())
    return method


def test_penalties_run_in_fp32_under_autocast():
    """The penalties' gradients under bf16 autocast (D's forward wrapped in autocast, as Accelerate does) are
    exactly those of an fp32 run: D's forward, its input gradient and the backward all run in fp32."""
    method = tiny_method(loss="wgan", gp_weight=10.0, r1_weight=1.0, d_norm="layer", d_hidden=16)
    real, fake = torch.rand(4, 1, 28, 28) * 2 - 1, torch.rand(4, 1, 28, 28) * 2 - 1
    grads, values = [], []
    for dtype in (None, torch.bfloat16):
        D = copy.deepcopy(method.networks["discriminator"])
        accel = _ProbeAccelerator(torch.device("cpu"))
        accel.dtype = dtype
        accel.prepare_model(D)
        with accel.autocast():
            values.append(method._penalize(accel, D, real, fake, None, torch.Generator().manual_seed(1), 2))
        grads.append([p.grad.clone() for p in D.parameters() if p.grad is not None])
    assert values[0] == values[1] and all(v.dtype == torch.float32 for v in values[1].values())
    assert len(grads[0]) > 4 and all(torch.equal(a, b) for a, b in zip(*grads))
    # and the check can fail: without fp32, D's forward under autocast gives other numbers
    D = copy.deepcopy(method.networks["discriminator"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not torch.equal(D(real), D(real, fp32=True))


@pytest.mark.parametrize("model,train_opts,needle", [
    ({"loss": "wgan", "gp_weight": 10}, {}, "d_norm=layer"),  # BatchNorm in D
    ({"r1_weight": 1.0}, {}, "d_norm=layer"),
    ({"loss": "wgan"}, {}, "gp_weight=10"),  # no Lipschitz constraint
    ({"loss": "hinge", "real_label": 0.9}, {}, "real_label=1.0"),
    ({"diffaugment": "color,flip"}, {}, "translation"),
    ({"n_critic": 1000}, {}, "model.n_critic"),
    ({"r1_weight": 1.0, "d_norm": "none"}, {"compile": True}, "train.compile=false"),  # no double backward
])
def test_mistakes_are_user_errors_that_name_the_fix(tmp_path, model, train_opts, needle):
    with pytest.raises(UserError, match=needle):
        train(tiny_config(model=model, max_steps=1, **train_opts), tmp_path / "x", progress=False)


# --- spectral norm --------------------------------------------------------------------------------------

def test_spectral_norm_bounds_the_largest_singular_value():
    torch.manual_seed(0)
    D = Discriminator(28, 1, width=8, spectral_norm=True, hidden=16)
    init_weights(D)
    layers = [m for m in D.modules() if torch.nn.utils.parametrize.is_parametrized(m, "weight")]
    assert len(layers) == 4  # two convolutions, the hidden and the output layer
    with torch.no_grad():
        for m in layers:  # make the raw weights far from 1-Lipschitz
            m.parametrizations.weight.original.mul_(10)
        x = torch.randn(8, 1, 28, 28)
        for _ in range(30):  # each training-mode forward runs one power iteration per layer
            D(x)
    D.eval()  # read the effective weights without another power iteration
    for m in layers:
        raw = torch.linalg.matrix_norm(m.parametrizations.weight.original.flatten(1), ord=2)
        sigma = torch.linalg.matrix_norm(m.weight.flatten(1), ord=2)
        assert raw > 1.5 and sigma <= 1 + 1e-3, (m, raw, sigma)


# --- n_critic ---------------------------------------------------------------------------------------------

def image_data(n=40, batch=4, accum=1) -> ImageData:
    images = torch.randint(0, 256, (n, 28, 28, 1), dtype=torch.uint8)
    return ImageData(images, None, batch, accum, 0, 1, 7, Augment(), False, DataSpec(28, 28, 1, 0), {})


def test_critic_steps_serve_n_consecutive_loader_steps():
    data = image_data(accum=2)
    steps = CriticSteps(data, 3)
    assert steps.steps_per_epoch == data.steps_per_epoch // 3 and steps.items_per_step == 3 * data.items_per_step
    assert steps.spec == data.spec and steps.unit == "images"
    got = steps.micro_batches(1, torch.Generator())
    want = [mb for s in (3, 4, 5) for mb in data.micro_batches(s, torch.Generator())]
    assert len(got) == 6 and all(torch.equal(a[0], b[0]) for a, b in zip(got, want))


def test_n_critic_updates_d_n_times_per_g_update():
    method = tiny_method(loss="wgan", gp_weight=10.0, d_norm="layer", n_critic=3)
    data = CriticSteps(image_data(accum=2), 3)
    accel = _ProbeAccelerator(torch.device("cpu"))
    losses = method.training_step(accel, data.micro_batches(0, torch.Generator().manual_seed(0)), torch.Generator())
    assert set(losses) == {"loss_d", "loss_g", "loss_gp"} and all(torch.isfinite(v) for v in losses.values())

    def adam_steps(name):
        return {int(s["step"]) for s in method.optimizers[name].state.values()}

    assert adam_steps("discriminator") == {3} and adam_steps("generator") == {1}


# --- DiffAugment ----------------------------------------------------------------------------------------

POLICY = "color,translation,cutout"


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", POLICY])
def test_diffaugment_repeats_with_the_same_generator_and_differs_per_image(policy):
    x = torch.rand(1, 3, 16, 16).mul(2).sub(1).repeat(16, 1, 1, 1)  # 16 copies of one image
    a = diff_augment(x, policy, torch.Generator().manual_seed(3))
    assert a.shape == x.shape
    assert torch.equal(a, diff_augment(x, policy, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, diff_augment(x, policy, torch.Generator().manual_seed(4)))
    assert len({tuple(img.flatten().tolist()) for img in a}) > 1  # each image its own parameters


def test_diffaugment_moves_and_masks_pixels_without_inventing_values():
    x = torch.rand(8, 2, 16, 16) + 1  # values in [1, 2): the fill value 0 is easy to tell apart
    for policy in ("translation", "cutout"):
        out = diff_augment(x, policy, torch.Generator().manual_seed(0))
        assert (out == 0).any()
        for img, src in zip(out, x):
            assert torch.isin(img[img != 0], src).all()
            assert (img == 0).all(0).sum() == (img == 0).any(0).sum()  # whole pixels, all channels at once
    cut = diff_augment(x, "cutout", torch.Generator().manual_seed(0))
    assert ((cut == 0).flatten(1).float().mean(1) <= 0.25 + 1e-6).all()  # at most a square of half the side


def test_diffaugment_passes_gradients_to_its_input():
    x = torch.randn(6, 3, 16, 16, requires_grad=True)
    out = diff_augment(x, POLICY, torch.Generator().manual_seed(1))
    (out * torch.randn_like(out)).sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad != 0).any(dim=(1, 2, 3)).all()


def test_diffaugment_off_is_the_identity_and_bad_names_are_refused():
    x = torch.randn(2, 1, 8, 8)
    assert diff_augment(x, "", torch.Generator()) is x
    assert parse_policy(" color , cutout ") == ("color", "cutout") and parse_policy("") == ()
    with pytest.raises(ValueError, match="translation"):
        parse_policy("color,zoom")


def test_diffaugment_sees_real_and_fake_alike_in_both_updates(monkeypatch):
    import genforge.methods.gan as gan

    calls = []

    def spy(x, policy, rng):
        calls.append((policy, x.requires_grad))
        return diff_augment(x, policy, rng)

    monkeypatch.setattr(gan, "diff_augment", spy)
    method = tiny_method(diffaugment="translation,cutout")
    accel = _ProbeAccelerator(torch.device("cpu"))
    losses = method.training_step(accel, image_data().micro_batches(0, torch.Generator()), torch.Generator())
    assert all(torch.isfinite(v) for v in losses.values())
    # D's update: the real batch, then the fakes (detached); G's update: the fakes, with their graph
    assert calls == [("translation,cutout", False), ("translation,cutout", False), ("translation,cutout", True)]


# --- InfoGAN sample grid --------------------------------------------------------------------------------

def test_infogan_grid_has_one_row_per_code_and_one_z_per_column(monkeypatch, tmp_path):
    import genforge.visual

    saved = {}
    monkeypatch.setattr(genforge.visual, "save_grid", lambda images, path, nrow, scale: saved.update(x=images, nrow=nrow))
    torch.manual_seed(0)
    G = Generator(28, 1, z_dim=8, width=8, codes=4)
    init_weights(G)
    GANMethod.write_samples(G, None, tmp_path / "grid", 5, _ProbeAccelerator(torch.device("cpu")))
    x, cols = saved["x"], saved["nrow"]
    assert cols == 8 and x.shape == (4 * 8, 28, 28, 1)
    grid = x.reshape(4, 8, 28 * 28).astype(np.int32)
    z = torch.randn(8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        row2 = G.eval()(torch.cat([z, torch.nn.functional.one_hot(torch.full((8,), 2), 4).float()], 1))
    assert np.abs(grid[2] - ((row2 + 1) * 127.5).round().clamp(0, 255).reshape(8, -1).numpy()).max() <= 1
    assert not np.array_equal(grid[0], grid[1])  # the code changes the images


# --- presets ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("colour")
    rs = np.random.RandomState(0)
    for i in range(32):
        Image.fromarray(rs.randint(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"{i:02d}.png")
    return root


@pytest.mark.parametrize("preset", ["mnist-wgangp", "mnist-hinge-sn", "mnist-infogan", "cifar10-dcgan-cpu",
                                    "cifar10-sngan-cpu"])
def test_new_presets_train_and_sample(preset, tmp_path, colour_folder):
    raw = read_raw(preset)
    colour = raw["data"]["dataset"] == "cifar10-jpeg"
    # ema_decay=0: the EMA's BatchNorm re-estimation (50 batches per sample grid) would dominate the test's time
    overrides = ["train.max_steps=2", "train.batch_size=8", "train.mixed_precision=no", "train.sample_every=1",
                 "train.ema_decay=0", "model.g_width=8", "model.d_width=8",
                 f"data.dataset=folder:{colour_folder}" if colour else "data.dataset=mnist-mini"]
    if raw["model"].get("d_hidden"):
        overrides.append("model.d_hidden=16")
    cfg = validate(apply_overrides(raw, overrides, GANConfig))
    run = train(cfg, tmp_path / "run", progress=False).run_dir
    assert (run / "samples" / "step-00000002.png").exists() and (run / "samples" / "final.png").exists()
    x = genforge.load(run).generate(3, seed=1)
    assert x.shape == ((3, 32, 32, 3) if colour else (3, 28, 28, 1))


# --- exact resume ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("model,train_opts", [
    ({"loss": "hinge", "d_spectral_norm": True}, {"lr_d": 4e-4}),
    ({"loss": "wgan", "gp_weight": 10.0, "d_norm": "layer", "n_critic": 2}, {"grad_accum": 2, "batch_size": 8}),
    ({"r1_weight": 1.0, "d_norm": "none"}, {}),
    ({"diffaugment": POLICY}, {}),
], ids=["hinge-sn", "wgangp-ncritic", "r1", "diffaugment"])
def test_resume_continues_exactly(tmp_path, model, train_opts):
    cfg = lambda steps: tiny_config(model=model, max_steps=steps, checkpoint_every=100, **train_opts)  # noqa: E731
    full = train(cfg(4), tmp_path / "full", progress=False).run_dir
    part = tmp_path / "part"
    train(cfg(2), part, progress=False)
    train(cfg(4), part, resume=True, progress=False)
    w_full, w_part = weights(full), weights(part)
    assert w_full.keys() == w_part.keys() and all(torch.equal(w_full[k], w_part[k]) for k in w_full)
    a, b = ckpt_weights(latest_checkpoint(full)), ckpt_weights(latest_checkpoint(part))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
