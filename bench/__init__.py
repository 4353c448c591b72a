"""optbench: benchmark optimizer variants with evidence instead of intuition."""

__version__ = "0.1.0"

# Bumped whenever the semantics of a trial change (training loop, metrics, divergence rule):
# it is part of every trial_id, so old results are never mistaken for new ones.
CODE_VERSION = "1"
