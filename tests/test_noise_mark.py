"""The diffusion noise mark (diffusion/noise_mark.py): a keyed pattern in the starting noise's spectrum, planted by
the generators (torch and runtime alike), read back by inverting the sampler (`genforge verify --model`)."""

import json
import math

import numpy as np
import pytest
import torch

from genforge.diffusion import FlowSchedule, VPSchedule, noise_mark, sample
from genforge.diffusion.samplers import invert
from genforge.media.watermark import MarkKey

KEY = MarkKey(b"test key for the noise mark, 32 bytes")
OTHER = MarkKey(b"another key for the noise mark, 32 b")
SHAPE = (1, 28, 28)


def _ks(values: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance of the values' empirical distribution from N(0, 1)."""
    v = np.sort(values.ravel())
    n = len(v)
    cdf = 0.5 * (1 + np.array([math.erf(t / math.sqrt(2)) for t in v]))
    return float(max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n)))


def test_planted_noise_stays_standard_normal_and_keeps_the_rest_of_its_spectrum():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, *SHAPE)).astype(np.float32)
    kp = noise_mark.key_pattern(KEY, SHAPE)
    y = noise_mark.plant(x, kp)
    assert y.dtype == np.float32 and y.shape == x.shape
    critical = 1.63 / math.sqrt(y.size)  # KS at the 1% level, pooled pixels
    assert _ks(y) < critical
    assert abs(y.mean()) < 0.01 and abs(y.std() - 1) < 0.01
    ring = noise_mark.region(SHAPE[1:])
    fx, fy = np.fft.fft2(x, norm="ortho"), np.fft.fft2(y, norm="ortho")
    assert np.allclose(fx[..., ~ring], fy[..., ~ring], atol=1e-4)  # the rest of the noise is untouched
    assert np.allclose(fy[..., ring], np.broadcast_to(kp[..., ring], fy[..., ring].shape), atol=1e-4)
    # over keys the marked noise is the noise it replaces: pooled over one key per image, still N(0, 1)
    per_key = np.concatenate([noise_mark.plant(x[i:i + 1], noise_mark.pattern(100 + i, SHAPE)) for i in range(100)])
    assert _ks(per_key) < critical
    # its spectrum stays flat: the ring's mean power is the rest's
    power = np.abs(fy) ** 2
    assert abs(power[..., ring].mean() - power[..., ~ring].mean()) < 0.05


def test_the_statistic_on_unmarked_noise_has_the_false_positive_rate_theory_says():
    null = noise_mark.null_check(20000, SHAPE)
    assert abs(null["mean"]) < 0.03 and abs(null["std"] - 1) < 0.03
    assert 0.0075 <= null["fpr_1e-2"] <= 0.0125  # 1e-2 +- 2.5 standard errors
    assert null["fpr_1e-3"] <= 0.002
    # and on noise that is not white (a steep spectrum, as real digits invert to): self-normalised, still N(0, 1)
    rng = np.random.default_rng(1)
    spec = np.fft.fft2(rng.standard_normal((5000, *SHAPE)), norm="ortho")
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(28) * 28, np.fft.fftfreq(28) * 28, indexing="ij"))
    coloured = np.fft.ifft2(spec / (1 + k), norm="ortho").real
    z = noise_mark.z_scores(coloured, noise_mark.key_pattern(KEY, SHAPE))
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05 and np.mean(z > 2.3263) < 0.016


def test_planted_noise_is_found_under_its_key_and_not_under_another():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, *SHAPE)).astype(np.float32)
    y = noise_mark.plant(x, noise_mark.key_pattern(KEY, SHAPE))
    z = noise_mark.z_scores(y, noise_mark.key_pattern(KEY, SHAPE))
    assert z.min() > 9  # ~sqrt(102 pairs) for an exact round trip
    # a noisy recovery (correlation ~0.6, what the inversion of mnist-ddpm gives) still clears the threshold
    rough = 0.6 * y + 0.8 * rng.standard_normal(y.shape)
    assert (noise_mark.z_scores(rough, noise_mark.key_pattern(KEY, SHAPE)) > 3.09).mean() > 0.95
    wrong = noise_mark.z_scores(y, noise_mark.key_pattern(OTHER, SHAPE))
    assert np.abs(wrong).max() < 4
    found = noise_mark.detect(y[0], noise_mark.key_pattern(KEY, SHAPE), KEY.id)
    assert found["detected"] and found["mark"] == "noise" and found["key_id"] == KEY.id and found["p_value"] < 1e-20
    assert not noise_mark.detect(y[0], noise_mark.key_pattern(OTHER, SHAPE), OTHER.id)["detected"]


def test_key_patterns_are_real_keyed_and_sized_to_the_image():
    a, b = noise_mark.key_pattern(KEY, SHAPE), noise_mark.key_pattern(OTHER, SHAPE)
    assert np.abs(np.fft.ifft2(a).imag).max() < 1e-12  # Hermitian: the planted noise stays real
    assert not np.allclose(a, b) and np.allclose(a, noise_mark.key_pattern(KEY, SHAPE))
    assert noise_mark.key_pattern(KEY, (3, 32, 32)).shape == (3, 32, 32)
    assert not noise_mark.applies((1, 8, 8)) and noise_mark.applies((1, 16, 16)) and noise_mark.applies(SHAPE)


@pytest.mark.parametrize("schedule,kind", [(FlowSchedule(), "flow"), (VPSchedule("linear", 1000), "v")])
def test_inverting_the_deterministic_sampler_returns_its_starting_noise(schedule, kind):
    """On an exact denoiser of N(0, c^2) data, DDIM (eta 0) run backwards then forwards returns the noise."""
    c = 0.5

    def model(x, t):
        a, s = (float(v) for v in schedule.alpha_sigma(t))
        x0 = a * c**2 / (a**2 * c**2 + s**2) * x
        eps = (x - a * x0) / s if s > 0 else x * 0
        return x0, eps

    rng = np.random.default_rng(3)
    noise = rng.standard_normal((4, *SHAPE))
    image = sample(model, noise, schedule, "ddim", 200)
    back = invert(model, image, schedule, 200)
    assert np.corrcoef(back.ravel(), noise.ravel())[0, 1] > 0.999
    assert np.abs(back - noise).mean() < 0.05


def _Gen(meta):
    """The marking side of a generator (run or export), without a network."""
    from genforge.marking import Marking

    class Gen(Marking):
        def _noise_shape(self):
            return SHAPE

    gen = Gen()
    gen.meta = meta
    return gen


def test_the_torch_and_runtime_paths_plant_the_same_noise_and_record_it():
    run = _Gen({"family": "diffusion", "model": {"noise_mark": True}})
    export = _Gen({"family": "diffusion", "family_config": {"noise_mark": True}})
    for gen in (run, export):
        gen.use_mark_key(KEY)
        assert gen.noise_mark_on
    x = np.random.default_rng(4).standard_normal((3, *SHAPE)).astype(np.float32)
    t = run._plant_noise_mark({"x": torch.from_numpy(x.copy()), "seeds": torch.zeros(3)})
    n = export._plant_noise_mark({"x": x.copy(), "seeds": np.zeros(3)})
    assert isinstance(t["x"], torch.Tensor) and t["x"].dtype == torch.float32
    assert np.array_equal(t["x"].numpy(), n["x"])
    assert noise_mark.z_scores(n["x"], noise_mark.key_pattern(KEY, SHAPE)).min() > 9
    assert run.record(0).parameters == {"noise_mark": True}
    # off: not asked for, no key, another family, or switched off for one generator
    off = _Gen({"family": "diffusion", "model": {}})
    off.use_mark_key(KEY)
    nokey = _Gen({"family": "diffusion", "model": {"noise_mark": True}})
    nokey.use_mark_key(False)
    gan = _Gen({"family": "gan", "model": {"noise_mark": True}})
    gan.use_mark_key(KEY)
    for gen in (off, nokey, gan):
        assert not gen.noise_mark_on and gen._plant_noise_mark({"x": x})["x"] is x
        assert "noise_mark" not in gen.record(0).parameters
    run.use_noise_mark(False)
    assert not run.noise_mark_on
    off.use_noise_mark(True)
    assert off.noise_mark_on


# -- a tiny diffusion run end to end (untrained: the mark is not expected to survive its inversion) -------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from genforge.training import train, validate
    from tiny import tiny_config

    cfg = tiny_config(max_steps=2).model_dump()
    cfg["family"] = "diffusion"
    cfg["model"] = {"width": 8, "steps": 3, "objective": "flow", "noise_mark": True}
    cfg["train"].update(sample_every=1000, checkpoint_every=1000)
    return train(validate(cfg), tmp_path_factory.mktemp("noise-mark") / "flow", progress=False).run_dir


def test_a_run_with_noise_mark_plants_it_and_the_runtime_does_the_same(tiny_run, tmp_path):
    import genforge
    from genforge.export import export
    from genforge.runtime import load as load_export

    gen = genforge.load(tiny_run, precision="no")
    gen.use_mark_key(KEY)
    assert gen.noise_mark_on and gen.record(1).parameters["noise_mark"] is True
    job = gen.job(4, seed=1)
    assert noise_mark.z_scores(job.drawn["x"].numpy(), noise_mark.key_pattern(KEY, SHAPE)).min() > 9
    gen.use_noise_mark(False)
    plain = gen.job(4, seed=1)
    assert np.abs(noise_mark.z_scores(plain.drawn["x"].numpy(), noise_mark.key_pattern(KEY, SHAPE))).max() < 5
    # images from marked and unmarked noise: the same mean statistics (an untrained model: a cheap proxy)
    gen.use_mark_key(False)
    a = gen.run([job])[0].astype(float)
    b = gen.run([plain])[0].astype(float)
    assert abs(a.mean() - b.mean()) < 0.1 * b.std() + 2 and abs(a.std() - b.std()) < 0.2 * b.std() + 2

    ex = load_export(export(tiny_run, tmp_path / "export"))
    ex.use_mark_key(KEY)
    assert ex.noise_mark_on
    drawn = ex.draw(4, seed=1)
    assert noise_mark.z_scores(drawn["x"], noise_mark.key_pattern(KEY, SHAPE)).min() > 9
    # both invert the same way (fp32 here): the noise the run's generator finds is the export's
    images = ex.render(drawn)
    x = ex._inversion_input(images)
    assert np.allclose(gen.invert_noise(x, 3), ex.invert_noise(x, 3), atol=1e-3)
    found = ex.detect_noise_mark(images[0])
    assert found["mark"] == "noise" and found["view"] == "as found" and {"z", "p_value", "detected"} <= set(found)


def test_verify_reports_the_noise_mark_as_its_own_layer(tiny_run, tmp_path):
    from typer.testing import CliRunner

    from genforge.cli import app

    key_file = tmp_path / "key"
    key_file.write_text(KEY.secret.decode())
    runner = CliRunner()
    res = runner.invoke(app, ["sample", str(tiny_run), "--n", "1", "--out", str(tmp_path / "out") + "/", "--seed", "2",
                              "--mark-key", str(key_file), "--no-progress"])
    assert res.exit_code == 0, res.output
    image = next((tmp_path / "out").glob("*.png"))
    res = runner.invoke(app, ["verify", str(image), "--key", str(key_file), "--model", str(tiny_run), "--json"])
    report = json.loads(res.output)
    noise = [m for m in report["marks"] if m.get("mark") == "noise"]
    assert len(noise) == 1 and noise[0]["key_id"] == KEY.id and "p_value" in noise[0]
    assert len(report["marks"]) == 2  # the post-hoc mark's entry and the noise mark's
    assert report["metadata"]["parameters"]["noise_mark"] is True
    res = runner.invoke(app, ["verify", str(image), "--key", str(key_file), "--json"])
    assert any("noise mark was not checked" in n for n in json.loads(res.output)["notes"])
    res = runner.invoke(app, ["verify", str(image), "--key", str(key_file), "--model", str(tiny_run)])
    assert "noise mark (key" in res.output
