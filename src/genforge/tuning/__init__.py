"""`genforge tune`: hyper-parameter search over any config key with Optuna, pruned on in-training evaluation.

space.py reads the search-space YAML into Optuna distributions (checked against the config schema); study.py
runs trials as ordinary run directories, reports each in-training evaluation to the pruner, and writes the best
configuration, a results table and plots.
"""

from genforge.tuning.space import parse_space
from genforge.tuning.study import TuneResult, tune

__all__ = ["parse_space", "tune", "TuneResult"]
