import json

import pytest
import torch
from safetensors.torch import load_file

import genforge
from genforge.errors import UserError
from genforge.training import TrainingDiverged, train
from genforge.training.checkpoint import latest_checkpoint, list_checkpoints
from tiny import tiny_config


def weights(run_dir):
    return load_file(str(run_dir / "model.safetensors"))


def ckpt_weights(ckpt):
    return {k: v for f in sorted(ckpt.glob("model*.safetensors")) for k, v in load_file(str(f)).items()}


def test_run_writes_the_artifact(tmp_path):
    run = tmp_path / "run"
    result = train(tiny_config(), run, progress=False)
    assert result.step == 6
    for name in ["config.json", "model.safetensors", "metrics.jsonl", "loss.png", "samples/final.png", "samples/step-00000004.png"]:
        assert (run / name).exists(), name
    meta = json.loads((run / "config.json").read_text())
    assert meta["data"]["height"] == 28 and meta["data"]["channels"] == 1 and meta["step"] == 6
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 3, 4, 6]  # every log_every, and at checkpoints
    assert all(r["images_per_sec"] > 0 and "loss_d" in r and "loss_g" in r for r in records)
    # last k=2 checkpoints kept, each complete
    assert [p.name for p in list_checkpoints(run)] == ["step-00000003", "step-00000006"]
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert list((run / "tensorboard").glob("events.out.tfevents*"))


def test_same_seed_same_weights_and_other_seed_differs(tmp_path):
    a = train(tiny_config(max_steps=3), tmp_path / "a", progress=False).run_dir
    b = train(tiny_config(max_steps=3), tmp_path / "b", progress=False).run_dir
    c = train(tiny_config(max_steps=3, seed=4), tmp_path / "c", progress=False).run_dir
    wa, wb, wc = weights(a), weights(b), weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


@pytest.mark.parametrize("accum", [1, 2])
def test_resume_continues_exactly(tmp_path, accum):
    full = train(tiny_config(max_steps=6, checkpoint_every=100, grad_accum=accum), tmp_path / "full", progress=False).run_dir
    part = tmp_path / "part"
    train(tiny_config(max_steps=3, checkpoint_every=100, grad_accum=accum), part, progress=False)
    train(tiny_config(max_steps=6, checkpoint_every=100, grad_accum=accum), part, resume=True, progress=False)
    w_full, w_part = weights(full), weights(part)
    assert w_full.keys() == w_part.keys()
    for k in w_full:
        assert torch.equal(w_full[k], w_part[k]), k
    # raw networks and optimizer-driven state too, not only the EMA export
    a, b = ckpt_weights(latest_checkpoint(full)), ckpt_weights(latest_checkpoint(part))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 6


def test_refuses_to_overwrite_and_to_resume_nothing(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(UserError, match="Nothing to resume"):
        train(tiny_config(), run, resume=True, progress=False)
    train(tiny_config(max_steps=2), run, progress=False)
    with pytest.raises(UserError, match="--resume"):
        train(tiny_config(max_steps=2), run, progress=False)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from genforge.methods.gan import GANMethod

    real_step = GANMethod.training_step
    calls = {"n": 0}

    def poisoned(self, accelerator, micro, rng):
        calls["n"] += 1
        losses = real_step(self, accelerator, micro, rng)
        if calls["n"] >= 5:
            losses["loss_d"] = losses["loss_d"] * float("nan")
        return losses

    monkeypatch.setattr(GANMethod, "training_step", poisoned)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="loss_d became non-finite.*step-00000003"):
        train(tiny_config(max_steps=10, log_every=1), run, progress=False)
    assert [p.name for p in list_checkpoints(run)] == ["step-00000003"]
    assert not (run / "model.safetensors").exists()


def test_conditional_artifact_round_trip(tmp_path):
    run = train(tiny_config(model={"conditional": True}), tmp_path / "c", progress=False).run_dir
    model = genforge.load(run)
    assert model.conditional and model.classes == [str(i) for i in range(10)]
    x = model.generate(5, seed=1, labels=7)
    assert x.shape == (5, 28, 28, 1) and x.dtype.name == "uint8"
    assert (x == model.generate(5, seed=1, labels="7")).all()
    assert not (x == model.generate(5, seed=1, labels=2)).all()
    with pytest.raises(UserError, match="out of range"):
        model.generate(2, labels=12)


def test_infogan_learns_a_recognisable_code_and_stays_unconditional(tmp_path):
    run = train(tiny_config(model={"latent_codes": 4, "info_weight": 1.0}, max_steps=40, log_every=10, lr=1e-3),
                tmp_path / "info", progress=False).run_dir
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "loss_info" in line]
    # Q's cross-entropy starts near log(4) = 1.39 (a guess) and falls as G makes its code visible
    assert records[0]["loss_info"] > 1.0 and records[-1]["loss_info"] < 0.5 * records[0]["loss_info"], records
    model = genforge.load(run)
    assert not model.conditional
    x = model.generate(6, seed=2)
    assert x.shape == (6, 28, 28, 1) and (x == model.generate(6, seed=2)).all()
    with pytest.raises(UserError, match="not class-conditional"):
        model.generate(2, labels=1)


def test_infogan_and_class_conditioning_do_not_mix(tmp_path):
    with pytest.raises(UserError, match="latent_codes"):
        train(tiny_config(model={"latent_codes": 4, "conditional": True}), tmp_path / "x", progress=False)


def test_load_reads_no_pickle(tmp_path, monkeypatch):
    run = train(tiny_config(max_steps=2), tmp_path / "r", progress=False).run_dir
    import pickle

    def forbidden(*a, **k):
        raise AssertionError("pickle used while loading an artifact")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    model = genforge.load(run)
    a, b = model.generate(4, seed=0), model.generate(4, seed=0)
    assert a.shape == (4, 28, 28, 1) and (a == b).all()
    with pytest.raises(UserError, match="not class-conditional"):
        model.generate(2, labels=3)


def test_damaged_weights_are_a_clear_error(tmp_path):
    run = train(tiny_config(max_steps=2), tmp_path / "r", progress=False).run_dir
    (run / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(UserError, match="model.safetensors"):
        genforge.load(run)


def test_two_runs_in_one_process_with_different_precision(tmp_path):
    a = train(tiny_config(max_steps=2, mixed_precision="no"), tmp_path / "a", progress=False)
    b = train(tiny_config(max_steps=2, mixed_precision="bf16"), tmp_path / "b", progress=False)
    assert a.step == b.step == 2
    assert (tmp_path / "b" / "model.safetensors").exists()


def test_in_training_evaluation_keeps_the_best_weights(tmp_path):
    scores = iter([5.0, 2.0, 3.0])  # step 2, 4, 6: the best is at step 4
    seen = []

    def evaluate(generate):
        x = generate(8, torch.Generator().manual_seed(0))
        seen.append(tuple(x.shape))
        return next(scores)

    run = train(tiny_config(eval_every=2), tmp_path / "e", progress=False, evaluate=evaluate).run_dir
    assert seen == [(8, 1, 28, 28)] * 3
    meta = json.loads((run / "config.json").read_text())
    assert meta["best"] == {"step": 4, "score": 2.0}
    best, last = load_file(str(run / "model-best.safetensors")), weights(run)
    assert any(not torch.equal(best[k], last[k]) for k in best)
    assert genforge.load(run).weights_file == "model-best.safetensors"
    assert genforge.load(run, select="last").weights_file == "model.safetensors"
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "eval_score" in line]
    assert [e["step"] for e in evals] == [2, 4, 6] and evals[-1]["best_step"] == 4


def test_select_best_without_evaluation_is_a_clear_error(tmp_path):
    run = train(tiny_config(max_steps=2), tmp_path / "r", progress=False).run_dir
    with pytest.raises(UserError, match="--select last"):
        genforge.load(run, select="best")


def test_self_conditioned_gan_trains_on_clusters_and_samples_them_by_their_share(tmp_path):
    run = train(tiny_config(model={"clusters": 5}, max_steps=4), tmp_path / "sc", progress=False).run_dir
    meta = json.loads((run / "config.json").read_text())
    counts = meta["data"]["cluster_counts"]
    assert meta["data"]["clusters"] == 5 and len(counts) == 5 and sum(counts) == 10000 and min(counts) > 0
    assignment = load_file(str(run / "clusters.safetensors"))["assignment"]
    assert torch.equal(torch.bincount(assignment, minlength=5), torch.tensor(counts))
    model = genforge.load(run)
    assert not model.conditional and model.net.num_classes == 5  # the user sees an unconditional model
    prior = model.net.label_prior
    assert torch.allclose(prior, torch.tensor(counts, dtype=torch.float32) / sum(counts))
    x = model.generate(6, seed=1)
    assert x.shape == (6, 28, 28, 1) and (x == model.generate(6, seed=1)).all()
    with pytest.raises(UserError, match="not class-conditional"):
        model.generate(2, labels=1)


def test_self_conditioned_gan_resumes_exactly_on_the_same_clusters(tmp_path):
    cfg = lambda steps: tiny_config(model={"clusters": 4}, max_steps=steps, checkpoint_every=100)  # noqa: E731
    full = train(cfg(4), tmp_path / "full", progress=False).run_dir
    part = tmp_path / "part"
    train(cfg(2), part, progress=False)
    first = load_file(str(part / "clusters.safetensors"))["assignment"]
    train(cfg(4), part, resume=True, progress=False)
    assert torch.equal(load_file(str(part / "clusters.safetensors"))["assignment"], first)
    w_full, w_part = weights(full), weights(part)
    assert all(torch.equal(w_full[k], w_part[k]) for k in w_full)


def test_clusters_do_not_mix_with_class_conditioning(tmp_path):
    with pytest.raises(UserError, match="clusters"):
        train(tiny_config(model={"clusters": 4, "conditional": True}), tmp_path / "x", progress=False)
    with pytest.raises(UserError, match="latent_codes"):
        train(tiny_config(model={"clusters": 4, "latent_codes": 3}), tmp_path / "y", progress=False)
