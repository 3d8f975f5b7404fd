"""Speech end to end on the spectrogram route: FSDD clips as images through an image family, back as WAVs through
Griffin-Lim; `genforge sample` and `genforge speak`, seeds and batches, marks and provenance, every fsdd preset,
and the torch-free export speaking the same clips as PyTorch."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import genforge
from genforge.media.audio_mark import AudioMark
from genforge.media.watermark import MarkKey
from genforge.training import train
from genforge.training.config import apply_overrides, read_raw, validate

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not (DATA / "fsdd" / "recordings").is_dir():
    pytest.skip(f"the speech tests train on FSDD at {DATA}/fsdd", allow_module_level=True)

TINY = ["train.max_steps=2", "train.budget_minutes=null", "train.batch_size=8", "data.subset=64",
        "train.mixed_precision=no", "train.sample_every=1000", "train.checkpoint_every=1000", "train.seed=5"]
SIZES = {"fsdd-specgan": ["model.g_width=8", "model.d_width=8"],
         "fsdd-diffusion": ["model.width=8", "model.steps=2"]}


def tiny_run(preset: str, out: Path) -> Path:
    return train(validate(apply_overrides(read_raw(preset), TINY + SIZES[preset])), out, data_dir=DATA,
                 progress=False).run_dir


def cli(*args, env_extra=None, cwd=None):
    import os

    env = {**os.environ, "GENFORGE_DATA": str(DATA), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "genforge.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd)


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
    return tiny_run("fsdd-specgan", tmp_path_factory.mktemp("speech") / "gan")


@pytest.mark.parametrize("preset", sorted(SIZES))
def test_every_spectrogram_preset_trains_and_samples(preset, tmp_path):
    run = tiny_run(preset, tmp_path / preset)
    meta = genforge.artifacts.read_config(run)
    assert meta["data"]["codec"]["kind"] == "spectrogram" and meta["data"]["height"] == 128
    assert "CC BY-SA 4.0" in meta["data"]["license"]
    assert len(meta["data"]["codec"]["stats"]["mean"]) == 128  # per-frequency statistics kept in the run
    gen = genforge.load(run, precision="no")
    clips = gen.generate(3, seed=0, labels=[1, 2, 3])
    assert gen.modality == "audio" and clips.shape == (3, 8192) and clips.dtype == np.float32
    assert np.isfinite(clips).all() and np.abs(clips).max() <= 1.0


def test_generate_is_reproducible_and_batch_independent(gan_run):
    gen = genforge.load(gan_run, precision="no")
    gen.use_mark_key(False)
    a = gen.generate(4, seed=7, labels=[0, 1, 2, 3])
    assert np.array_equal(a, gen.generate(4, seed=7, labels=[0, 1, 2, 3]))
    assert not np.array_equal(a, gen.generate(4, seed=8, labels=[0, 1, 2, 3]))
    # a job rendered beside another gives the clips it gets alone
    alone = gen.run([gen.job(2, seed=3, labels=5)])[0]
    together = gen.run([gen.job(3, seed=9, labels=1), gen.job(2, seed=3, labels=5)])[1]
    # equal up to the network's float rounding at another batch size (a spectrogram pixel that lands on the
    # neighbouring uint8 level moves the decoded clip by far less than its level)
    assert np.abs(alone - together).max() < 2e-2 and np.corrcoef(alone.ravel(), together.ravel())[0, 1] > 0.999


def test_speak_joins_one_clip_per_digit_and_is_marked_once(gan_run):
    gen = genforge.load(gan_run, precision="no")
    key = MarkKey(b"k" * 32)
    gen.use_mark_key(key)
    clip = gen.speak("41 5", seed=2)
    assert clip.ndim == 1 and len(clip) > 0.1 * gen.sample_rate
    assert AudioMark(key).detect(clip, gen.sample_rate)["detected"]
    gen.use_mark_key(False)
    assert not AudioMark(key).detect(gen.speak("41 5", seed=2), gen.sample_rate)["detected"]
    with pytest.raises(genforge.errors.UserError, match="not a digit"):
        gen.speak("call me", seed=1)
    with pytest.raises(genforge.errors.UserError, match="one voice"):
        gen.speak("12", speaker="theo")


def test_sample_cli_writes_wavs_grid_and_array(gan_run, tmp_path):
    r = cli("sample", gan_run, "--label", "7", "--n", "3", "--out", f"{tmp_path}/sevens/", "--seed", "1", "--no-mark")
    assert r.returncode == 0, r.stderr
    files = sorted((tmp_path / "sevens").glob("*.wav"))
    assert len(files) == 3
    data, rate = sf.read(files[0], dtype="int16")
    assert rate == 8000 and len(data) == 8192 and sf.info(files[0]).subtype == "PCM_16"
    r = cli("sample", gan_run, "--n", "10", "--out", tmp_path / "grid.png", "--seed", "1", "--no-mark")
    assert r.returncode == 0 and (tmp_path / "grid.png").stat().st_size > 1000, r.stderr
    r = cli("sample", gan_run, "--n", "2", "--out", tmp_path / "x.npy", "--no-mark")
    assert r.returncode == 0 and np.load(tmp_path / "x.npy").shape == (2, 8192)
    r = cli("sample", gan_run, "--n", "2", "--out", tmp_path / "one.wav", "--no-mark")
    assert r.returncode == 2 and "--n 1" in r.stderr and "Traceback" not in r.stderr
    r = cli("sample", gan_run, "--n", "2", "--speaker", "theo", "--out", tmp_path / "t/", "--no-mark")
    assert r.returncode == 2 and "one voice" in r.stderr


def test_speak_cli_writes_a_marked_wav_with_provenance(gan_run, tmp_path):
    key_file = tmp_path / "key"
    assert cli("keygen", key_file).returncode == 0
    r = cli("speak", gan_run, "415 555 0199", "--out", tmp_path / "n.flac", "--seed", "4", "--mark-key", key_file)
    assert r.returncode == 0, r.stderr
    v = cli("verify", tmp_path / "n.flac", "--key", key_file, "--json")
    assert v.returncode == 0, v.stdout
    assert '"detected": true' in v.stdout and "fsdd-specgan" in v.stdout
    bad = cli("speak", gan_run, "four one five", "--out", tmp_path / "n.ogg")
    assert bad.returncode == 2 and ".wav" in bad.stderr


def test_export_speaks_the_same_clips_as_pytorch(gan_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from genforge.export import export
    from genforge.runtime import load as load_export

    gen = genforge.load(gan_run, precision="no")
    gen.use_mark_key(False)
    path = export(gan_run, tmp_path / "exp")
    rt = load_export(path)
    rt.use_mark_key(False)
    assert rt.modality == "audio" and rt.sample_rate == 8000 and rt.classes == gen.classes
    drawn = gen.method.draw(gen.net, gen.spec, 4, torch.tensor([0, 3, 6, 9]), torch.Generator().manual_seed(1))
    torch_clips = gen._render([drawn], gen._options({}), mark=False)[0]
    rt_clips = rt.render({k: v.numpy() for k, v in drawn.items()}, mark=False)
    # the generator's images agree to float32 rounding; a pixel that rounds to a neighbouring uint8 level moves a
    # bin by 1/127.5 of 3 standard deviations, which Griffin-Lim spreads thinly over the clip
    assert np.abs(torch_clips - rt_clips).max() < 2e-2
    assert np.corrcoef(torch_clips.ravel(), rt_clips.ravel())[0, 1] > 0.999
    r = cli("speak", path, "12", "--out", tmp_path / "e.wav", "--seed", "1", "--no-mark")
    assert r.returncode == 0, r.stderr
    assert sf.info(tmp_path / "e.wav").samplerate == 8000


def test_in_training_fd_of_clips_scores_a_spectrogram_run(tmp_path, monkeypatch):
    """train.eval_every on audio data: the FD of decoded clips in the spoken-digit evaluator's features (what
    `genforge tune` optimises), best weights kept; a tiny evaluator stands in for the real one."""
    from genforge.evaluation import AudioRecipe, TrainingAudioFD, train_audio_evaluator, training_evaluator

    tiny = AudioRecipe(widths=(8, 16, 16), feature_dim=16, batch_size=32, max_lr=1e-2, epochs=0.05)
    root = tmp_path / "evaluators"
    train_audio_evaluator("fsdd", DATA, root=root, recipe=tiny, max_steps=20, device="cpu")
    monkeypatch.setenv("GENFORGE_EVALUATORS", str(root))
    cfg = validate(apply_overrides(read_raw("fsdd-specgan"), TINY + SIZES["fsdd-specgan"] +
                                   ["train.eval_every=2", "train.eval_samples=100"]))
    evaluate = training_evaluator(cfg, DATA)
    assert isinstance(evaluate, TrainingAudioFD)
    run = train(cfg, tmp_path / "run", data_dir=DATA, progress=False, evaluate=evaluate).run_dir
    records = [r for r in map(__import__("json").loads, (run / "metrics.jsonl").read_text().splitlines())
               if "eval_score" in r]
    assert records and records[-1]["eval_score"] > 0
    assert (run / "model-best.safetensors").exists()
    # real clips' own spectrograms, decoded, score far better than the untrained generator's
    from genforge.data.spectrograms import load_spectrogram_dataset

    test_images, _ = load_spectrogram_dataset("fsdd", cfg.data.audio.model_dump(), DATA, "test", stats=evaluate.stats)
    real = evaluate(lambda m, rng: test_images.images[torch.randint(len(test_images), (m,), generator=rng)])
    assert real < records[-1]["eval_score"]


def test_wavenet_export_generates_and_speaks_the_torch_clips(tmp_path):
    """`genforge export` of a (tiny) WaveNet run, opened by the torch-free runtime: the same clips as PyTorch from
    the same draws (ids equal, so samples equal exactly), its voices, and `genforge speak EXPORT`."""
    pytest.importorskip("onnxruntime")
    from genforge.export import export
    from genforge.runtime import load as load_export

    raw = apply_overrides(read_raw("fsdd-wavenet"), ["data.audio.length=1024", "train.max_steps=2", "train.batch_size=2",
                                                     "train.sample_every=1000", "train.checkpoint_every=1000",
                                                     "train.eval_every=1000", "train.mixed_precision=no",
                                                     "model.window=128", "model.residual_channels=8",
                                                     "model.skip_channels=8", "model.layers_per_cycle=4",
                                                     "model.cycles=1"])
    raw["train"].pop("budget_minutes")
    run = train(validate(raw), tmp_path / "wn", data_dir=DATA, progress=False).run_dir
    gen = genforge.load(run, precision="no")
    gen.use_mark_key(False)
    assert gen.voices == ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
    rt = load_export(export(run, tmp_path / "exp"))
    rt.use_mark_key(False)
    assert rt.modality == "audio" and rt.voices == gen.voices and rt.length == gen.length == 1024
    drawn = gen._draw(3, [1, 5, 9], torch.Generator().manual_seed(2), "theo", gen._options({}))
    torch_clips = gen._render([drawn], gen._options({}), mark=False)[0]
    rt_clips = rt.render({k: v.numpy() for k, v in drawn.items()}, mark=False)
    assert np.array_equal(torch_clips, rt_clips)
    clip = rt.speak("90", speaker="lucas", seed=1)
    assert clip.ndim == 1 and np.isfinite(clip).all()
    r = cli("speak", tmp_path / "exp", "9 0", "--speaker", "lucas", "--out", tmp_path / "n.wav", "--no-mark")
    assert r.returncode == 0, r.stderr
    r = cli("speak", tmp_path / "exp", "9 0", "--speaker", "alloy", "--out", tmp_path / "n.wav", "--no-mark")
    assert r.returncode == 2 and "yweweler" in r.stderr
