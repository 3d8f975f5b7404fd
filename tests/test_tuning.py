"""`genforge tune` (issue 15): the search space, seeded and pruned studies, kill -9 and restart, two processes on
one study, a real PostgreSQL server, failed trials, and the best configuration training as a preset."""

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from genforge.cli import app
from genforge.errors import UserError
from genforge.training import read_raw
from genforge.tuning import parse_space, tune
from tiny import tiny_lm_config

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
SPACE = {"train.lr": {"log_uniform": [1.0e-4, 1.0e-2]}, "model.dropout": {"uniform": [0.0, 0.3]}}


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    """The tiny char GPT as a YAML preset: 9 steps, evaluated (validation loss) every 3."""
    base = tmp_path_factory.mktemp("tune")
    raw = tiny_lm_config(max_steps=9, eval_every=3, checkpoint_every=9, sample_every=1000, eval_samples=100).model_dump()
    path = base / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    space = base / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    return path, space


def test_space_file_parses_into_distributions_and_bad_entries_name_the_key(preset):
    raw = read_raw(str(preset[0]))
    space = parse_space({**SPACE, "model.n_embd": {"choice": [32, 64]}, "train.batch_size": {"log_int": [4, 16]},
                         "model.n_layer": {"int": [1, 3]}}, raw)
    d = optuna.distributions
    assert space["train.lr"] == d.FloatDistribution(1e-4, 1e-2, log=True)
    assert space["model.dropout"] == d.FloatDistribution(0.0, 0.3)
    assert space["model.n_embd"] == d.CategoricalDistribution([32, 64])
    assert space["train.batch_size"] == d.IntDistribution(4, 16, log=True)
    assert space["model.n_layer"] == d.IntDistribution(1, 3)
    for bad, words in [({"train.lrr": {"uniform": [0.1, 1]}}, "Unknown config key 'train.lrr'"),
                       ({"train.lr": {"log_uniform": [0, 1]}}, "0 < low < high"),
                       ({"train.lr": [1e-3, 1e-2]}, "not a range"),
                       ({"model.n_layer": {"int": [1, 2.5]}}, "integers"),
                       ({"model.dropout": {"normal": [0, 1]}}, "unknown range kind 'normal'"),
                       ({"train.lr": {"uniform": [-1.0, 1.0]}}, "train.lr")]:
        with pytest.raises(UserError, match=words.replace("(", r"\(")):
            parse_space(bad, raw)
    result = runner.invoke(app, ["tune", str(preset[0]), "--space", str(preset[1].parent / "missing.yaml")])
    assert result.exit_code != 0 and "no such file" in result.output


def test_a_seeded_study_proposes_the_same_trials_and_writes_its_outputs(preset, tmp_path):
    a = tune(str(preset[0]), SPACE, 3, tmp_path / "a", seed=5, pruner="none", progress=False)
    b = tune(str(preset[0]), SPACE, 3, tmp_path / "b", seed=5, pruner="none", progress=False)
    assert [t["params"] for t in a.trials] == [t["params"] for t in b.trials]
    assert [t["value"] for t in a.trials] == [t["value"] for t in b.trials]  # CPU training is deterministic
    assert len({t["params"]["train.lr"] for t in a.trials}) == 3
    for t in a.trials:  # each trial is a normal run directory
        assert (Path(t["run"]) / "model.safetensors").is_file() and (Path(t["run"]) / "metrics.jsonl").is_file()
    rows = (tmp_path / "a" / "trials.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("number,state,value")
    assert {p.name for p in a.plots} == {"history.png", "importances.png"}
    best = yaml.safe_load(a.best_config.read_text())
    assert best["train"]["lr"] == pytest.approx(a.best["params"]["train.lr"])
    trained = runner.invoke(app, ["train", str(a.best_config), "--out", str(tmp_path / "again"), "--max-steps", "3",
                                  "--no-progress"])
    assert trained.exit_code == 0, trained.output


def test_start_from_base_tries_the_presets_values_first_and_refuses_a_space_without_them(preset, tmp_path):
    r = tune(str(preset[0]), SPACE, 2, tmp_path / "s", seed=5, pruner="none", progress=False, start_from_base=True)
    assert r.trials[0]["params"] == {"train.lr": 3e-3, "model.dropout": 0.1}  # the tiny preset's own values
    assert r.trials[1]["params"] != r.trials[0]["params"]
    narrow = tmp_path / "narrow.yaml"
    narrow.write_text(yaml.safe_dump({**SPACE, "model.dropout": {"uniform": [0.2, 0.3]}}))
    result = runner.invoke(app, ["tune", str(preset[0]), "--space", str(narrow), "--out", str(tmp_path / "n"),
                                 "--start-from-base"])
    assert result.exit_code == 2 and "model.dropout = 0.1, outside the space's range" in result.output
    assert not (tmp_path / "n" / "trials").exists()


def test_pruning_stops_a_trial_worse_than_the_median_at_the_same_step(preset, tmp_path):
    good = {"train.lr": 3e-3, "model.dropout": 0.0}
    result = tune(str(preset[0]), SPACE, 4, tmp_path, pruner="median", progress=False,
                  enqueue=[good, {**good, "model.dropout": 0.05}, {**good, "model.dropout": 0.1},
                           {"train.lr": 1.0e-4, "model.dropout": 0.3}])
    states = [t["state"] for t in result.trials]
    assert states == ["COMPLETE", "COMPLETE", "COMPLETE", "PRUNED"], result.trials
    pruned = result.trials[3]
    assert pruned["reason"].startswith("pruned at step") and pruned["steps"] < 9  # stopped early, cleanly
    assert (Path(pruned["run"]) / "model.safetensors").is_file()


def test_a_failing_trial_is_recorded_and_the_study_goes_on(preset, tmp_path):
    result = tune(str(preset[0]), {"train.lr": {"choice": [1.0e-3, 1.0e4]}}, 2, tmp_path, pruner="none",
                  progress=False, enqueue=[{"train.lr": 1.0e4}, {"train.lr": 1.0e-3}])
    assert [t["state"] for t in result.trials] == ["FAIL", "COMPLETE"]
    assert "non-finite" in result.trials[0]["reason"]  # the loss became NaN: recorded, and the study went on


def _tune_cmd(preset, out, trials, *extra):
    return [sys.executable, "-m", "genforge.cli", "tune", str(preset[0]), "--space", str(preset[1]), "--trials",
            str(trials), "--out", str(out), "--pruner", "none", *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}


def _finished(storage_path) -> list:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(storage_path)))
    try:
        study = optuna.load_study(study_name="tiny-lm", storage=storage)
    except KeyError:
        return []
    return study.get_trials(deepcopy=False)


def test_kill_minus_9_mid_study_and_restart_loses_no_finished_trial(preset, tmp_path):
    proc = subprocess.Popen(_tune_cmd(preset, tmp_path, 5), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    journal = tmp_path / "study.journal"
    deadline = time.time() + 300
    while time.time() < deadline:
        done = [t for t in _finished(journal) if t.state == optuna.trial.TrialState.COMPLETE] if journal.exists() else []
        running = [t for t in _finished(journal) if t.state == optuna.trial.TrialState.RUNNING] if journal.exists() else []
        if len(done) >= 2 and running:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {t.number: t.value for t in _finished(journal) if t.state == optuna.trial.TrialState.COMPLETE}
    assert len(before) >= 2
    again = subprocess.run(_tune_cmd(preset, tmp_path, 5), env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    trials = _finished(journal)
    after = {t.number: t.value for t in trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert all(after[n] == v for n, v in before.items())  # every finished trial kept as it was
    killed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(killed) == 1 and "killed" in killed[0].user_attrs["reason"]
    assert sum(t.state.is_finished() for t in trials) == 5


def test_two_processes_share_one_study_without_repeating_a_trial(preset, tmp_path):
    procs = [subprocess.Popen(_tune_cmd(preset, tmp_path, 4, "--seed", str(i)), env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read()[-2000:]
    trials = _finished(tmp_path / "study.journal")
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) >= 4
    owners = {t.user_attrs["pid"] for t in trials}
    assert len(owners) == 2  # both processes ran trials
    runs = sorted(glob.glob(str(tmp_path / "trials" / "trial-*")))
    assert len(runs) == len(trials) and len({t.user_attrs["run"] for t in trials}) == len(trials)


def _initdb() -> str | None:
    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    return found


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server on a Unix socket in a temporary folder (run as user postgres when root; the
    folder is outside pytest's, which only root may enter)."""
    import tempfile

    initdb = _initdb()
    assert initdb, "PostgreSQL is not installed: .ci/run installs Debian's postgresql package"
    bindir = Path(initdb).resolve().parent
    base = Path(tempfile.mkdtemp(prefix="genforge-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    as_user = []
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
        os.chmod(base, 0o755)
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"], check=True,
                   capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(base / "log"), "-o",
                    f"-p {port} -k {sock} -c listen_addresses=''", "start"], check=True, capture_output=True)
    yield f"postgresql+psycopg://postgres@/postgres?host={sock}&port={port}"
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


def test_a_study_in_postgresql_is_shared_and_continued(preset, tmp_path, postgres):
    first = runner.invoke(app, ["tune", str(preset[0]), "--space", str(preset[1]), "--trials", "2", "--out",
                                str(tmp_path / "m1"), "--storage", postgres, "--study", "shared", "--pruner", "none"])
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, ["tune", str(preset[0]), "--space", str(preset[1]), "--trials", "3", "--out",
                                 str(tmp_path / "m2"), "--storage", postgres, "--study", "shared", "--pruner", "none"])
    assert second.exit_code == 0, second.output
    study = optuna.load_study(study_name="shared", storage=postgres)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3  # the second "machine" added one trial
    assert "3 complete" in second.output and (tmp_path / "m2" / "best.yaml").is_file()
    bad = runner.invoke(app, ["tune", str(preset[0]), "--space", str(preset[1]), "--storage", "nonsense"])
    assert bad.exit_code != 0 and "database URL" in bad.output


def test_a_trial_runs_under_accelerate_launch_with_rank_0_owning_the_study(preset, tmp_path):
    """Two CPU processes (gloo): rank 0 asks Optuna, the other rank trains each trial with it (data-parallel)."""
    from test_distributed import free_port

    script = Path(sys.executable).with_name("genforge")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
           "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           str(script), "tune", str(preset[0]), "--space", str(preset[1]), "--trials", "2", "--out", str(tmp_path),
           "--pruner", "none"]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = _finished(tmp_path / "study.journal")
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"], [(t.number, t.user_attrs) for t in trials]
    assert len({t.user_attrs["pid"] for t in trials}) == 1  # one owner: rank 0
    assert "2 complete" in proc.stdout
