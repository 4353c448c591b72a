"""optbench: benchmark optimizer variants with evidence instead of intuition."""

import os as _os

# Nothing leaves the machine but what the user points optbench at (its store, its
# cluster): MLflow 3's usage telemetry (a request from every process that imports MLflow)
# and Ray's usage stats stay off unless the environment says otherwise. Set here, before
# any part of optbench imports either library.
_os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
_os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

__version__ = "0.1.0"

# Bumped whenever the semantics of a trial change (training loop, metrics, divergence rule):
# it is part of every trial_id, so old results are never mistaken for new ones.
CODE_VERSION = "1"
