"""Language models through the one training loop, the artifact, `genforge.load` and the CLI.

Everything runs a tiny GPT (2 layers, 32 wide, block 32) on 20k characters of Shakespeare copied to a
temporary text file, so each training run takes a second or two on one CPU thread.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

import genforge
from genforge.artifacts import TextGenerator
from genforge.data.text import load_text_corpus
from genforge.errors import UserError
from genforge.evaluation.text import python_parse_rate, text_metrics, trim_snippet
from genforge.data.dataset import evenly_spaced
from genforge.methods.lm import lr_factor, split_text, standard_error, val_windows, window_losses, window_starts
from genforge.training import train, validate
from genforge.training.budget import SKIP_STEPS, BudgetPlanner
from genforge.training.checkpoint import latest_checkpoint


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(load_text_corpus("shakespeare").text[:20_000], encoding="utf-8")
    return path


def lm_raw(text_file, model=None, **train_cfg):
    return {
        "name": "tiny-lm",
        "description": "tiny test GPT",
        "family": "lm",
        "data": {"dataset": f"text:{text_file}", "tokenizer": "char"},
        "model": {"architecture": "gpt", "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32,
                  "warmup_steps": 5, **(model or {})},
        "train": {"batch_size": 8, "max_steps": 40, "lr": 3e-3, "beta1": 0.9, "beta2": 0.99, "mixed_precision": "no",
                  "ema_decay": 0, "log_every": 10, "eval_every": 20, "eval_samples": 100, "checkpoint_every": 20,
                  "sample_every": 1000, "seed": 1, **train_cfg},
    }


def run_cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "genforge.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.fixture(scope="module")
def run(text_file, tmp_path_factory):
    """A run trained through the CLI, as a user would."""
    root = tmp_path_factory.mktemp("lm")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(lm_raw(text_file)))
    p = run_cli("train", cfg, "--out", root / "run", "--no-progress")
    assert p.returncode == 0, p.stderr
    assert "tokens/s" in p.stderr
    return root / "run"


def test_training_writes_the_text_artifact_and_loss_drops(run):
    for name in ["config.json", "model.safetensors", "tokenizer.json", "model-best.safetensors", "samples/final.txt"]:
        assert (run / name).exists(), name
    meta = json.loads((run / "config.json").read_text())
    assert meta["family"] == "lm" and meta["model"]["architecture"] == "gpt"
    assert meta["data"]["tokenizer"] == "char" and meta["data"]["vocab_size"] == json.loads(
        (run / "tokenizer.json").read_text())["chars"].__len__() + 1
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0] - 0.3  # 40 steps: from ~ln(vocab) well towards the unigram entropy
    vals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in vals] == [20, 40] and vals[-1]["val_loss"] < vals[0]["val_loss"]
    assert all(r["tokens_per_sec"] > 0 for r in records if "tokens_per_sec" in r)
    assert meta["best"]["step"] == 40
    assert (run / "samples" / "final.txt").read_text(encoding="utf-8")


@pytest.mark.parametrize("accum,optimizer", [(1, "adamw"), (2, "adamw"), (1, "muon")])
def test_resume_continues_exactly(text_file, tmp_path, accum, optimizer):
    # dropout on, a warm-up shorter than the run: dropout masks and the LR schedule must resume exactly too
    # (decay_steps pins the cosine's length, which otherwise follows max_steps); Muon's momentum is saved too
    model = {"dropout": 0.1, "warmup_steps": 2, "decay_steps": 6, "optimizer": optimizer}
    common = dict(checkpoint_every=100, eval_every=None, grad_accum=accum, log_every=1)
    full = train(validate(lm_raw(text_file, model, max_steps=6, **common)), tmp_path / "full", progress=False).run_dir
    part = tmp_path / "part"
    train(validate(lm_raw(text_file, model, max_steps=3, **common)), part, progress=False)
    train(validate(lm_raw(text_file, model, max_steps=6, **common)), part, resume=True, progress=False)
    a, b = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (part / "tokenizer.json").read_text() == (full / "tokenizer.json").read_text()
    la = [json.loads(line)["loss"] for line in (full / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(line)["loss"] for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert la == lb
    assert latest_checkpoint(part).name == "step-00000006"


def test_load_generates_text(run):
    model = genforge.load(run)
    assert isinstance(model, TextGenerator) and model.weights_file == "model-best.safetensors"
    text = model.generate("ROMEO:", max_new_tokens=40, seed=3)
    assert isinstance(text, str) and 0 < len(text) <= 40  # char tokens: one character each
    assert model.generate("ROMEO:", max_new_tokens=40, seed=3) == text
    texts = model.generate(["ROMEO:", "JULIET:"], max_new_tokens=20, seed=3, top_k=5, top_p=0.9)
    assert isinstance(texts, list) and len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert "".join(model.stream("ROMEO:", max_new_tokens=40, seed=3)) == text
    # characters outside the vocabulary and a prompt longer than the block: no error
    assert isinstance(model.generate("🦊 ∑ " + "To be or not to be " * 10, max_new_tokens=50, seed=0), str)
    with pytest.raises(UserError, match="temperature"):
        model.generate("x", temperature=-1)


def test_greedy_is_deterministic_and_cache_matches_recompute(run):
    model = genforge.load(run, select="last")
    model.net.double()  # the two paths add in different orders; float64 keeps argmax from flipping on a tie
    cached = model.generate("ROMEO:", max_new_tokens=60, temperature=0)  # past the block of 32: the window slides
    assert cached == model.generate("ROMEO:", max_new_tokens=60, temperature=0, seed=123)
    assert cached == model.generate("ROMEO:", max_new_tokens=60, temperature=0, use_cache=False)
    assert len(cached) == 60


def test_stop_strings_end_generation(run):
    model = genforge.load(run)
    full = model.generate("ROMEO:", max_new_tokens=60, temperature=0)
    stop = full[20:22]
    expected = full[:full.find(stop)]
    assert model.generate("ROMEO:", max_new_tokens=60, temperature=0, stop=[stop]) == expected
    assert "".join(model.stream("ROMEO:", max_new_tokens=60, temperature=0, stop=[stop, "never appears"])) == expected
    assert model.generate(["ROMEO:"], max_new_tokens=60, temperature=0, stop=stop) == [expected]


def test_cli_sample_prints_text(run):
    p = run_cli("sample", run, "--prompt", "ROMEO:", "--max-new-tokens", 30, "--seed", 7, "--top-k", 10)
    assert p.returncode == 0, p.stderr
    expected = "ROMEO:" + genforge.load(run).generate("ROMEO:", max_new_tokens=30, seed=7, top_k=10) + "\n"
    assert p.stdout == expected
    p = run_cli("sample", run, "--prompt", "A", "--max-new-tokens", 10, "--n", 2, "--seed", 1)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("--- sample") == 2


def test_cli_image_option_on_text_run_is_one_clear_line(run):
    p = run_cli("sample", run, "--label", "3")
    assert p.returncode == 2
    assert "--label applies to image models" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) <= 2  # one line (wrapped at most once by a narrow terminal)


def test_bad_text_config_is_a_user_error(text_file, tmp_path):
    with pytest.raises(UserError, match="block_size"):
        train(validate(lm_raw(text_file, {"block_size": 50_000})), tmp_path / "a", progress=False)
    with pytest.raises(UserError, match="vocab_size applies to the bpe"):
        raw = lm_raw(text_file)
        raw["data"]["vocab_size"] = 512
        train(validate(raw), tmp_path / "b", progress=False)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    f = [lr_factor(s, warmup=10, total=110, min_ratio=0.1) for s in range(0, 120)]
    assert f[0] < f[5] < f[9] < 1.0 and f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[110] == pytest.approx(0.1) and f[119] == pytest.approx(0.1)


def test_cli_eval_on_a_text_run_reports_perplexity(run):
    p = run_cli("eval", run)
    assert p.returncode == 0, p.stderr
    report = json.loads((run / "eval.json").read_text())
    m = report["metrics"]
    assert m["perplexity"] == pytest.approx(math.exp(m["val_loss"]), rel=1e-6)
    assert m["tokens"] > 0 and 0 < m["bits_per_char"] < 10
    assert "perplexity" in p.stdout
    # Shakespeare is not code: no snippets, and asking for some is a one-line mistake
    assert json.loads((run / "config.json").read_text())["data"]["python_source"] is False
    assert "python_parse_rate" not in m
    p = run_cli("eval", run, "--n", 5)
    assert p.returncode == 2 and "not Python source" in p.stderr and "Traceback" not in p.stderr


def test_parse_rate_judges_the_first_top_level_statement():
    valid = ["def f(x):\n    return x + 1\n",
             "def f(x):\n    return x\n\ndef g(\n",  # the unfinished next function is cut off
             "def f(\n    a,\n):\n# a comment at column 0\n    try:\n        pass\n    except E:\n        pass\n"
             "class Half",
             "def f():\n    y = 1\n    return y  # the line generation stopped in is dropped: ret"]
    garbage = ["def (((:\n  ]]\nfoo\n",
               "def f(x):\n    return x\nelse:\n    pass\n",  # else at column 0 is not a new statement
               "def f(x):\n    return [x,\n",  # open bracket when generation stopped
               "def f(x): return x",  # no complete line: nothing to judge
               "def f():\n    return 1 +\n\nx = 2\n"]
    assert trim_snippet(valid[1]) == "def f(x):\n    return x\n\n"
    assert trim_snippet(valid[3]) == "def f():\n    y = 1\n"
    assert python_parse_rate(valid) == 1.0
    assert python_parse_rate(garbage) == 0.0
    assert python_parse_rate(valid[:1] + garbage[:3]) == 0.25
    assert math.isnan(python_parse_rate([]))


def test_eval_of_a_python_code_run_reports_the_parse_rate(tmp_path):
    # A folder of Python files that repeat a few small functions: the tiny model learns them in 150 steps,
    # so its snippets parse well above chance, which a broken prompt, decode or trim would not allow.
    code = tmp_path / "code"
    code.mkdir()
    (code / "ops.py").write_text("".join(f"def add{i % 10}(a, b):\n    return a + b * {i % 10}\n\n\n"
                                         for i in range(400)))
    (code / "__init__.py").write_text("from .ops import add1\n")
    raw = lm_raw(code, max_steps=150, eval_every=None, batch_size=16, lr=1e-2)
    run = train(validate(raw), tmp_path / "run", progress=False).run_dir
    assert json.loads((run / "config.json").read_text())["data"]["python_source"] is True
    p = run_cli("eval", run, "--n", 10, "--seed", 2)
    assert p.returncode == 0, p.stderr
    m = json.loads((run / "eval.json").read_text())["metrics"]
    assert 0.5 < m["python_parse_rate"] <= 1.0 and m["python_snippets"] == 10
    assert "python_parse_rate" in p.stdout and "perplexity" in p.stdout
    # the same seed gives the same snippets, hence the same rate; the default is 50 snippets
    model = genforge.load(run)
    assert text_metrics(model, n_snippets=10, seed=2)["python_parse_rate"] == m["python_parse_rate"]
    assert text_metrics(model)["python_snippets"] == 50


# ---------------------------------------------------------------- in-training validation is a fair estimate

@pytest.fixture(scope="module")
def long_text_file(tmp_path_factory):
    """400k characters whose held-out split (the last 40k) opens with 12k characters unlike the rest (one
    letter repeated): 1,249 windows of 32, of which the first 375 are that opening. A held-out score taken
    from the first windows is far from the whole split's; a fair sample of the split is not."""
    shakespeare = load_text_corpus("shakespeare").text
    path = tmp_path_factory.mktemp("corpus") / "long.txt"
    path.write_text(shakespeare[:360_000] + "z" * 12_000 + shakespeare[360_000:388_000], encoding="utf-8")
    return path


def test_validation_windows_cover_the_beginning_middle_and_end():
    n_tokens, block = 111_540, 64  # tiny Shakespeare's held-out split, the small preset's block
    population = (n_tokens - 1) // block
    starts = window_starts(n_tokens, block, 200)
    assert len(starts) == 200 and len(set(starts.tolist())) == 200
    assert starts[0] == 0 and starts[-1] == (population - 1) * block  # the first and the last window
    assert torch.all(starts % block == 0) and torch.all(starts[1:] > starts[:-1])  # non-overlapping
    thirds = torch.bucketize(starts, torch.tensor([n_tokens / 3, 2 * n_tokens / 3]))
    assert sorted(torch.bincount(thirds).tolist()) == [66, 67, 67]  # in proportion, not the first 11%
    assert torch.equal(window_starts(n_tokens, block), torch.arange(population) * block)  # all: the whole grid
    assert torch.equal(window_starts(n_tokens, block, 5000), torch.arange(population) * block)
    x, y = val_windows(torch.arange(1000), 64, 3)
    assert x[:, 0].tolist() == [0, 448, 896] and torch.equal(y, x + 1)


def test_standard_error_is_zero_for_the_whole_split_and_shrinks_with_more_windows():
    losses = torch.linspace(1.0, 3.0, 1000)
    assert standard_error(losses, 1000) == 0.0
    small = standard_error(losses[evenly_spaced(1000, 50)], 1000)
    large = standard_error(losses[evenly_spaced(1000, 400)], 1000)
    assert 0 < large < small
    assert small == pytest.approx(float(losses[evenly_spaced(1000, 50)].std()) / math.sqrt(50) * math.sqrt(950 / 999))


def test_in_training_validation_agrees_with_genforge_eval(long_text_file, tmp_path):
    raw = lm_raw(long_text_file, max_steps=80, eval_every=80, eval_samples=100, checkpoint_every=80)
    run = train(validate(raw), tmp_path / "run", progress=False).run_dir
    val = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r][-1]
    assert val["val_windows"] == 100 and val["val_windows_of"] == 1_249
    assert 0 < val["val_loss_se"] < 0.05 * val["val_loss"]  # stated
    model = genforge.load(run, select="last")
    whole = text_metrics(model)
    assert whole["tokens"] == 1_249 * 32
    assert val["val_loss"] == pytest.approx(whole["val_loss"], rel=0.02)
    # the same 100 windows through text_metrics give the in-training figure (same weights, fp32 both)
    assert text_metrics(model, max_windows=100)["val_loss"] == pytest.approx(val["val_loss"], rel=1e-5)
    # ... while the first 100 windows (the old estimate) are nowhere near the whole split here
    _, val_text = split_text(long_text_file.read_text(encoding="utf-8"), 0.1)
    x, y = val_windows(model.tokenizer.encode_tensor(val_text), 32)
    first = float(window_losses(model.net, x[:100], y[:100], 50).mean())
    assert abs(first - whole["val_loss"]) > 0.1 * whole["val_loss"]


def test_in_training_validation_is_the_same_after_resume(long_text_file, tmp_path):
    common = dict(checkpoint_every=100, eval_every=3, eval_samples=100, log_every=1)
    full = train(validate(lm_raw(long_text_file, max_steps=6, **common)), tmp_path / "full", progress=False).run_dir
    part = tmp_path / "part"
    train(validate(lm_raw(long_text_file, max_steps=3, **common)), part, progress=False)
    train(validate(lm_raw(long_text_file, max_steps=6, **common)), part, resume=True, progress=False)

    def evals(run):
        return [(r["step"], r["val_loss"], r["val_loss_se"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                if "val_loss" in r]
    assert evals(full) == evals(part) and [s for s, _, _ in evals(full)] == [3, 6]


# ---------------------------------------------------------------- train.budget_minutes

def test_budget_planner_sizes_the_run_from_the_measured_rate():
    planner = BudgetPlanner(budget_s=100.0, t_call=0.0, start_step=0)
    clock = {s: 2.0 + 0.1 * s for s in range(200)}  # 2 s of set-up, then 10 steps/s
    made = []
    for s in range(1, 200):
        if (p := planner.plan(s, clock[s])) is not None:
            planner.adopt(p, clock[s])
            made.append((s, p))
    assert len(made) == 1  # once
    step, plan = made[0]
    assert step >= SKIP_STEPS + 20 and clock[step] - clock[SKIP_STEPS] >= 0.04 * 100  # measured long enough
    assert plan["steps_per_sec"] == pytest.approx(10.0)
    left = 100.0 - clock[step] - 2.0  # the final writes' reserve
    assert plan["total_steps"] == step + int(left * 0.96 * 10.0)


def test_budget_planner_plans_after_a_tenth_of_the_budget_when_steps_are_slow():
    planner = BudgetPlanner(budget_s=300.0, t_call=0.0, start_step=0)
    made = []
    for s in range(1, 60):
        if (p := planner.plan(s, 2.0 + 5.0 * s)) is not None:  # 5 s a step
            planner.adopt(p, 2.0 + 5.0 * s)
            made.append((s, p))
    assert len(made) == 1
    step, plan = made[0]
    assert step == SKIP_STEPS + 6  # 30 s of measured steps: a tenth of the budget, long before 20 steps
    assert plan["steps_per_sec"] == pytest.approx(0.2)


def test_budget_planner_cuts_the_plan_when_the_box_slows_down_and_never_raises_it():
    planner = BudgetPlanner(budget_s=100.0, t_call=0.0, start_step=0)
    clock = {s: 2.0 + 0.1 * s for s in range(100)}  # 10 steps/s while measuring...
    plan = next(p for s in range(1, 100) if (p := planner.plan(s, clock[s])) is not None)
    planner.adopt(plan, clock[plan["planned_at_step"]])
    at, t = plan["planned_at_step"], clock[plan["planned_at_step"]]
    assert planner.revise(at + 10, t + 1.0) is None  # on pace: the plan stands
    # ...then 8 steps/s: the old plan would overrun, so it is cut to what the time left holds at the new rate
    cut = planner.revise(at + 40, t + 5.0)
    assert cut is not None and cut["revised"] and cut["steps_per_sec"] == pytest.approx(8.0)
    assert cut["total_steps"] == at + 40 + int((100.0 - (t + 5.0) - 2.0) * 0.96 * 8.0) < plan["total_steps"]
    planner.adopt(cut, t + 5.0)
    assert planner.revise(at + 40 + 200, t + 5.0 + 10.0) is None  # faster again (20 steps/s): never raised


def test_budgeted_run_fits_its_schedule_to_the_plan_and_resumes_with_it(text_file, tmp_path):
    # 12 s: long enough that a hiccup of the box (a slow checkpoint write) does not reach the hard stop
    raw = lm_raw(text_file, max_steps=100_000, eval_every=None, checkpoint_every=50, budget_minutes=0.2)
    result = train(validate(raw), tmp_path / "run", progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    plans = [r for r in records if r.get("event") == "budget"]  # the plan, and any cut a slowed box made
    assert all(p.get("revised") for p in plans[1:]) and [p["total_steps"] for p in plans] == sorted(
        (p["total_steps"] for p in plans), reverse=True)
    plan = plans[-1]
    assert plan["total_steps"] < 100_000 and result.step == plan["total_steps"] and result.stopped is None
    state = json.loads((latest_checkpoint(tmp_path / "run") / "trainer_state.json").read_text())
    assert state["budget"]["total_steps"] == plan["total_steps"] == state["total_steps"]
    # the learning rate the schedule gave the last step is its floor: the cosine was sized to the plan, not to
    # max_steps (the scheduler's state in the checkpoint records it)
    sched = torch.load(latest_checkpoint(tmp_path / "run") / "custom_checkpoint_0.pkl", weights_only=False)
    assert sched["_last_lr"][0] == pytest.approx(0.1 * raw["train"]["lr"])
    # resuming a budgeted run keeps its plan: nothing left to do, no new plan
    again = train(validate(raw), tmp_path / "run", resume=True, progress=False)
    assert again.step == plan["total_steps"]
    assert sum(r.get("event") == "budget" for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl")
                                                       .read_text().splitlines())) == len(plans)


@pytest.mark.parametrize("preset", ["shakespeare-char-gpt-small", "shakespeare-char-gpt", "shakespeare-char-lstm",
                                    "python-bpe-gpt"])
def test_every_text_preset_trains_a_few_steps_and_scores_itself_fairly(preset, text_file, tmp_path):
    from genforge.training import apply_overrides, read_raw

    raw = apply_overrides(read_raw(preset), [f"data.dataset=text:{text_file}", "train.max_steps=2", "train.batch_size=2",
                                             "train.eval_every=2", "train.eval_samples=100", "train.sample_every=1000",
                                             "train.checkpoint_every=2", "train.mixed_precision=no"])
    run = train(validate(raw), tmp_path / "run", progress=False).run_dir
    val = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r][-1]
    block = raw["model"]["block_size"]
    assert val["val_windows"] == min(100, val["val_windows_of"]) and math.isfinite(val["val_loss"])
    whole = text_metrics(genforge.load(run, select="last", precision="no"))
    assert whole["tokens"] == val["val_windows_of"] * block
    if val["val_windows"] == val["val_windows_of"]:  # the whole split in training too: the same figure
        assert val["val_loss"] == pytest.approx(whole["val_loss"], rel=1e-4)
