"""The video families: the space-time UNet and the clip GAN, trained through the one loop on Moving MNIST."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import genforge
from genforge.cli import app
from genforge.errors import UserError
from genforge.models.unet import UNet
from genforge.models.video_gan import ClipDiscriminator, ClipGenerator
from genforge.training import train
from genforge.training.checkpoint import latest_checkpoint
from genforge.training.config import read_raw, validate

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # MNIST, from which the clips are drawn


def _perturb(module):
    """Zero-initialised output layers make a fresh network ignore its temporal layers; give them weights."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def test_temporal_layers_are_used_permuting_frames_changes_each_frames_output():
    net = UNet(16, 1, 8, None, 1, 8, 10, 0.0, frames=4).eval()
    _perturb(net)
    x, t, y = torch.randn(2, 4, 1, 16, 16), torch.full((2,), 0.5), torch.tensor([1, 2])
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        out, out_perm = net(x, t, y), net(x[:, perm], t, y)
    assert out.shape == x.shape
    # a per-frame network would give the same frames, permuted; the temporal layers make each frame see the others
    assert not torch.allclose(out[:, perm], out_perm, atol=1e-4)
    # and without temporal layers (frames=0, the image UNet on each frame) permuting commutes exactly
    image = UNet(16, 1, 8, None, 1, 8, 10, 0.0).eval()
    image.load_state_dict({k: v for k, v in net.state_dict().items() if "temporal" not in k})
    with torch.no_grad():
        per_frame = image(x.flatten(0, 1), t.repeat_interleave(4), y.repeat_interleave(4)).unflatten(0, (2, 4))
        per_frame_perm = image(x[:, perm].flatten(0, 1), t.repeat_interleave(4), y.repeat_interleave(4)).unflatten(0, (2, 4))
    torch.testing.assert_close(per_frame[:, perm], per_frame_perm)


def test_video_unet_starts_as_the_image_unet_on_each_frame():
    """Zero-initialised temporal outputs: at initialisation the clip model equals the image model frame by frame."""
    torch.manual_seed(0)
    net = UNet(16, 1, 8, None, 1, 8, 0, 0.0, frames=3).eval()
    image = UNet(16, 1, 8, None, 1, 8, 0, 0.0).eval()
    image.load_state_dict({k: v for k, v in net.state_dict().items() if "temporal" not in k})
    with torch.no_grad():
        net.conv_out.weight.normal_()  # a visible output, so the comparison is not 0 == 0
        image.conv_out.weight.copy_(net.conv_out.weight)
        x, t = torch.randn(2, 3, 1, 16, 16), torch.tensor([0.2, 0.7])
        torch.testing.assert_close(net(x, t), image(x.flatten(0, 1), t.repeat_interleave(3)).unflatten(0, (2, 3)))


def test_clip_generator_runs_any_length_and_shares_content_across_frames():
    G = ClipGenerator(16, 1, 4, z_dim=12, motion_dim=4, width=8, num_classes=10, embed_dim=4).eval()
    z, y = torch.randn(3, 12), torch.tensor([1, 5, 9])
    with torch.no_grad():
        short, long = G(z, y), G(z, y, frames=7)
    assert short.shape == (3, 4, 1, 16, 16) and long.shape == (3, 7, 1, 16, 16)
    torch.testing.assert_close(long[:, :4], short)  # the GRU unrolls further; the first frames are the same
    assert not torch.allclose(long[:, 0], long[:, 6])  # the motion code moves
    D = ClipDiscriminator(16, 1, 8, 10, spectral_norm=True)
    assert D(long, y).shape == (3, 2)  # [clip score, mean frame score]
    with pytest.raises(ValueError, match="motion_dim"):
        ClipGenerator(16, 1, 4, z_dim=8, motion_dim=8)


def test_shift_motion_moves_one_image_per_clip_with_background_coming_in():
    from genforge.models.video_gan import shifted

    image = -torch.ones(1, 1, 8, 8)
    image[0, 0, 2:4, 3] = 1.0
    offsets = torch.tensor([[[0.0, 0.0], [2 / 8, 0.0], [0.0, 4 / 8], [-6 / 8, 0.0]]])  # 0, +1 px x, +2 px y, -3 px x
    out = shifted(image, offsets)[0, :, 0]
    torch.testing.assert_close(out[0], image[0, 0])
    torch.testing.assert_close(out[1, :, 1:], image[0, 0, :, :-1])  # moved right by one pixel
    torch.testing.assert_close(out[2, 2:], image[0, 0, :-2])  # moved down by two
    assert (out[1, :, 0] == -1).all() and (out[3, :, -3:] == -1).all()  # background enters at the edges
    G = ClipGenerator(16, 1, 4, z_dim=12, motion_dim=4, width=8, num_classes=10, embed_dim=4, motion="shift").eval()
    with torch.no_grad():
        clips = G(torch.randn(2, 12), torch.tensor([3, 4]), frames=6)
    assert clips.shape == (2, 6, 1, 16, 16)
    with pytest.raises(ValueError, match="motion"):
        ClipGenerator(16, 1, 4, z_dim=12, motion_dim=4, motion="warp")


# -- through the loop ------------------------------------------------------------------------------------------
def video_config(family: str, model_over: dict | None = None, **train_over):
    model = ({"z_dim": 12, "motion_dim": 4, "g_width": 8, "d_width": 8, "embed_dim": 4, "loss": "hinge",
              "d_spectral_norm": True, "conditional": True} if family == "gan" else
             {"width": 8, "objective": "flow", "steps": 3, "conditional": True, "guidance": 2.0})
    model.update(model_over or {})
    return validate({
        "name": f"tiny-video-{family}", "family": family,
        "data": {"dataset": "moving-mnist", "video": {"frames": 4, "size": 16, "clips": 256}},
        "model": model,
        "train": {"batch_size": 4, "max_steps": 4, "mixed_precision": "no", "log_every": 2, "sample_every": 4,
                  "checkpoint_every": 2, "seed": 3, "lr": 1e-3, **train_over},
    })


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("video")
    return {f: train(video_config(f), base / f, SHARED_DATA, progress=False).run_dir for f in ("gan", "diffusion")}


@pytest.mark.parametrize("family", ["gan", "diffusion"])
def test_video_runs_load_as_video_generators_reproducible_by_seed(runs, family):
    gen = genforge.load(runs[family], precision="no")
    assert gen.modality == "video" and gen.frames == 4 and gen.fps > 0
    assert "frames" in gen.options()
    a = gen.generate(3, seed=5, labels=[3, 7, 1])
    assert a.shape == (3, 4, 16, 16, 1) and a.dtype == np.uint8
    assert np.array_equal(a, gen.generate(3, seed=5, labels=[3, 7, 1]))
    assert not np.array_equal(a, gen.generate(3, seed=6, labels=[3, 7, 1]))
    assert gen.generate(2, seed=1, labels=2, frames=6).shape == (2, 6, 16, 16, 1)
    # a clip depends on its own seed, not on what shares its batch (a server merges requests)
    jobs = [gen.job(2, seed=1, labels=3), gen.job(1, seed=2, labels=4)]
    together = gen.run(jobs)
    np.testing.assert_array_equal(together[0], gen.generate(2, seed=1, labels=3))
    np.testing.assert_array_equal(together[1], gen.generate(1, seed=2, labels=4))
    samples = sorted((runs[family] / "samples").glob("*.png"))
    assert samples, "training wrote no filmstrip"
    meta = json.loads((runs[family] / "config.json").read_text())
    assert meta["data"]["frames"] == 4 and meta["data"]["classes"] == [str(d) for d in range(10)]
    with pytest.raises(UserError):
        gen.generate(2, frames=1)


@pytest.mark.parametrize("family", ["gan", "diffusion"])
def test_video_resume_is_exact(family, tmp_path):
    full = train(video_config(family, checkpoint_every=100), tmp_path / "full", SHARED_DATA, progress=False).run_dir
    part = tmp_path / "part"
    train(video_config(family, max_steps=2, checkpoint_every=100), part, SHARED_DATA, progress=False)
    train(video_config(family, checkpoint_every=100), part, SHARED_DATA, resume=True, progress=False)
    a, b = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("preset", ["moving-mnist-gan", "moving-mnist-diffusion", "moving-mnist-gan-gpu",
                                    "moving-mnist-diffusion-gpu"])
def test_video_presets_train_a_few_steps_and_sample(preset, tmp_path):
    raw = read_raw(preset)
    assert raw["data"]["dataset"] == "moving-mnist"
    raw["train"].update(max_steps=2, epochs=None, budget_minutes=None, batch_size=2, sample_every=2,
                        eval_every=None, mixed_precision="no")
    raw["data"]["video"].update(clips=64, frames=4)
    if raw["family"] == "gan":
        raw["model"].update(g_width=8, d_width=8)
    else:
        raw["model"].update(width=8, res_blocks=1)
    run = train(validate(raw), tmp_path / preset, SHARED_DATA, progress=False).run_dir
    model = genforge.load(run, precision="no")
    clips = model.generate(2, seed=0, labels=3, **({"steps": 2} if raw["family"] == "diffusion" else {}))
    assert clips.shape[:2] == (2, 4) and clips.shape[2] == clips.shape[3] == raw["data"]["video"]["size"]
    assert latest_checkpoint(run) is not None


def test_video_config_mistakes_are_one_line_errors(tmp_path):
    raw = video_config("gan").model_dump()
    raw["data"]["image_size"] = 32
    with pytest.raises(UserError, match="data.video.size"):
        train(validate(raw), tmp_path / "a", SHARED_DATA, progress=False)
    raw = video_config("gan").model_dump()
    raw["model"]["motion_dim"] = 12
    with pytest.raises(UserError, match="motion_dim"):
        train(validate(raw), tmp_path / "b", SHARED_DATA, progress=False)


def test_data_info_describes_moving_mnist_and_a_folder_of_clips(tmp_path):
    r = CliRunner().invoke(app, ["data", "info", "moving-mnist", "--data-dir", str(SHARED_DATA)])
    assert r.exit_code == 0, r.output
    assert "clips per epoch (generated), shape [16, 64, 64, 1]" in r.output and "t10k-images-idx3-ubyte.gz" in r.output
    from genforge.media.video import write_clips

    clips = np.random.default_rng(0).integers(0, 255, (2, 16, 64, 64, 1), dtype=np.uint8)
    for cls in ("a", "b"):
        write_clips(clips, str(tmp_path / "clips" / cls) + "/", 8.0, fmt="gif")
    r = CliRunner().invoke(app, ["data", "info", f"folder:{tmp_path / 'clips'}"])
    assert r.exit_code == 0, r.output
    assert "train: 4 clips, shape [16, 64, 64, 1]" in r.output and "classes (2): a, b" in r.output
