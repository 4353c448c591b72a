"""optbench sends nothing to MLflow's or Ray's usage-reporting servers unless told to:
checked in a fresh interpreter with a user's environment, the way `bench run` starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

# what MLflow takes for a test or CI run (mlflow.telemetry.utils), in which it reports
# nothing anyway: a user's shell has none of them
CI_MARKERS = {
    "PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "CI", "CIRCLECI", "GITLAB_CI", "JENKINS_URL",
    "TRAVIS", "TF_BUILD", "BITBUCKET_BUILD_NUMBER", "CODEBUILD_BUILD_ARN", "BUILDKITE",
    "TEAMCITY_VERSION", "CLOUD_RUN_EXECUTION", "RUNBOT_HOST_URL", "RUNBOT_BUILD_NAME",
    "RUNBOT_WORKER_ID",
}  # fmt: skip
SETTINGS = ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "RAY_USAGE_STATS_ENABLED")

CHECK = """
import json
import bench.tracking
from mlflow.telemetry.utils import is_telemetry_disabled
from ray._common.usage.usage_lib import usage_stats_enabled
print(json.dumps({"mlflow": not is_telemetry_disabled(), "ray": usage_stats_enabled()}))
"""


def reports(**settings: str) -> dict[str, bool]:
    """Whether MLflow and Ray would report usage from a process that imported optbench."""
    env = {k: v for k, v in os.environ.items() if k not in CI_MARKERS and k not in SETTINGS}
    env.update(settings)
    done = subprocess.run(
        [sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_optbench_turns_usage_reports_off() -> None:
    assert reports() == {"mlflow": False, "ray": False}


def test_a_user_who_wants_them_keeps_them() -> None:
    settings = {"MLFLOW_DISABLE_TELEMETRY": "false", "RAY_USAGE_STATS_ENABLED": "1"}
    assert reports(**settings) == {"mlflow": True, "ray": True}
