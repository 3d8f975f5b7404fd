"""`genforge export` of the video families: the runtime samples clips without torch, within tolerance of PyTorch
on the same drawn inputs, at the trained length and at another."""

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import genforge
from genforge.cli import app
from genforge.export import export
from genforge.runtime import load as load_export
from genforge.training import train
from test_video_models import SHARED_DATA, video_config


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    base = tmp_path_factory.mktemp("video-export")
    out = {}
    for name, family, model in (("gan", "gan", {}), ("gan-shift", "gan", {"clip_motion": "shift"}),
                                ("diffusion", "diffusion", {})):
        run = train(video_config(family, model, max_steps=3), base / name, SHARED_DATA, progress=False).run_dir
        out[name] = (run, export(run, base / f"{name}-export"))
    return out


@pytest.mark.parametrize("family,options", [("gan", {}), ("gan", {"frames": 7}), ("gan-shift", {"frames": 5}),
                                            ("diffusion", {"guidance": 2.0}),
                                            ("diffusion", {"frames": 6, "sampler": "ddim", "steps": 3, "eta": 1.0})])
def test_exported_clips_match_pytorch_on_the_same_inputs(exported, family, options):
    run, out = exported[family]
    model, ex = genforge.load(run, precision="no"), load_export(out)
    assert ex.modality == "video" and ex.frames == model.frames and ex.fps == model.fps
    assert ex.options() == model.options()
    job = model.job(3, seed=4, labels=[1, 5, 9], **options)
    with torch.no_grad():
        ref = model.method.render(model.net, job.drawn, "cpu", **job.options).float().numpy()
    got = ex.family.render({k: v.numpy() for k, v in job.drawn.items()}, **job.options)
    frames = options.get("frames", model.frames)
    assert got.shape == ref.shape == (3, frames, 1, 16, 16)
    assert np.abs(got - ref).max() < 1e-4, np.abs(got - ref).max()
    a, b = model.run([job])[0], ex.render({k: v.numpy() for k, v in job.drawn.items()}, **job.options)
    assert a.shape == b.shape == (3, frames, 16, 16, 1) and np.mean(a != b) < 1e-3


def test_runtime_generates_clips_by_seed_and_the_cli_writes_them(exported, tmp_path):
    _, out = exported["gan"]
    ex = load_export(out)
    a = ex.generate(2, seed=3, labels=7)
    assert a.shape == (2, ex.frames, 16, 16, 1) and np.array_equal(a, ex.generate(2, seed=3, labels=7))
    r = CliRunner().invoke(app, ["sample", str(out), "--n", "2", "--label", "4", "--out", str(tmp_path / "c.gif"),
                                 "--seed", "1", "--no-mark"])
    assert r.exit_code == 0, r.output
    from genforge.media.video import decode_clip

    frames, fps, record, fmt = decode_clip((tmp_path / "c_000.gif").read_bytes())
    assert fmt == "gif" and frames.shape[0] == ex.frames
