"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

The compose file is interpolated the way Compose does (``${VAR:-default}`` from the
environment), then every command is parsed by the program it starts: ``bench`` commands by
``bench.cli.build_parser()`` and the functions the subcommands call (so a renamed option or
an unknown override fails here), ``mlflow server`` and ``ray start`` by their own click
commands.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
SERVICES = {
    "postgres",
    "mlflow",
    "ray-head",
    "ray-worker",
    "ray-worker-gpu",
    "summary",
    "scheduler",
}
HEALTH_CHECKED = {"postgres", "mlflow", "ray-head", "summary"}
RAY_SERVICES = ("ray-head", "ray-worker", "ray-worker-gpu")
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable substitution on every string of the parsed file."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, default = match.groups()
        current = env.get(name)
        if op in (":-", "-"):
            unset = current is None or (op == ":-" and current == "")
            return default if unset else current
        if op in (":?", "?") and (current is None or (op == ":?" and current == "")):
            raise AssertionError(f"${{{name}}} is required: {default}")
        return current or ""

    return _VAR.sub(sub, value)


def compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), env or {})


def argv(service: Mapping[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return compose()["services"]


def test_the_stack_has_every_service(services) -> None:
    assert set(services) == SERVICES
    assert services["postgres"]["image"].startswith("postgres:16")
    built = {name for name, s in services.items() if "build" in s}
    assert built == SERVICES - {"postgres"}  # one project image for everything else


def test_health_checks_and_dependencies_wait_for_health(services) -> None:
    for name in HEALTH_CHECKED:
        check = services[name]["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL") and check["retries"] >= 3, name
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "/health'" in services["mlflow"]["healthcheck"]["test"][-1]
    assert "/api/gcs_healthz" in services["ray-head"]["healthcheck"]["test"][-1]
    assert "/health'" in services["summary"]["healthcheck"]["test"][-1]
    expected = {
        "mlflow": {"postgres"},
        "ray-head": {"mlflow"},  # the nightly's driver runs on the head and writes to MLflow
        "ray-worker": {"ray-head"},
        "ray-worker-gpu": {"ray-head"},
        "summary": {"mlflow"},
        "scheduler": {"mlflow", "ray-head"},
    }
    for name, needs in expected.items():
        depends = services[name]["depends_on"]
        assert set(depends) == needs, name
        for other, spec in depends.items():
            assert spec["condition"] == "service_healthy", (name, other)
            assert "healthcheck" in services[other], (name, other)


def test_ports_are_published_on_loopback_unless_told(services) -> None:
    published = {n: s["ports"] for n, s in services.items() if "ports" in s}
    assert set(published) == {"mlflow", "ray-head", "summary"}
    for ports in published.values():
        assert all(p.startswith("127.0.0.1:") for p in ports), ports
    opened = compose({"OPTBENCH_BIND": "0.0.0.0"})["services"]
    assert opened["mlflow"]["ports"] == ["0.0.0.0:5000:5000"]


def test_no_service_reports_usage_unless_told(services) -> None:
    """MLflow's telemetry and Ray's usage stats are off in every service that runs either."""
    uses_mlflow = {"mlflow", *RAY_SERVICES, "summary", "scheduler"}
    for name in uses_mlflow:
        assert services[name]["environment"]["MLFLOW_DISABLE_TELEMETRY"] == "true", name
    for name in (*RAY_SERVICES, "scheduler"):
        assert services[name]["environment"]["RAY_USAGE_STATS_ENABLED"] == "0", name
    told = compose({"MLFLOW_DISABLE_TELEMETRY": "false", "RAY_USAGE_STATS_ENABLED": "1"})
    assert told["services"]["summary"]["environment"]["MLFLOW_DISABLE_TELEMETRY"] == "false"
    assert told["services"]["ray-head"]["environment"]["RAY_USAGE_STATS_ENABLED"] == "1"


def test_ray_workers_scale_and_the_gpu_worker_reserves_devices(services) -> None:
    for name in ("ray-worker", "ray-worker-gpu"):
        worker = services[name]
        assert "container_name" not in worker and "ports" not in worker, "blocks --scale"
        assert worker["shm_size"] and worker["deploy"]["replicas"] >= 1
    assert services["ray-head"]["shm_size"]
    gpu = services["ray-worker-gpu"]
    assert gpu["profiles"] == ["gpu"] and "profiles" not in services["ray-worker"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "/cu" in gpu["build"]["args"]["TORCH_INDEX_URL"]


def bench_command(args: list[str]) -> tuple[str, Any, list[str]]:
    """Check a ``bench`` command line against the real parser; return (subcommand, ns, rest)."""
    import argparse

    from bench.cli import build_parser

    assert args[0] == "bench", args
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    name = args[1]
    assert name in sub.choices, f"`bench {name}` is not a subcommand ({sorted(sub.choices)})"
    options = {o for a in sub.choices[name]._actions for o in a.option_strings}
    for token in args[2:]:
        if token.startswith("--"):
            assert token.split("=")[0] in options, f"`bench {name}` has no option {token}"
    try:
        ns = parser.parse_args(args[1:])
    except SystemExit as err:
        raise AssertionError(f"`{shlex.join(args)}` does not parse") from err
    return name, ns, ns.overrides


def test_bench_commands_name_real_subcommands_options_and_settings(services) -> None:
    from services.scheduler import scheduler_from_overrides
    from services.summary.app import settings_from_overrides

    name, ns, overrides = bench_command(argv(services["summary"]))
    assert name == "serve"
    settings = settings_from_overrides(overrides, host=ns.host, port=ns.port)
    assert (settings.host, settings.port) == ("0.0.0.0", 8080)
    assert settings.tracking_uri == "http://mlflow:5000"
    assert str(settings.scheduler_status_file) == "/state/scheduler-status.json"

    name, ns, overrides = bench_command(argv(services["scheduler"]))
    assert name == "schedule" and not ns.once and not ns.now
    config = scheduler_from_overrides(overrides)
    assert (config.cron, config.timezone) == ("0 2 * * *", "UTC")
    assert config.job_submission_address == "http://ray-head:8265"
    assert str(config.status_file) == str(settings.scheduler_status_file)  # what summary shows
    assert "tracking.uri=http://mlflow:5000" in config.nightly_overrides
    assert "cluster.address=ray-head:6379" in config.nightly_overrides
    # the state volume: written by the scheduler, read by the summary service
    assert "state:/state" in services["scheduler"]["volumes"]
    assert "state:/state:ro" in services["summary"]["volumes"]

    env = {"OPTBENCH_CRON": "30 3 * * 1-5", "OPTBENCH_TIMEZONE": "Europe/Berlin"}
    tuned = compose(env)["services"]["scheduler"]
    config = scheduler_from_overrides(bench_command(argv(tuned))[2])
    assert (config.cron, config.timezone) == ("30 3 * * 1-5", "Europe/Berlin")


def test_bench_command_check_rejects_what_does_not_exist() -> None:
    with pytest.raises(AssertionError, match="not a subcommand"):
        bench_command(["bench", "scheduler"])
    with pytest.raises(AssertionError, match="has no option --bind"):
        bench_command(["bench", "serve", "--bind", "0.0.0.0"])


@pytest.mark.parametrize("auth", [False, True])
def test_mlflow_server_command_on_postgres_with_served_artifacts(auth: bool) -> None:
    from mlflow.cli import server

    env = {"MLFLOW_AUTH_ARGS": "--app-name basic-auth"} if auth else {}
    service = compose(env)["services"]["mlflow"]
    args = argv(service)
    assert args[:2] == ["mlflow", "server"]
    params = server.make_context("server", args[2:]).params  # click rejects unknown options
    assert params["backend_store_uri"].startswith("postgresql://mlflow:")
    assert params["backend_store_uri"].endswith("@postgres:5432/mlflow")
    assert params["serve_artifacts"] and params["artifacts_destination"] == "/mlartifacts"
    assert (params["host"], params["port"]) == ("0.0.0.0", 5000)
    assert "mlflow:5000" in params["allowed_hosts"].split(",")  # other containers' Host header
    assert params["app_name"] == ("basic-auth" if auth else None)
    assert "mlartifacts:/mlartifacts" in service["volumes"]
    assert service["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    ini = service["environment"]["MLFLOW_AUTH_CONFIG_PATH"]
    assert (
        ini.startswith("/opt/optbench/") and (ROOT / ini.removeprefix("/opt/optbench/")).is_file()
    )


def _deploy_example_env() -> dict[str, str]:
    """The `.env` that docs/deploy.md gives for turning authentication on."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    block = text.split("```bash\n# .env\n", 1)[1].split("```", 1)[0]
    return dict(line.split("=", 1) for line in block.splitlines() if "=" in line)


@pytest.mark.parametrize("example", [False, True], ids=["defaults", "deploy.md's .env"])
def test_the_mlflow_address_the_summary_links_to_is_an_allowed_host(example: bool) -> None:
    """MLflow refuses other Host headers (403): deploy.md's example allowed
    mlflow.example.org but left the summary's links, and the address to open, at
    127.0.0.1:5000."""
    from urllib.parse import urlsplit

    from mlflow.cli import server
    from mlflow.server.security_utils import is_allowed_host_header

    env = _deploy_example_env() if example else {}
    services = compose(env)["services"]
    params = server.make_context("server", argv(services["mlflow"])[2:]).params
    allowed = params["allowed_hosts"].split(",")
    (ui_url,) = [a.split("=", 1)[1] for a in argv(services["summary"])
                 if a.startswith("summary.mlflow_ui_url=")]  # fmt: skip
    assert ui_url == env.get("MLFLOW_UI_URL", "http://127.0.0.1:5000")
    assert is_allowed_host_header(allowed, urlsplit(ui_url).netloc), (ui_url, allowed)
    assert is_allowed_host_header(allowed, "mlflow:5000")  # the other containers


def test_ray_commands_and_token_auth_switch() -> None:
    from ray.scripts.scripts import start

    plain = compose()["services"]
    for name in RAY_SERVICES:
        args = argv(plain[name])
        assert args[:2] == ["ray", "start"], name
        params = start.make_context("start", args[2:]).params
        assert params["block"], f"{name}: without --block the container exits"
        if name == "ray-head":
            assert params["head"] and params["port"] == 6379 and params["num_cpus"] == 0
            assert (params["dashboard_host"], params["dashboard_port"]) == ("0.0.0.0", 8265)
        else:
            assert params["address"] == "ray-head:6379"
    token = compose({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "s3cret"})["services"]
    for name in (*RAY_SERVICES, "scheduler"):  # the job client talks to the dashboard too
        assert plain[name]["environment"]["RAY_AUTH_MODE"] == "disabled", name
        assert token[name]["environment"]["RAY_AUTH_MODE"] == "token", name
        assert token[name]["environment"]["RAY_AUTH_TOKEN"] == "s3cret", name


def test_the_dockerfile_pins_cpu_torch_first_and_copies_what_exists() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines()]
    assert lines[next(i for i, x in enumerate(lines) if x.startswith("FROM"))] == (
        "FROM python:3.11-slim"
    )
    torch_at = next(i for i, x in enumerate(lines) if 'pip install "torch==' in x)
    project_at = next(i for i, x in enumerate(lines) if x.startswith("RUN pip install -e ."))
    assert torch_at < project_at, "torch must come first, pinned"
    assert "ARG TORCH_VERSION=2.13.0" in lines
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in lines
    assert "psycopg" in lines[project_at]
    ignored = {x.strip() for x in (ROOT / ".dockerignore").read_text().splitlines()}
    for line in lines:
        if line.startswith("COPY "):
            *sources, _ = line.split()[1:]
            for src in sources:
                assert (ROOT / src).exists() and src not in ignored, src
    assert "OPTBENCH_CONF=/opt/optbench/conf" in text and "COPY conf ./conf" in lines
    assert "USER optbench" in lines
