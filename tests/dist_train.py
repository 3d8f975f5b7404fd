"""Run under `accelerate launch --num_processes 2`: trains a tiny recipe (argv[3]: gan, the default,
gan-clusters (self-conditioned) or lm) and records, per rank, the final weights and which artifact files that rank wrote."""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from genforge import artifacts
from genforge.tokenizers import Tokenizer
from genforge.training import loop
from tiny import tiny_config, tiny_lm_config

run_dir, report_dir = Path(sys.argv[1]), Path(sys.argv[2])
recipe = sys.argv[3] if len(sys.argv) > 3 else "gan"
family = "gan" if recipe.startswith("gan") else recipe
rank = int(__import__("os").environ.get("RANK", "0"))
writes = []
for owner, name in ((artifacts, "save_weights"), (artifacts, "write_config"), (Tokenizer, "save")):
    real = getattr(owner, name)

    def spy(*a, _real=real, _name=name, **k):
        writes.append(_name)
        return _real(*a, **k)

    setattr(owner, name, spy)

captured = {}
real_setup = loop.get_method(family).setup


def capture(self, train_cfg):
    real_setup(self, train_cfg)
    captured["method"] = self


loop.get_method(family).setup = capture
cfg = (tiny_lm_config() if family == "lm" else
       tiny_config(model={"clusters": 4} if recipe == "gan-clusters" else None, max_steps=4, checkpoint_every=2))
result = loop.train(cfg, run_dir, progress=False)
method = captured["method"]
state = {}
for name, net in method.networks.items():
    net = getattr(net, "module", net)
    for k, v in net.state_dict().items():
        state[f"{name}.{k}"] = v.detach().cpu().contiguous()
save_file(state, str(report_dir / f"rank{rank}.safetensors"))
(report_dir / f"rank{rank}.json").write_text(json.dumps({"writes": writes, "step": result.step}))
from genforge.cli import _leave_distributed  # noqa: E402

_leave_distributed()
