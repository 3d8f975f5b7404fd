"""The VAE family: its likelihood maths, training through the one loop, and what users do with a VAE."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

import genforge
from genforge.cli import app
from genforge.errors import UserError
from genforge.evaluation.likelihood import likelihood_metrics
from genforge.methods.vae import elbo_terms, importance_log_likelihood
from genforge.models import likelihoods
from genforge.models.vae import VAE, gaussian_kl, gaussian_log_prob
from genforge.training import train
from genforge.training.checkpoint import latest_checkpoint
from genforge.training.config import read_raw, validate
from tiny import tiny_config


def vae_config(model=None, **train_over):
    cfg = tiny_config(**{"max_steps": 6, **train_over}).model_dump()
    cfg["family"] = "vae"
    cfg["model"] = {"latent_dim": 4, "width": 8, "hidden": 32, **(model or {})}
    cfg["train"].update(lr=2e-3, beta1=0.9, eval_samples=100)
    return validate(cfg)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("vae")
    plain = train(vae_config(model={"kl_warmup_steps": 4}, max_steps=6), base / "plain", progress=False).run_dir
    cond = train(vae_config(model={"conditional": True}), base / "cond", progress=False).run_dir
    return plain, cond


def test_kl_matches_the_closed_form_of_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros(5, 7), torch.ones(5, 7))
    assert torch.allclose(gaussian_kl(mu, logvar), torch.distributions.kl_divergence(q, p), atol=1e-5)
    z = torch.randn(5, 7, generator=g)
    assert torch.allclose(gaussian_log_prob(z, mu, logvar), q.log_prob(z).sum(-1), atol=1e-4)
    assert torch.allclose(gaussian_log_prob(z), p.log_prob(z).sum(-1), atol=1e-4)


def test_discretised_logistic_mixture_is_a_distribution_over_the_256_levels():
    levels = torch.arange(256, dtype=torch.float32) / 127.5 - 1  # every 8-bit value in model range
    g = torch.Generator().manual_seed(1)
    params = torch.randn(1, 9, 1, 1, generator=g).repeat(256, 1, 1, 1)  # one channel, 3 components, one pixel
    params[:, 6:] = params[:, 6:] - 2  # narrow-ish scales, so some bins have tiny mass
    lp = likelihoods.log_prob("logistic", params, levels.view(256, 1, 1, 1), mixtures=3)
    assert abs(float(torch.logsumexp(lp, 0))) < 1e-3  # probabilities of all 256 values sum to 1


def _photo_like(n, seed=0):
    """Smooth colour images whose channels move together, as photographs' do: float NCHW on the 8-bit levels of [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    shade = F.interpolate(torch.rand(n, 1, 4, 4, generator=g), size=32, mode="bicubic", align_corners=False)
    tint = torch.rand(n, 3, 1, 1, generator=g) * 0.2 - 0.1
    img = shade + tint + 0.02 * torch.randn(n, 3, 32, 32, generator=g)
    return (img.clamp(0, 1) * 255).round() / 127.5 - 1


def _bits_per_dim(nats_per_image, x):
    return float(nats_per_image.detach()) / (x[0].numel() * math.log(2))


def test_colour_logistic_mixture_is_a_distribution_over_all_8_bit_colours():
    levels = torch.arange(256, dtype=torch.float32) / 127.5 - 1
    k = 2
    params = torch.randn(1, likelihoods.num_params("logistic", 3, k), 1, 1, generator=torch.Generator().manual_seed(2))
    params[:, 4 * k : 7 * k] -= 3  # narrow scales (layout: k logits, 3k means, 3k log-scales, 3k coupling)
    params[:, 7 * k :] *= 3  # strong coupling: G's mean follows R, B's follows R and G
    # p(R) alone is the one-channel mixture of the same components: it sums to 1 over the 256 levels...
    red_only = torch.cat([params[:, :k], params[:, k : 2 * k], params[:, 4 * k : 5 * k]], 1)
    log_p_red = likelihoods.log_prob("logistic", red_only.expand(256, -1, -1, -1), levels.view(256, 1, 1, 1), mixtures=k)
    assert abs(float(torch.logsumexp(log_p_red, 0))) < 1e-4
    # ...and for each R, p(R, G, B) over all 65,536 (G, B) sums to p(R): the whole cube of colours sums to 1.
    green, blue = (t.flatten() for t in torch.meshgrid(levels, levels, indexing="ij"))
    for r in (0, 1, 77, 128, 254, 255):
        x = torch.stack([torch.full_like(green, float(levels[r])), green, blue], 1)[..., None, None]
        lp = likelihoods.log_prob("logistic", params.expand(len(x), -1, -1, -1), x, mixtures=k)
        assert abs(float(torch.logsumexp(lp, 0) - log_p_red[r])) < 1e-4, r


def test_logistic_likelihood_fitted_alone_gets_far_below_8_bits_per_dim():
    """What a decoder could reach if it learnt perfectly: Adam on the decoder's output itself."""
    x = _photo_like(16)

    def fit(shape, steps=50):
        p = torch.zeros(shape, requires_grad=True)
        opt = torch.optim.Adam([p], lr=0.1)
        for _ in range(steps):
            loss = -likelihoods.log_prob("logistic", p.expand(len(x), -1, 32, 32), x, mixtures=3).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return _bits_per_dim(loss, x)

    n_params = likelihoods.num_params("logistic", 3, 3)
    assert fit((16, n_params, 32, 32)) < 4.0  # one map per image: memorised in 50 steps (~2.9)
    # One parameter set for every pixel of every image, the pixel histogram: only a likelihood that models a
    # pixel's R, G and B jointly gets far below 8 bits (~6.7); independent channels stay at ~7.9.
    assert fit((1, n_params, 1, 1)) < 7.3


def test_vae_initialisation_passes_the_image_to_z_and_z_to_the_output():
    # The failed cifar10-vae-cpu run: with PyTorch's default initialisation the signal shrank ~3.5x per SiLU
    # layer, q(z | x) was the same for every image (std 3e-5) and the decoder ignored z (7e-5), so the KL
    # collapsed before the decoder learnt anything, and the model stayed at the pixel histogram.
    torch.manual_seed(0)
    net = VAE(32, 3, latent_dim=128, width=32, hidden=512, likelihood="logistic", mixtures=3)
    with torch.no_grad():
        mu, _ = net.encode(_photo_like(16))
        out = net.decode(torch.randn(16, 128))
    assert mu.std(0).mean() > 0.05
    assert out.std(0).mean() > 0.01


def test_tiny_colour_vae_learns_real_looking_images_in_a_few_dozen_steps():
    torch.manual_seed(0)
    x = _photo_like(16)
    net = VAE(32, 3, latent_dim=16, width=16, hidden=64, likelihood="logistic", mixtures=3)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(40):
        params, _, mu, logvar = net(x)
        rec = -net.log_prob(params, x).mean()
        loss = rec + gaussian_kl(mu, logvar).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert _bits_per_dim(rec, x) < 7.3  # ~6.7; the broken init and independent channels stayed at ~7.9


def test_bernoulli_log_prob_by_hand():
    logits = torch.tensor([[[[0.0, 2.0]]]])
    x = torch.tensor([[[[1.0, 0.0]]]])
    expect = math.log(0.5) + math.log(1 - 1 / (1 + math.exp(-2.0)))
    assert abs(float(likelihoods.log_prob("bernoulli", logits, x)) - expect) < 1e-6


def test_elbo_is_below_the_importance_sampled_likelihood_which_rises_with_k():
    torch.manual_seed(0)
    net = VAE(28, 1, latent_dim=4, width=8, hidden=32)
    x = (torch.rand(64, 1, 28, 28) < 0.3).float()
    rec, kl = elbo_terms(net, x, None, torch.Generator().manual_seed(0))
    elbo = float(-(rec + kl).mean())
    ll = [float(importance_log_likelihood(net, x, None, k, torch.Generator().manual_seed(1)).mean()) for k in (1, 16, 256)]
    assert elbo <= ll[1] and ll[0] < ll[1] < ll[2], (elbo, ll)
    assert abs(ll[0] - elbo) < 0.02 * abs(elbo)  # k=1 is an unbiased estimate of the ELBO


def test_training_improves_reconstructions_of_a_tiny_dataset(tmp_path):
    cfg = vae_config(max_steps=150, batch_size=32, checkpoint_every=1000, sample_every=1000, log_every=10)
    run = train(cfg, tmp_path / "run", progress=False).run_dir
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["neg_elbo"] for r in records if "neg_elbo" in r]
    assert losses[-1] < 0.75 * losses[0], losses
    model = genforge.load(run, precision="no")
    images = genforge.data.load_image_dataset("mnist-mini", split="test").images[:64].numpy()
    untrained = VAE(28, 1, latent_dim=4, width=8, hidden=32)
    model_untrained = genforge.load(run, precision="no")
    model_untrained.net.load_state_dict(untrained.state_dict())

    def mse(m):
        return float(((m.reconstruct(images).astype(float) - images) / 255.0).__pow__(2).mean())

    assert mse(model) < 0.7 * mse(model_untrained)


def test_resume_is_exact_with_kl_warmup_free_bits_and_labels(tmp_path):
    model = {"kl_warmup_steps": 5, "free_bits": 0.1, "conditional": True}
    full = train(vae_config(model, max_steps=6, checkpoint_every=100), tmp_path / "full", progress=False).run_dir
    part = tmp_path / "part"
    train(vae_config(model, max_steps=3, checkpoint_every=100), part, progress=False)
    train(vae_config(model, max_steps=6, checkpoint_every=100), part, resume=True, progress=False)
    a, b = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_iwae_training_runs_and_its_loss_is_the_tighter_bound(tmp_path):
    run = train(vae_config({"iw_samples": 4}, max_steps=3), tmp_path / "iw", progress=False).run_dir
    rec = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line][-1]
    assert rec["loss"] <= rec["neg_elbo"] + 1.0  # the IWAE bound is at least as tight as the ELBO (one-draw noise)
    with pytest.raises(UserError, match="iw_samples"):
        train(vae_config({"iw_samples": 4, "beta": 2.0}), tmp_path / "bad", progress=False)


def test_sampling_is_reproducible_by_seed_and_temperature_shrinks_the_prior(runs):
    model = genforge.load(runs[0], precision="no")
    a, b = model.generate(8, seed=5), model.generate(8, seed=5)
    c = model.generate(8, seed=6)
    assert a.shape == (8, 28, 28, 1) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    cold = model.generate(8, seed=5, temperature=0.0)
    assert (cold == cold[0]).all()  # z = 0 for every image
    assert "temperature" in model.options()
    with pytest.raises(UserError, match="top_k"):
        model.generate(2, top_k=3)
    with pytest.raises(UserError, match="out of range"):
        model.generate(2, temperature=-1)


def test_encode_decode_interpolate_and_labels(runs):
    plain, cond = (genforge.load(r, precision="no") for r in runs)
    images = genforge.data.load_image_dataset("mnist-mini", split="test").images[:3].numpy()
    z = plain.encode(images)
    assert z.shape == (3, 4) and z.dtype == np.float32
    assert plain.decode(z).shape == (3, 28, 28, 1)
    walk = plain.interpolate(1, 2, steps=5)
    assert walk.shape == (5, 28, 28, 1)
    assert np.array_equal(walk[0], plain.decode(plain.method.latents(plain.net, 1, torch.Generator().manual_seed(1), "cpu").numpy())[0])
    assert plain.interpolate(images[0], images[1], steps=3).shape == (3, 28, 28, 1)
    sevens = cond.generate(4, seed=0, labels=7)
    others = cond.generate(4, seed=0, labels=1)
    assert not np.array_equal(sevens, others)  # the label reaches the decoder
    with pytest.raises(UserError, match="not class-conditional"):
        plain.generate(2, labels=7)
    colour = np.zeros((1, 28, 28, 3), np.uint8)
    with pytest.warns(UserWarning, match="converted"):
        plain.encode(colour)


def test_gan_has_no_encoder(tmp_path):
    gan = train(tiny_config(max_steps=2), tmp_path / "gan", progress=False).run_dir
    model = genforge.load(gan, precision="no")
    with pytest.raises(UserError, match="no encoder"):
        model.encode(np.zeros((1, 28, 28, 1), np.uint8))


def test_cli_reconstruct_interpolate_temperature_and_label(runs, tmp_path):
    r = CliRunner()
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray((np.random.default_rng(0).random((40, 60, 3)) * 255).astype(np.uint8)).save(folder / "a.png")
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(folder / "b.png")
    res = r.invoke(app, ["reconstruct", str(runs[0]), "--in", str(folder), "--out", str(tmp_path / "rec.png")])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "resized 1 of 2" in text and "converted 1 of 2" in text
    grid = np.asarray(Image.open(tmp_path / "rec.png"))
    assert grid.shape[1] > 2 * 28  # input and reconstruction side by side
    res = r.invoke(app, ["sample", str(runs[0]), "--interpolate", "3", str(folder / "b.png"), "--walk-steps", "4",
                         "--out", str(tmp_path / "walk.png")])
    assert res.exit_code == 0 and "4 images" in " ".join(res.output.split()), res.output
    res = r.invoke(app, ["sample", str(runs[0]), "--temperature", "0.5", "--n", "4", "--out", str(tmp_path / "t.npy")])
    assert res.exit_code == 0, res.output
    res = r.invoke(app, ["sample", str(runs[1]), "--label", "7", "--n", "4", "--out", str(tmp_path / "s.npy")])
    assert res.exit_code == 0, res.output
    res = r.invoke(app, ["reconstruct", str(runs[0]), "--in", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and "No such image" in " ".join(res.output.split())
    (folder / "bad.png").write_bytes(b"not a png")
    res = r.invoke(app, ["reconstruct", str(runs[0]), "--in", str(folder), "--out", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and "bad.png" in "".join(res.output.split())


def test_likelihood_metrics_in_nats_for_binarised_and_bits_per_dim_for_8_bit(runs, tmp_path):
    model = genforge.load(runs[0], precision="no")
    m, d = likelihood_metrics(model, k=8, n=40, seed=0)
    assert m["nll_nats"] <= m["neg_elbo_nats"] + 1e-6 + 3 * d["nll_std_error"]
    assert m["neg_elbo_nats"] == pytest.approx(m["rec_nats"] + m["kl_nats"])
    assert 0 < m["reconstruction_mse"] < 1 and d["likelihood_k"] == 8 and d["likelihood_n"] == 40
    again, _ = likelihood_metrics(model, k=8, n=40, seed=0)
    assert again == m  # seeded
    logistic = train(vae_config({"likelihood": "logistic", "mixtures": 2}, max_steps=2), tmp_path / "l", progress=False).run_dir
    m, d = likelihood_metrics(genforge.load(logistic, precision="no"), k=4, n=20)
    assert d["likelihood_unit"] == "bits/dim" and 0 < m["nll_bpd"] < 16  # at most ~8 bits per 8-bit value when sane


def test_config_mistakes_are_clear(tmp_path):
    with pytest.raises(UserError, match="likelihood=logistic"):
        train(_colour_bernoulli(tmp_path), tmp_path / "c", progress=False)
    with pytest.raises(UserError, match="labelled"):
        train(_folder_cfg(tmp_path, {"conditional": True, "likelihood": "logistic"}), tmp_path / "d", progress=False)


def _folder(tmp_path):
    folder = tmp_path / "colour"
    if not folder.exists():
        folder.mkdir()
        rng = np.random.default_rng(0)
        for i in range(40):
            Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


def _folder_cfg(tmp_path, model):
    cfg = vae_config(model, max_steps=2).model_dump()
    cfg["data"]["dataset"] = f"folder:{_folder(tmp_path)}"
    return validate(cfg)


def _colour_bernoulli(tmp_path):
    return _folder_cfg(tmp_path, {"likelihood": "bernoulli"})


@pytest.mark.parametrize("preset", ["mnist-vae", "mnist-cvae", "cifar10-vae-cpu"])
def test_presets_train_a_few_steps_and_sample(preset, tmp_path):
    raw = read_raw(preset)
    assert raw["family"] == "vae"
    raw["train"].update(max_steps=2, epochs=None, batch_size=8, eval_every=2, eval_samples=100, sample_every=2,
                        mixed_precision="no")
    raw["model"].update(width=8, hidden=32)
    if raw["data"]["dataset"] != "mnist":
        raw["data"]["dataset"] = f"folder:{_folder(tmp_path)}"
    else:
        raw["data"]["dataset"] = "mnist-mini"
    run = train(validate(raw), tmp_path / preset, progress=False).run_dir
    model = genforge.load(run)
    assert model.generate(3, seed=0).shape[0] == 3
    assert (run / "samples" / "final-reconstructions.png").exists()
    assert latest_checkpoint(run) is not None


def test_max_minutes_stops_early_with_weights_and_a_resumable_checkpoint(tmp_path):
    cfg = vae_config(max_steps=10_000, max_minutes=0.001, checkpoint_every=10_000)
    result = train(cfg, tmp_path / "t", progress=False)
    assert 1 <= result.step < 10_000
    assert (tmp_path / "t" / "model.safetensors").exists() and latest_checkpoint(tmp_path / "t").name.endswith(str(result.step))
    again = train(cfg, tmp_path / "t", resume=True, progress=False)
    assert again.step > result.step


def test_data_subset_trains_on_a_seeded_part_and_refuses_too_many(tmp_path):
    cfg = vae_config(max_steps=1, batch_size=10).model_dump()
    cfg["data"]["subset"] = 50
    run = train(validate(cfg), tmp_path / "s", progress=False).run_dir
    meta = json.loads((run / "config.json").read_text())
    assert meta["data"]["subset"] == 50
    cfg["data"]["subset"] = 10**6
    with pytest.raises(UserError, match="data.subset"):
        train(validate(cfg), tmp_path / "s2", progress=False)


def test_gan_walks_between_seeds(tmp_path):
    gan = train(tiny_config(max_steps=2), tmp_path / "gan", progress=False).run_dir
    model = genforge.load(gan, precision="no")
    walk = model.interpolate(3, 4, steps=5)
    assert walk.shape == (5, 28, 28, 1)
    assert np.array_equal(walk[0], model.interpolate(3, 9, steps=2)[0])  # the walk starts at seed 3's image
    assert not np.array_equal(walk[0], walk[-1])


def test_eval_passes_sample_options_and_refuses_unknown_ones(runs, tmp_path):
    from genforge.evaluation import evaluate_run

    gan = train(tiny_config(max_steps=2), tmp_path / "gan", progress=False).run_dir
    with pytest.raises(UserError, match="temperature"):
        evaluate_run(gan, n=20, sample_options={"temperature": 0.5}, write=False)
