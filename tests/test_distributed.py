import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp_path, family: str) -> tuple[Path, Path]:
    """Train the tiny `family` recipe under `accelerate launch` with 2 CPU processes (gloo); returns the
    run directory and the folder of per-rank reports written by dist_train.py."""
    run, report = tmp_path / "run", tmp_path / "report"
    report.mkdir()
    here = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": str(here) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           str(here / "dist_train.py"), str(run), str(report), family]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run, report


def assert_ranks_identical(report: Path) -> dict:
    r0, r1 = load_file(str(report / "rank0.safetensors")), load_file(str(report / "rank1.safetensors"))
    assert r0.keys() == r1.keys() and len(r0) > 10
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"ranks differ in {k}"
    return r0


def test_two_processes_stay_identical_and_only_rank0_writes(tmp_path):
    run, report = launch(tmp_path, "gan")
    assert_ranks_identical(report)
    w0 = json.loads((report / "rank0.json").read_text())
    w1 = json.loads((report / "rank1.json").read_text())
    assert w0["step"] == w1["step"] == 4
    assert "save_weights" in w0["writes"] and "write_config" in w0["writes"]
    assert w1["writes"] == []
    assert (run / "model.safetensors").exists() and (run / "checkpoints" / "step-00000004").is_dir()
    assert json.loads((run / "config.json").read_text())["step"] == 4


def test_two_process_self_conditioned_gan_shares_one_clustering(tmp_path):
    run, report = launch(tmp_path, "gan-clusters")
    r0 = assert_ranks_identical(report)  # same pseudo-labels on both ranks, or D's projection would drift apart
    assert r0["generator.label_prior"].shape == (4,)
    w1 = json.loads((report / "rank1.json").read_text())
    assert w1["writes"] == []  # rank 1 read clusters.safetensors, it did not write it
    counts = json.loads((run / "config.json").read_text())["data"]["cluster_counts"]
    assert len(counts) == 4 and sum(counts) == 10000


def test_two_process_language_model_stays_identical_and_only_rank0_writes(tmp_path):
    run, report = launch(tmp_path, "lm")
    r0 = assert_ranks_identical(report)  # each rank drew its own windows and dropout masks; DDP averaged them
    w0 = json.loads((report / "rank0.json").read_text())
    w1 = json.loads((report / "rank1.json").read_text())
    assert w0["step"] == w1["step"] == 4
    assert {"save_weights", "write_config", "save"} <= set(w0["writes"])  # weights, config.json, tokenizer.json
    assert w1["writes"] == []
    for name in ("model.safetensors", "model-best.safetensors", "tokenizer.json", "samples/final.txt",
                 "checkpoints/step-00000004/trainer_state.json"):
        assert (run / name).exists(), name
    exported = load_file(str(run / "model.safetensors"))
    assert exported.keys() and all(torch.equal(v, r0[f"model.{k}"]) for k, v in exported.items())
    meta = json.loads((run / "config.json").read_text())
    assert meta["step"] == 4 and meta["family"] == "lm"
    vals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in vals if "val_loss" in r] == [2, 4]  # validation ran once per eval, on rank 0


def test_sampling_split_over_two_processes_equals_one_process(tmp_path):
    """`accelerate launch ... genforge sample`: each process renders its part of the rows; the images equal
    one process's for the same seed (stochastic sampler: per-image noise streams)."""
    import numpy as np

    import genforge
    from genforge.training import train
    from test_diffusion import diffusion_config

    run = train(diffusion_config({"conditional": True}, max_steps=2), tmp_path / "diff", progress=False).run_dir
    out = tmp_path / "x.npy"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = Path(sys.executable).with_name("genforge")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), str(script),
           "sample", str(run), "--n", "5", "--seed", "3", "--sampler", "ddim", "--eta", "1", "--steps", "3",
           "--label", "4", "--precision", "no", "--no-progress", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    model = genforge.load(run, precision="no")
    alone = model.generate(5, seed=3, labels=4, sampler="ddim", eta=1.0, steps=3)
    assert np.array_equal(np.load(out), alone)
    parts = [model.generate(5, seed=3, labels=4, sampler="ddim", eta=1.0, steps=3, shard=(i, 2)) for i in range(2)]
    assert [len(p) for p in parts] == [2, 3] and np.array_equal(np.concatenate(parts), alone)


def test_each_launched_process_evaluates_on_its_own_gpu(monkeypatch):
    """Under `accelerate launch` on a GPU machine, rank r samples and scores on cuda:LOCAL_RANK, not all on cuda:0
    (checked with the CUDA queries stubbed: the tests never need a GPU)."""
    import torch

    from genforge.evaluation.evaluator import default_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert default_device() == torch.device("cuda", 3)
    monkeypatch.delenv("LOCAL_RANK")
    assert default_device() == torch.device("cuda", 0)
    assert default_device("cpu") == torch.device("cpu")
