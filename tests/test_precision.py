"""`mixed_precision: auto` decided by measurement: the probe, its cache, and how training and loading use it.

The machine's own bf16 speed is not what is tested (it differs from box to box): the candidates are
forced to fp32 + bf16 where a test needs two, and the steps are made artificially slow where a test
needs to know which should win.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

import genforge
from genforge import doctor
from genforge import precision as prec
from genforge.training import train
from genforge.training import loop as training_loop
from tiny import tiny_config, tiny_lm_config

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GENFORGE_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def two_candidates(monkeypatch):
    monkeypatch.setattr(prec, "candidates", lambda device: ["no", "bf16"])


def sleeper(seconds):
    def step():
        time.sleep(seconds)
    return step


def test_measure_and_pick_choose_the_faster_and_prefer_fp32_on_a_near_tie():
    seconds, notes = prec.measure({"no": sleeper(0.004), "bf16": sleeper(0.012)}, budget_s=0.1)
    assert prec.pick(seconds) == "no" and seconds["bf16"] > 2 * seconds["no"] and not notes
    seconds, _ = prec.measure({"no": sleeper(0.012), "bf16": sleeper(0.004)}, budget_s=0.1)
    assert prec.pick(seconds) == "bf16"
    assert prec.pick({"no": 1.03, "bf16": 1.0}) == "no"  # within the 5% margin: fp32
    assert prec.pick({"no": 1.10, "bf16": 1.0}) == "bf16"
    assert prec.pick({"no": 1.10, "bf16": 1.04, "fp16": 1.0}) == "bf16"  # bf16 before fp16 on a near tie


def test_a_failing_or_hopeless_candidate_is_dropped_with_a_note():
    def broken():
        raise RuntimeError("no bf16 kernel for this op")

    seconds, notes = prec.measure({"no": sleeper(0.001), "bf16": broken}, budget_s=0.02)
    assert list(seconds) == ["no"] and "bf16 failed" in notes[0]
    seconds, notes = prec.measure({"no": sleeper(0.001), "bf16": sleeper(0.05)}, budget_s=0.02)
    assert list(seconds) == ["no"] and "bf16 dropped" in notes[0]


def test_decide_caches_by_key_and_a_new_shape_measures_again(two_candidates):
    calls = []

    def make_steps(names):
        calls.append(names)
        return {"no": sleeper(0.006), "bf16": sleeper(0.002)}

    first = prec.decide("auto", CPU, "train gan", "shape-a", make_steps, budget_s=0.05)
    assert first.used == "bf16" and first.source == "measured" and calls == [["no", "bf16"]]
    assert first.speed_vs_fp32["bf16"] > 1.5 and first.seconds_per_step["no"] > first.seconds_per_step["bf16"]
    again = prec.decide("auto", CPU, "train gan", "shape-a", make_steps, budget_s=0.05)
    assert again.source == "cache" and again.used == "bf16" and len(calls) == 1
    other = prec.decide("auto", CPU, "train gan", "shape-b", make_steps, budget_s=0.05)
    assert other.source == "measured" and len(calls) == 2
    # the cache file is keyed as documented: device, torch version, threads, workload, shape signature
    keys = list(json.loads((prec.cache_dir() / prec.CACHE_FILE).read_text())["verdicts"])
    assert keys == [prec.cache_key(CPU, "train gan", "shape-a"), prec.cache_key(CPU, "train gan", "shape-b")]
    assert all(prec.device_name(CPU) in k and torch.__version__ in k and f"{torch.get_num_threads()} threads" in k
               for k in keys)
    # a damaged cache file is not an error: the probe runs again
    (prec.cache_dir() / prec.CACHE_FILE).write_text("{not json")
    assert prec.decide("auto", CPU, "train gan", "shape-a", make_steps, budget_s=0.05).source == "measured"


def test_explicit_precision_never_probes(two_candidates):
    def make_steps(names):
        raise AssertionError("the probe must not run for an explicit precision")

    for setting in ("no", "bf16"):
        verdict = prec.decide(setting, CPU, "train gan", "x", make_steps)
        assert verdict.used == setting and verdict.source == "explicit"
    with pytest.raises(genforge.errors.UserError, match="Unknown precision"):
        prec.decide("fp8", CPU, "train gan", "x", make_steps)


def test_one_candidate_means_no_probe(monkeypatch):
    monkeypatch.setattr(prec, "candidates", lambda device: ["no"])
    verdict = prec.decide("auto", CPU, "train gan", "x", lambda names: pytest.fail("probed"))
    assert verdict.used == "no" and verdict.source == "only candidate"


def _slow_bf16(monkeypatch):
    """Make every bf16 autocast region of the probe slow, as on a CPU without bf16 units."""
    real = torch.autocast

    class SlowAutocast(real):
        def __enter__(self):
            if self.fast_dtype == torch.bfloat16:
                time.sleep(0.02)
            return super().__enter__()

    monkeypatch.setattr(torch, "autocast", SlowAutocast)


def test_training_auto_measures_records_and_caches(tmp_path, monkeypatch, two_candidates):
    _slow_bf16(monkeypatch)
    result = train(tiny_config(mixed_precision="auto", max_steps=2), tmp_path / "a", progress=False)
    meta = json.loads((tmp_path / "a" / "config.json").read_text())
    rec = meta["precision"]
    assert result.precision == "no" and rec["used"] == "no" and rec["source"] == "measured"
    # bf16 measured slower, or (on a loaded box, where the probe's first bf16 steps already look hopeless) dropped
    assert rec["setting"] == "auto" and rec["workload"] == "train gan" and rec["speed_vs_fp32"].get("bf16", 0) < 1
    lines = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["event"] == "precision" and lines[0]["used"] == "no" and lines[0]["step"] == 0
    assert "bf16" in lines[0]["seconds_per_step"] or any("bf16 dropped" in n for n in rec.get("notes", []))
    # same model shape: the cached verdict; another shape: measured again
    train(tiny_config(mixed_precision="auto", max_steps=2), tmp_path / "b", progress=False)
    assert json.loads((tmp_path / "b" / "config.json").read_text())["precision"]["source"] == "cache"
    train(tiny_config({"g_width": 16}, mixed_precision="auto", max_steps=2), tmp_path / "c", progress=False)
    assert json.loads((tmp_path / "c" / "config.json").read_text())["precision"]["source"] == "measured"


@pytest.mark.parametrize("family", ["gan", "lm"])
def test_the_probe_leaves_the_run_unchanged(tmp_path, monkeypatch, two_candidates, family):
    """Weights, noise and dropout are the same whether auto measured first (then chose fp32) or fp32 was set."""
    config = tiny_config if family == "gan" else tiny_lm_config
    a = train(config(mixed_precision="no", max_steps=3), tmp_path / "a", progress=False)
    original = training_loop.training_precision
    seen = []

    def probe_then_fp32(*args, **kwargs):
        seen.append(original(*args, **kwargs))  # the real probe runs (and touches RNG, weights, data)
        return prec.Verdict("no", "auto", "measured")

    monkeypatch.setattr(training_loop, "training_precision", probe_then_fp32)
    b = train(config(mixed_precision="auto", max_steps=3), tmp_path / "b", progress=False)
    # both candidates ran (bf16 measured, or on a loaded box dropped after its first step looked hopeless)
    assert seen and seen[0].source == "measured" and (set(seen[0].seconds_per_step) == {"no", "bf16"}
                                                      or any("bf16 dropped" in n for n in seen[0].notes))
    from safetensors.torch import load_file

    wa, wb = load_file(str(a.run_dir / "model.safetensors")), load_file(str(b.run_dir / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_explicit_precision_in_training_skips_the_probe(tmp_path, monkeypatch, two_candidates):
    monkeypatch.setattr(training_loop, "training_precision",
                        lambda setting, *a, **k: prec.decide(setting, CPU, "", "", lambda names: pytest.fail("probed")))
    train(tiny_config(mixed_precision="no", max_steps=2), tmp_path / "run", progress=False)
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    rec = meta["precision"]
    assert (rec["used"], rec["setting"], rec["source"]) == ("no", "no", "explicit") and "seconds_per_step" not in rec
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert not any("event" in r for r in lines)


def test_a_resumed_run_keeps_its_precision(tmp_path, monkeypatch, two_candidates):
    run = tmp_path / "run"
    first = train(tiny_config(mixed_precision="auto", max_steps=2, checkpoint_every=2), run, progress=False)

    def must_not_probe(*args, **kwargs):
        raise AssertionError("a resumed run must not measure again")

    monkeypatch.setattr(training_loop, "training_precision", must_not_probe)
    resumed = train(tiny_config(mixed_precision="auto", max_steps=4, checkpoint_every=2), run, resume=True,
                    progress=False)
    rec = json.loads((run / "config.json").read_text())["precision"]
    assert resumed.precision == first.precision and rec["used"] == first.precision and rec["source"] == "resumed"
    events = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"event"' in x]
    assert [(e["step"], e["source"]) for e in events] == [(0, "measured"), (2, "resumed")]


def test_loading_for_generation_measures_once_per_shape(tmp_path, two_candidates):
    run = train(tiny_lm_config(max_steps=2, eval_every=None), tmp_path / "lm", progress=False).run_dir
    model = genforge.load(run)
    assert model.precision.source == "measured" and model.precision.workload == "generate lm batch 1"
    assert set(model.precision.seconds_per_step) == {"no", "bf16"}
    text = model.generate("\n", max_new_tokens=20, seed=1)
    assert isinstance(text, str) and len(text) > 0
    assert genforge.load(run).precision.source == "cache"
    fp32 = genforge.load(run, precision="no")
    assert fp32.precision.source == "explicit" and fp32.dtype is None
    bf16 = genforge.load(run, precision="bf16")
    assert bf16.dtype == torch.bfloat16 and len(bf16.generate("\n", max_new_tokens=5, seed=1)) > 0
    with pytest.raises(genforge.errors.UserError, match="precision must be one of"):
        genforge.load(run, precision="fast")

    gan = train(tiny_config(max_steps=2), tmp_path / "gan", progress=False).run_dir
    images = genforge.load(gan)
    assert images.precision.workload == "generate gan batch 64" and images.generate(3, seed=0).shape == (3, 28, 28, 1)


def test_info_on_a_machine_without_bf16(monkeypatch):
    monkeypatch.setattr(prec, "cpu_bf16_kernels", lambda: False)
    monkeypatch.setattr(prec, "cpu_flags", lambda: ["avx2"])
    report = doctor.machine_report(measure=True)
    assert report["cpu"]["onednn_bf16_kernels"] is False and report["auto_precision_candidates"]["cpu"] == ["no"]
    assert report["matmul_gflops"]["fp32"] > 0 and report["matmul_gflops"]["bf16"] > 0
    assert report["torch"]["version"] == torch.__version__ and report["directories"]["cache"]
    assert report["components"]["accelerate"]["version"]


def test_info_cli_runs_and_prints_json(tmp_path):
    env = {**os.environ, "GENFORGE_CACHE": str(tmp_path / "cache")}
    p = subprocess.run([sys.executable, "-m", "genforge.cli", "info", "--json"], capture_output=True, text=True,
                       timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["cpu"]["cores"] >= 1 and "fp32" in report["matmul_gflops"]
    p = subprocess.run([sys.executable, "-m", "genforge.cli", "info", "--no-measure"], capture_output=True, text=True,
                       timeout=120, env=env)
    assert p.returncode == 0 and "CPU" in p.stdout and "matmul" not in p.stdout
