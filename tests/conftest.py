"""Keep the tests' cached precision verdicts out of the user's cache directory; fixtures more than one module uses."""

import os
import tempfile

import pytest

os.environ["GENFORGE_CACHE"] = tempfile.mkdtemp(prefix="genforge-test-cache-")


@pytest.fixture(scope="session")
def text_exported(tmp_path_factory):
    """A tiny GPT, LSTM and GRU run, each exported: {arch: (run_dir, export_dir)}. Read only: tests write elsewhere."""
    from genforge.export import export
    from genforge.training import train, validate
    from tiny import tiny_lm_config

    base = tmp_path_factory.mktemp("text-export")
    out = {}
    for arch, model in (("gpt", {}), ("lstm", {"architecture": "lstm", "n_layer": 2, "hidden": 32}),
                        ("gru", {"architecture": "gru", "n_layer": 1, "hidden": 32})):
        cfg = tiny_lm_config(max_steps=20, eval_every=None).model_dump()
        cfg["model"].update(model)
        run = train(validate(cfg), base / arch, progress=False).run_dir
        out[arch] = (run, export(run, base / f"{arch}-export"))
    return out


@pytest.fixture
def no_shipped_evaluators(tmp_path_factory, monkeypatch):
    """As if genforge shipped no evaluator weights: the path every dataset without shipped weights takes (trained
    on first use, or an error naming the command that trains it)."""
    monkeypatch.setattr("genforge.evaluation.stored.SHIPPED", tmp_path_factory.mktemp("no-shipped"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny models (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`): extra threads only
    add synchronisation, and on a busy shared machine OpenMP workers waiting on each other slow every op by an order
    of magnitude."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
