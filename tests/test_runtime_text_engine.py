"""The torch-free runtime's batched text engine: rows of different lengths share one graph run per step and
generate what each would alone, rows join and leave mid-way, and exports made before the decoder took an
attention mask still generate (one row at a time)."""

import pytest
import torch

from genforge.export import export
from genforge.runtime import load as load_export
from genforge.text_jobs import joined


@pytest.mark.parametrize("arch", ["gpt", "lstm"])
def test_rows_of_different_lengths_generate_together_as_each_alone(text_exported, arch):
    """One batch, one graph run per step: prompts of different lengths (one longer than the GPT's 32-token block)
    and limits (rows leave mid-way) give each row the text it gets alone, greedy and sampled."""
    ex = load_export(text_exported[arch][1])
    prompts = ["a", "ROMEO:", "KING RICHARD III:\nNow is the winter of our discontent"]
    limits = [70, 25, 50]
    alone = [ex.generate(p, max_new_tokens=n, temperature=0) for p, n in zip(prompts, limits)]
    jobs = [job for p, n in zip(prompts, limits) for job in ex.jobs([p], max_new_tokens=n, temperature=0)]
    widths, run = [], ex.session.run
    ex.session.run = lambda names, feed: widths.append(feed["input_ids"].shape) or run(names, feed)
    assert joined(ex.run(jobs), 3) == alone
    del ex.session.run
    if arch == "gpt":  # one prefill, then one run per step for every row (and a run per slide of the long row)
        decode = [w for w in widths if w[1] == 1]
        assert widths[0] == (3, 32) and decode == [(3, 1)] * 24 + [(2, 1)] * 25 + [(1, 1)] * 20
    jobs = [job for i, (p, n) in enumerate(zip(prompts, limits))
            for job in ex.jobs([p], max_new_tokens=n, temperature=0.9, top_k=20, top_p=0.95, seed=i)]
    assert joined(ex.run(jobs), 3) == [ex.generate(p, max_new_tokens=n, temperature=0.9, top_k=20, top_p=0.95, seed=i)
                                       for i, (p, n) in enumerate(zip(prompts, limits))]


@pytest.mark.parametrize("arch", ["gpt", "gru"])
def test_engine_rows_join_and_leave_as_if_alone(text_exported, arch):
    """The server's scheduler's view: a second row admitted after 5 steps, the first dropped after 10 (the second
    then moves into its slot); each row's ids are those it gets alone."""
    ex = load_export(text_exported[arch][1])
    prompts = {"a": ex.tokenizer.encode("ROMEO:"), "b": ex.tokenizer.encode("KING RICHARD III:\nNow is")}

    def job(seed):
        return ex.jobs(["-"], temperature=0.9, top_k=20, seed=seed, mark=False)[0]

    def alone(name, seed, n):
        engine, ids = ex.engine(1), []
        engine.admit([name], [job(seed)], [prompts[name]])
        for _ in range(n):
            ids += engine.sample([0], [])
            engine.advance(ids[-1:])
        return ids

    engine, got = ex.engine(2), {"a": [], "b": []}
    engine.admit(["a"], [job(1)], [prompts["a"]])
    for step in range(40):  # b's window (32 tokens) slides on the way
        if step == 5:
            engine.admit(["b"], [job(2)], [prompts["b"]])
        if step == 10:
            engine.drop([engine.rows.index("a")])
            assert engine.rows == ["b"]
        new = engine.sample(list(range(len(engine.rows))), [])
        for row, t in zip(engine.rows, new):
            got[row].append(t)
        engine.advance(new)
    assert got == {"a": alone("a", 1, 10), "b": alone("b", 2, 35)}
    with pytest.raises(ValueError, match="holds 2 rows"):
        engine.admit(["c", "d"], [job(3), job(4)], [[1], [2]])


def test_a_gpt_export_without_attention_mask_still_generates(text_exported, tmp_path, monkeypatch):
    """Exports written before the attention mask: each row steps alone, with the same text."""
    from genforge.methods.lm import LMMethod

    graphs = LMMethod.onnx_graphs.__func__

    class WithoutMask(torch.nn.Module):  # the decoder as exports before the mask had it
        def __init__(self, decoder):
            super().__init__()
            self.decoder = decoder

        def forward(self, input_ids, position_ids, *past):
            width = past[0].shape[2] + input_ids.shape[1]
            return self.decoder(input_ids, position_ids, torch.ones(input_ids.shape[0], width, dtype=torch.long), *past)

    def old_graphs(cls, net):
        g = graphs(cls, net)["decoder"]
        del g.inputs["attention_mask"], g.dynamic["attention_mask"]
        g.module = WithoutMask(g.module)
        return {"decoder": g}

    monkeypatch.setattr(LMMethod, "onnx_graphs", classmethod(old_graphs))
    run, new = text_exported["gpt"]
    old = load_export(export(run, tmp_path / "old"))
    assert "attention_mask" not in {i.name for i in old.session.get_inputs()}
    assert type(old.engine(2)).__name__ == "RowEngine"
    prompts = ["a", "KING RICHARD III:\nNow is the winter of our discontent"]
    assert old.generate(prompts, max_new_tokens=40, temperature=0) == load_export(new).generate(
        prompts, max_new_tokens=40, temperature=0)
