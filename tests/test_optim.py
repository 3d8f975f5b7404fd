"""genforge's Muon against torch.optim.Muon, whose update it reproduces (with its own product dtype)."""

from __future__ import annotations

import pytest
import torch

from genforge.optim import Muon, orthogonalise


def _pair(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = [torch.randn(*s, generator=g).requires_grad_() for s in shapes]
    return a, [x.detach().clone().requires_grad_() for x in a]


def test_update_equals_torch_muon():
    shapes = [(384, 128), (128, 128), (512, 128), (128, 512), (384, 128)]  # two of one shape: batched together
    ref, ours = _pair(shapes)
    start = [p.detach().clone() for p in ref]
    opt_ref = torch.optim.Muon(ref, lr=1e-2, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    opt_ours = Muon(ours, lr=1e-2, weight_decay=0.1, ns_dtype=torch.bfloat16)  # torch's iteration runs in bf16
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        grads = [torch.randn(*s, generator=g) for s in shapes]
        for p, q, gr in zip(ref, ours, grads):
            p.grad, q.grad = gr.clone(), gr.clone()
        opt_ref.step()
        opt_ours.step()
    for p, q, p0 in zip(ref, ours, start):
        assert torch.allclose(p.detach(), q.detach(), atol=2e-3), float((p - q).abs().max())
        assert (q.detach() - p0).abs().max() > 0.01  # it moved, by far more than the tolerance
    # the momentum buffers match too
    for p, q in zip(ref, ours):
        assert torch.allclose(opt_ref.state[p]["momentum_buffer"], opt_ours.state[q]["momentum_buffer"], atol=1e-6)


def test_orthogonalise_makes_singular_values_near_one_in_fp32():
    g = torch.randn(3, 64, 160, generator=torch.Generator().manual_seed(2))
    s = torch.linalg.svdvals(orthogonalise(g))
    assert s.shape == (3, 64) and 0.5 < float(s.min()) and float(s.max()) < 1.5  # the quintic's band, not exactly 1
    tall = orthogonalise(g.mT)
    assert tall.shape == (3, 160, 64) and torch.allclose(tall, orthogonalise(g).mT, atol=1e-5)


def test_muon_refuses_vectors():
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.zeros(4, requires_grad=True)])


def test_lm_with_muon_gives_it_the_blocks_matrices_and_adamw_the_rest():
    from genforge.methods.lm import LMConfig, LMMethod, TextSpec
    from genforge.training.config import TrainConfig

    cfg = LMConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, optimizer="muon")
    method = LMMethod(cfg, TextSpec(vocab_size=40), total_steps=10)
    method.setup(TrainConfig(lr=1e-2))
    net = method.networks["model"]
    muon = {id(p) for g in method.optimizers["muon"].param_groups for p in g["params"]}
    adamw = {id(p) for g in method.optimizers["model"].param_groups for p in g["params"]}
    assert not muon & adamw and muon | adamw == {id(p) for p in net.parameters()}
    assert id(net.wte.weight) in adamw and id(net.wpe.weight) in adamw  # embeddings (the tied head) stay on AdamW
    assert len(muon) == 2 * 4 and all(p.dim() == 2 for g in method.optimizers["muon"].param_groups for p in g["params"])
    assert set(method.schedulers) == {"muon", "model"}
