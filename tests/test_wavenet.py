"""WaveNet: causality and receptive field, fast generation against the naive full convolution, seeds and
batches, training through the one loop (windows, held-out score, samples, exact resume), the preset, and the
exported step graph on onnxruntime against PyTorch.

Networks here are tiny (8-16 channels, 6 layers) with weights drawn wide enough that their outputs vary, so a
wrong tap, queue or conditioning changes the ids; training runs use a folder of synthetic tones 1,024 samples
long, or FSDD from shared/data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

import genforge
from genforge.audio.mulaw import mulaw_decode, mulaw_encode
from genforge.errors import UserError
from genforge.methods import get_method
from genforge.methods.wavenet import WaveNetMethod, WaveSpec, _validation_windows
from genforge.models.wavenet import WaveNet, WaveNetConfig, WaveNetStep, fast_generate, select_ids, slow_generate
from genforge.runtime.wavenet import WaveNetFamily
from genforge.runtime.wavenet import select_ids as np_select_ids
from genforge.training import apply_overrides, read_raw, train, validate
from genforge.training.checkpoint import latest_checkpoint

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_net(seed=0, kernel_size=2, classes=3, speakers=2, buckets=4, length=120, **kw) -> WaveNet:
    torch.manual_seed(seed)
    cfg = WaveNetConfig(residual_channels=8, skip_channels=16, layers_per_cycle=3, cycles=2, kernel_size=kernel_size,
                        num_classes=classes, num_speakers=speakers, position_buckets=buckets, length=length,
                        classes=tuple(str(i) for i in range(classes)), speakers=tuple(f"s{i}" for i in range(speakers)),
                        **kw)
    net = WaveNet(cfg).eval()
    with torch.no_grad():
        for p in net.parameters():  # wide weights (conditioning included): every path moves the logits
            p.normal_(0, 0.4)
    return net


# ---------------------------------------------------------------- the network


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_causal_through_the_whole_network_with_the_stated_receptive_field(kernel_size):
    net = tiny_net(kernel_size=kernel_size)
    R = net.receptive_field
    assert R == (kernel_size - 1) * 2 * (1 + 2 + 4) + 1
    ids = torch.randint(256, (2, 80), generator=torch.Generator().manual_seed(1))
    lab, spk = torch.tensor([0, 2]), torch.tensor([1, 0])
    with torch.no_grad():
        base = net(ids, lab, spk)
        for t in (0, 30, 79):
            moved = ids.clone()
            moved[:, t] = (moved[:, t] + 97) % 256
            out = net(moved, lab, spk)
            assert torch.equal(out[:, :, :t], base[:, :, :t])  # nothing before t sees sample t
            changed = (out - base).abs().amax((0, 1)) > 1e-6
            assert changed[t]  # the prediction made at t does
            hi = min(80, t + R)
            assert changed[t:hi].all()  # ... and every one within the receptive field
            assert not changed[hi:].any()  # ... and none beyond it


def test_valid_convolutions_give_the_padded_outputs_that_have_a_full_receptive_field():
    net = tiny_net()
    R = net.receptive_field
    ids = torch.randint(256, (3, 60), generator=torch.Generator().manual_seed(2))
    lab, spk = torch.tensor([0, 1, 2]), torch.tensor([1, 1, 0])
    start = torch.tensor([-10, 5, 40])  # each row's clip position: the position spans differ per row
    with torch.no_grad():
        padded = net(ids, lab, spk, start=start)
        valid = net(ids, lab, spk, start=start, pad=False)
        assert valid.shape == (3, 256, 60 - R + 1)
        torch.testing.assert_close(valid, padded[:, :, R - 1:], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(net(ids, lab, spk, start=start, pad=False, last=7), valid[:, :, -7:])
        # the conditioning matters: other labels, speakers or positions change the logits
        for other in [(lab.flip(0), spk, start), (lab, 1 - spk, start), (lab, spk, start + 50)]:
            assert not torch.allclose(net(ids, *other[:2], start=other[2], pad=False), valid)
    with pytest.raises(UserError, match="speakers"):
        net(ids, lab, None)


@pytest.mark.parametrize("kernel_size,temperature", [(2, 1.0), (3, 0.7), (2, 0.0)])
def test_fast_generation_equals_the_slow_full_convolution_sample_for_sample(kernel_size, temperature):
    net = tiny_net(kernel_size=kernel_size, length=120)
    u = torch.rand(3, 150, generator=torch.Generator().manual_seed(3))  # past the clip length: positions clamp
    lab, spk = torch.tensor([2, 0, 1]), torch.tensor([0, 1, 1])
    fast = fast_generate(net, u, lab, spk, temperature)
    slow = slow_generate(net, u, lab, spk, temperature)
    assert torch.equal(fast, slow)  # fp32, exact ids
    assert len(torch.unique(fast)) > (1 if temperature == 0 else 20)  # not a constant (a broken net would be)


def test_silence_queues_are_the_state_after_a_long_silence():
    net = tiny_net()
    w = net.step_weights()
    B = 2
    pos = torch.full((B,), -1)
    bias = net.gate_bias(w, torch.tensor([0, 1]), torch.tensor([1, 0]), B, pos)
    quick = net.silence_queues(bias, w)
    queues = [torch.zeros(s) for s in net.queue_shapes(B)]
    silence = torch.full((B,), net.silence_id)
    for _ in range(net.receptive_field + 5):  # stepping through silence from an empty past
        _, queues = net.step(silence, bias, queues, w)
    for a, b in zip(quick, queues):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_generation_is_reproducible_and_a_clip_does_not_depend_on_its_batch():
    net = tiny_net(length=100)
    spec = WaveSpec(net.config.classes, net.config.speakers, 8000, 100)

    def draw(seed, n=4, labels=None, speakers=None):
        return WaveNetMethod.draw(net, spec, n, labels, torch.Generator().manual_seed(seed), speakers)

    d = draw(5)
    assert d["labels"].tolist() == [0, 1, 2, 0] and d["u"].shape == (4, 100)
    a = WaveNetMethod.render(net, d, "cpu")
    assert a.dtype == torch.float32 and a.shape == (4, 100) and a.abs().max() <= 1
    assert torch.equal(WaveNetMethod.render(net, draw(5), "cpu"), a)  # same seed, same clips
    assert not torch.equal(WaveNetMethod.render(net, draw(6), "cpu"), a)
    for i in range(4):  # each clip alone is the clip of the batch
        row = {k: v[i:i + 1] for k, v in d.items()}
        assert torch.equal(WaveNetMethod.render(net, row, "cpu")[0], a[i])
    # asked-for labels and one speaker for all; generate() is draw + render
    d2 = draw(7, 2, torch.tensor([2, 2]), torch.tensor(1))
    assert d2["labels"].tolist() == [2, 2] and d2["speakers"].tolist() == [1, 1]
    g = WaveNetMethod.generate(net, 2, torch.tensor([2, 2]), torch.tensor(1), torch.Generator().manual_seed(7), "cpu",
                               length=100)
    assert torch.equal(g, WaveNetMethod.render(net, d2, "cpu"))
    # temperature: lower is more peaked
    hot = WaveNetMethod.render(net, d, "cpu", temperature=1.5)
    assert not torch.equal(hot, a)


def test_select_ids_is_the_inverse_cdf_in_torch_and_numpy():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0]])
    u = torch.tensor([0.6, 0.5])
    assert select_ids(logits, u, 1.0).tolist() == [2, 0]
    assert np_select_ids(logits.numpy(), u.numpy(), 1.0).tolist() == [2, 0]
    assert select_ids(logits, torch.tensor([0.0, 0.9999]), 1.0).tolist() == [0, 3]
    assert select_ids(logits, u, 0.0).tolist() == [0, 0]


# ---------------------------------------------------------------- training through the loop

@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    """A folder of two classes of short tones (low, high), centred in silence when loaded: 5 clips each."""
    root = tmp_path_factory.mktemp("tones")
    rng = np.random.default_rng(0)
    for name, hz in (("low", 300.0), ("high", 1200.0)):
        (root / name).mkdir()
        for i in range(5):
            n = int(8000 * rng.uniform(0.08, 0.15))
            t = np.arange(n) / 8000
            x = 0.5 * np.sin(2 * np.pi * hz * t) * np.hanning(n) + 0.01 * rng.standard_normal(n)
            sf.write(str(root / name / f"{i}.wav"), x.astype(np.float32), 8000, subtype="PCM_16")
    return root


def wn_raw(dataset, model=None, **train_cfg):
    return {
        "name": "tiny-wavenet",
        "family": "wavenet",
        "data": {"dataset": dataset, "audio": {"sample_rate": 8000, "length": 1024}},
        "model": {"residual_channels": 8, "skip_channels": 16, "layers_per_cycle": 3, "cycles": 2, "window": 64,
                  "position_buckets": 4, "warmup_steps": 2, **(model or {})},
        "train": {"batch_size": 4, "max_steps": 6, "lr": 3e-3, "beta1": 0.9, "mixed_precision": "no", "ema_decay": 0.9,
                  "log_every": 1, "eval_every": 3, "eval_samples": 100, "sample_every": 1000, "checkpoint_every": 3,
                  "seed": 2, **train_cfg},
    }


def test_training_windows_hold_the_clip_ids_around_the_sound(tones):
    from accelerate.state import PartialState

    cfg = validate(wn_raw(f"folder:{tones}", batch_size=64))
    data = WaveNetMethod.prepare_data(cfg, None, tones, False, PartialState(cpu=True))
    R = data.context
    assert R == 15 and data.ids.dtype == torch.uint8 and data.ids.shape == (9, R + 1024)  # 10 clips, 1 held out
    assert (data.ids[:, :R] == mulaw_encode(0.0)).all()  # silence before every clip
    (x, y, labels, speakers, start), = data.micro_batches(0, torch.Generator().manual_seed(0))
    assert x.shape == (64, R + 63) and y.shape == (64, 64) and speakers is None
    assert torch.equal(x[:, R:], y[:, :-1])  # targets are the inputs shifted by one
    silence = mulaw_encode(0.0)
    for row in range(64):
        clip = data.ids[:, R:].long()
        first = int(start[row]) + R  # clip position of the first scored sample
        match = [c for c in range(9) if torch.equal(clip[c, first:first + 64], y[row])]
        assert match and data.labels[match[0]] == labels[row]
        assert (y[row] != silence).any() or (x[row] != silence).any()  # every window sees some sound
    # the same step draws the same windows; another step others
    again = data.micro_batches(0, torch.Generator().manual_seed(0))[0]
    assert torch.equal(again[0], x)
    assert data.meta["codec"] == {"kind": "mulaw", "channels": 256, "sample_rate": 8000, "length": 1024}
    assert data.meta["classes"] == ["high", "low"] and data.meta["speakers"] == [] and data.meta["val_clips"] == 1


def test_validation_windows_score_each_sample_of_sound_once():
    clips = np.zeros((2, 300), np.float32)
    clips[0, 50:170] = 0.3  # 120 samples of sound
    clips[1, 200:300] = -0.2  # 100, up to the clip's end
    v = _validation_windows(clips, np.array([0, 1]), None, context=15, window=64, max_windows=None, device="cpu")
    assert v["population"] == 2 + 2 and v["ids"].shape == (4, 15 + 64)
    assert v["mask"].sum(1).tolist() == [64, 56, 64, 36] and v["start"].tolist() == [50 - 15, 114 - 15, 200 - 15, 236 - 15]
    # the second clip's last block slid back inside the clip and masks what the first block scored
    assert v["mask"][3, :28].sum() == 0
    few = _validation_windows(clips, np.array([0, 1]), None, 15, 64, 2, "cpu")
    assert few["start"].tolist() == [35, 221] and few["population"] == 4  # the first and the last


def test_wavenet_trains_scores_itself_and_writes_audio_samples(tones, tmp_path):
    run = train(validate(wn_raw(f"folder:{tones}", max_steps=30, eval_every=15, checkpoint_every=15, lr=1e-2)),
                tmp_path / "run", progress=False).run_dir
    meta = json.loads((run / "config.json").read_text())
    assert meta["family"] == "wavenet" and meta["data"]["codec"]["kind"] == "mulaw"
    assert meta["data"]["license"].startswith("unknown") and meta["data"]["held_out"] == "one clip in 10 of the folder"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0] - 0.15  # from ~ln(256) = 5.5 nats (uniform), in 30 steps of a tiny net
    vals = [r for r in records if "val_bits_per_sample" in r]
    assert [r["step"] for r in vals] == [15, 30] and vals[-1]["val_bits_per_sample"] < vals[0]["val_bits_per_sample"] < 8.0
    assert vals[-1]["eval_score"] == vals[-1]["val_bits_per_sample"] and vals[-1]["val_windows"] > 0
    assert all(r["samples_per_sec"] > 0 for r in records if "samples_per_sec" in r)
    wavs = sorted((run / "samples" / "final").glob("*.wav"))
    assert [w.stem for w in wavs] == ["high", "low"]
    x, rate = sf.read(str(wavs[0]))
    assert rate == 8000 and x.shape == (1024,)
    assert (run / "samples" / "final.png").stat().st_size > 0
    # the saved weights load into the exported network and generate
    net = WaveNetMethod.build_exported(WaveNetMethod.Config.model_validate(meta["model"]),
                                       WaveNetMethod.spec_from_meta(meta["data"]))
    net.load_state_dict(load_file(str(run / "model.safetensors")))
    clips = WaveNetMethod.generate(net, 2, None, None, torch.Generator().manual_seed(0), "cpu", length=300)
    assert clips.shape == (2, 300)
    # ... and through genforge.load, by class name, reproducibly
    model = genforge.load(run, precision="no")
    assert model.modality == "audio" and model.sample_rate == 8000 and model.classes == ["high", "low"]
    assert set(model.options()) == {"temperature"}
    x = model.generate(n=2, seed=1, labels=["low", "high"], temperature=0.9)
    assert x.shape == (2, 1024) and x.dtype == np.float32 and np.abs(x).max() <= 1.0
    assert np.array_equal(model.generate(n=2, seed=1, labels=["low", "high"], temperature=0.9), x)


def test_resume_continues_exactly(tones, tmp_path):
    # a warm-up shorter than the run and decay_steps pinning the cosine's length (else it follows max_steps): the
    # learning rate must resume exactly too; EMA, windows and gradient accumulation as well
    common = {"checkpoint_every": 100, "eval_every": 3, "log_every": 1, "grad_accum": 2}
    model = {"warmup_steps": 2, "decay_steps": 6}
    full = train(validate(wn_raw(f"folder:{tones}", model, max_steps=6, **common)), tmp_path / "full",
                 progress=False).run_dir
    part = tmp_path / "part"
    train(validate(wn_raw(f"folder:{tones}", model, max_steps=3, **common)), part, progress=False)
    train(validate(wn_raw(f"folder:{tones}", model, max_steps=6, **common)), part, resume=True, progress=False)
    a, b = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k

    def logged(run):
        return [(r["step"], r.get("loss"), r.get("val_loss")) for r in map(json.loads, (run / "metrics.jsonl")
                                                                          .read_text().splitlines())]
    assert logged(full) == logged(part)
    assert latest_checkpoint(part).name == "step-00000006"


def test_an_unlabelled_folder_trains_an_unconditional_wavenet(tones, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, f in enumerate(sorted(tones.glob("*/*.wav"))[:4]):
        (flat / f"{i}.wav").write_bytes(f.read_bytes())
    run = train(validate(wn_raw(f"folder:{flat}", max_steps=2, eval_every=None)), tmp_path / "run",
                progress=False).run_dir
    meta = json.loads((run / "config.json").read_text())
    assert meta["data"]["classes"] == [] and meta["data"]["train_clips"] == 4
    net = WaveNetMethod.build_exported(WaveNetMethod.Config.model_validate(meta["model"]),
                                       WaveNetMethod.spec_from_meta(meta["data"]))
    assert net.label_embed is None and net.speaker_embed is None and net.position_embed is not None
    assert sorted(w.name for w in (run / "samples" / "final").glob("*.wav")) == [f"{i:03d}.wav" for i in range(4)]
    assert set(WaveNetMethod.onnx_graphs(net)["step"].inputs) == {"ids", "position", "state"}


def test_bad_wavenet_configs_are_user_errors(tones, tmp_path):
    with pytest.raises(UserError, match="model.window"):
        train(validate(wn_raw(f"folder:{tones}", {"window": 4096})), tmp_path / "a", progress=False)
    with pytest.raises(UserError, match="not an audio dataset"):
        train(validate(wn_raw("mnist-mini")), tmp_path / "b", progress=False)
    with pytest.raises(UserError, match="val_fraction"):
        raw = wn_raw(f"folder:{tones}")
        raw["data"]["val_fraction"] = 0.0
        train(validate(raw), tmp_path / "c", progress=False)


def test_the_fsdd_preset_trains_on_digits_and_speakers_and_samples(tmp_path):
    # the preset's network as it is; shorter clips and two steps keep it to seconds
    raw = apply_overrides(read_raw("fsdd-wavenet"), ["data.audio.length=1024", "train.max_steps=2", "train.batch_size=2",
                                                     "train.eval_every=2", "train.eval_samples=100",
                                                     "train.sample_every=1000", "train.checkpoint_every=2",
                                                     "train.mixed_precision=no", "model.window=256"])
    assert "budget_minutes" in raw["train"]
    raw["train"].pop("budget_minutes")
    run = train(validate(raw), tmp_path / "run", data_dir=SHARED_DATA, progress=False).run_dir
    meta = json.loads((run / "config.json").read_text())
    assert meta["data"]["classes"] == [str(d) for d in range(10)] and len(meta["data"]["speakers"]) == 6
    assert meta["data"]["license"].startswith("CC BY-SA 4.0") and meta["data"]["val_clips"] == 300
    assert meta["model"]["conditional"] and meta["model"]["speaker_conditional"]
    val = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r][-1]
    assert val["val_windows"] == 100 and val["val_windows_of"] > 1000 and 7.0 < val["eval_score"] < 8.5
    assert len(list((run / "samples" / "final").glob("*.wav"))) == 10
    assert get_method("wavenet") is WaveNetMethod and WaveNetMethod.modality == "audio"


# ---------------------------------------------------------------- export: one step graph on onnxruntime

def test_exported_step_graph_generates_the_torch_clips_on_onnxruntime(tmp_path):
    import onnxruntime as ort

    from genforge.export.onnx import _export_graph
    from genforge.runtime.families import FAMILIES

    net = tiny_net(length=100)
    graphs = WaveNetMethod.onnx_graphs(net)
    assert list(graphs) == ["step"] and list(graphs["step"].inputs) == ["ids", "labels", "speakers", "position", "state"]
    path = tmp_path / "step.onnx"
    _export_graph(graphs["step"], path, 18)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.shape[0] for i in session.get_inputs()] == ["batch"] * 5  # any batch

    def run(**inputs):
        return session.run(None, {k: np.ascontiguousarray(v) for k, v in inputs.items()})[0]

    config = WaveNetMethod.runtime_config(net)
    assert config["receptive_field"] == net.receptive_field and config["silence_id"] == 128
    assert json.loads(json.dumps(config)) == config  # goes into export.json as it is
    family = FAMILIES["wavenet"](config, {"step": run})
    assert isinstance(family, WaveNetFamily)

    # one step: the graph's logits and packed queues equal the torch step's
    ids, lab, spk, pos = torch.tensor([3, 200, 128]), torch.tensor([0, 1, 2]), torch.tensor([1, 0, 1]), torch.tensor([5, 60, 99])
    state = torch.randn(3, config["state_size"])
    ref = WaveNetStep(net)(ids, lab, spk, pos, state)
    got = run(ids=ids.numpy(), labels=lab.numpy(), speakers=spk.numpy(), position=pos.numpy(), state=state.numpy())
    np.testing.assert_allclose(got, ref.detach().numpy(), rtol=1e-4, atol=1e-5)

    # whole clips from the torch path's draws: the same ids
    spec = WaveSpec(net.config.classes, net.config.speakers, 8000, 100)
    drawn = WaveNetMethod.draw(net, spec, 3, None, torch.Generator().manual_seed(4))
    torch_ids = fast_generate(net, drawn["u"], drawn["labels"], drawn["speakers"], 0.9)
    np_drawn = {k: v.numpy() for k, v in drawn.items()}
    assert np.array_equal(family.ids(np_drawn, 0.9), torch_ids.numpy())
    clips = family.render(np_drawn, temperature=0.9)
    assert clips.dtype == np.float32 and np.array_equal(clips, mulaw_decode(torch_ids.numpy()))
    # the runtime's own draws: reproducible by seed, labels in turn unless given
    d = family.draw(4, None, np.random.default_rng(1))
    assert d["labels"].tolist() == [0, 1, 2, 0] and d["u"].shape == (4, 100) and d["speakers"].shape == (4,)
    assert np.array_equal(family.draw(4, None, np.random.default_rng(1))["u"], d["u"])
    assert family.draw(2, [1, 1], np.random.default_rng(1), speakers=1)["speakers"].tolist() == [1, 1]
