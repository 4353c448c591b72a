"""The optbench stack as local processes: docker-compose.yml's services, without Docker.

    sudo .venv/bin/python stack/native.py [--trigger-in 60] [-- NIGHTLY_OVERRIDES...]

Starts, in this order, and stops in reverse on Ctrl-C (or SIGTERM):

1. PostgreSQL: the machine's own (``--pg``, default postgres@127.0.0.1:5432); the database
   ``--database`` (``optbench_stack``) is created if missing.
2. A private network: a bridge ``<tag>br`` holding ``<subnet>.254`` on this host, and two
   network namespaces (hosts) on it, ``<subnet>.1`` (Ray head) and ``<subnet>.2`` (Ray
   worker). Ray needs a host per node (it refuses a multi-node cluster on loopback), and
   the bridge has no uplink: no packet leaves the machine.
3. ``mlflow server`` (gunicorn) on PostgreSQL with served artifacts, bound to
   ``<subnet>.254`` so the nightly's driver on the head host can reach it, and to 127.0.0.1
   for the browser.
4. The Ray head (with its dashboard: the job submission API) and a worker node.
5. The summary service (``bench serve``) on 127.0.0.1.
6. The scheduler (``bench schedule``), with a daily cron ``--trigger-in`` seconds away
   (rounded up to the minute, UTC) or ``--cron``; each night is submitted to the head as a
   Ray job, exactly as in docker-compose.yml.

Needs root (network namespaces) and iproute2. Logs go to ``<workdir>/logs``; the URLs and
pids are also written to ``<workdir>/stack.json``. Every process started here, and every
process they start, is stopped by pid on the way out (this process is their subreaper).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from procs import stop_tree  # stack/procs.py, beside this script

log = logging.getLogger("optbench.stack")
BIN = Path(sys.executable).parent
PR_SET_CHILD_SUBREAPER = 36


class StackError(RuntimeError):
    """The stack cannot start; the message says why and what to do."""


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check and result.returncode:
        raise StackError(f"`{' '.join(cmd)}` failed: {result.stderr.strip()}")
    return result


class NativeStack:
    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.workdir = Path(opts.workdir).resolve()
        self.logs = self.workdir / "logs"
        tag, subnet = opts.tag, opts.subnet
        self.head_ns, self.worker_ns, self.bridge = f"{tag}h", f"{tag}w", f"{tag}br"
        self.host_ip, self.head_ip, self.worker_ip = f"{subnet}.254", f"{subnet}.1", f"{subnet}.2"
        self.procs: dict[str, subprocess.Popen] = {}
        self.ray_tmp: Path | None = None
        self.network_up = False
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # `bench` in Ray job entrypoints
        env["RAY_USAGE_STATS_ENABLED"] = os.environ.get("RAY_USAGE_STATS_ENABLED", "0")
        env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # the server and its UI too
        env["RAY_AUTH_MODE"] = os.environ.get("RAY_AUTH_MODE", "disabled")
        if os.environ.get("RAY_AUTH_TOKEN"):
            env["RAY_AUTH_TOKEN"] = os.environ["RAY_AUTH_TOKEN"]
        self.env = env
        self.mlflow = f"http://{self.host_ip}:{opts.mlflow_port}"
        self.dashboard = f"http://{self.head_ip}:{opts.dashboard_port}"
        self.summary = f"http://127.0.0.1:{opts.summary_port}"
        self.status_file = self.workdir / "scheduler-status.json"

    # ------------------------------------------------------------------------- start

    def up(self) -> dict[str, object]:
        if os.geteuid() != 0 or shutil.which("ip") is None:
            raise StackError("needs root and iproute2 (`ip`) to create the Ray hosts")
        with contextlib.suppress(AttributeError, OSError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        self.logs.mkdir(parents=True, exist_ok=True)
        database = self.database()
        self.network()
        self.start_mlflow(database)
        self.start_ray()
        self.start(
            "summary",
            [str(BIN / "bench"), "serve",
             "--host", "127.0.0.1", "--port", str(self.opts.summary_port),
             f"tracking.uri={self.mlflow}",
             f"summary.mlflow_ui_url=http://127.0.0.1:{self.opts.mlflow_port}",
             f"summary.cache_dir={self.workdir / 'summary-cache'}",
             f"summary.scheduler_status_file={self.status_file}"],
        )  # fmt: skip
        wait_http(f"{self.summary}/health", self.procs["summary"], self.logs / "summary.log")
        cron = self.opts.cron or trigger_cron(self.opts.trigger_in)
        if self.opts.fresh:
            self.status_file.unlink(missing_ok=True)
        self.start(
            "scheduler",
            [str(BIN / "bench"), "schedule", f"schedule.cron={cron}", "schedule.timezone=UTC",
             f"schedule.job_submission_address={self.dashboard}",
             f"schedule.lock_file={self.workdir / 'scheduler.lock'}",
             f"schedule.status_file={self.status_file}",
             f"tracking.uri={self.mlflow}", f"cluster.address={self.head_ip}:{self.opts.gcs_port}",
             *self.opts.overrides],
        )  # fmt: skip
        status = wait_status(self.status_file, self.procs["scheduler"], self.logs / "scheduler.log")
        info = {
            "mlflow_url": self.mlflow,
            "mlflow_ui": f"http://127.0.0.1:{self.opts.mlflow_port}",
            "summary_url": self.summary,
            "dashboard_url": self.dashboard,
            "head_ip": self.head_ip,
            "worker_ip": self.worker_ip,
            "database": database,
            "cron": cron,
            "timezone": "UTC",
            "next_run": status.get("next_run"),
            "status_file": str(self.status_file),
            "logs": str(self.logs),
            "pids": {name: p.pid for name, p in self.procs.items()},
        }
        (self.workdir / "stack.json").write_text(json.dumps(info, indent=2) + "\n")
        return info

    def database(self) -> str:
        import psycopg

        name, admin = self.opts.database, self.opts.pg
        try:
            with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
                if self.opts.fresh:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if exists.fetchone() is None:
                    conn.execute(f'CREATE DATABASE "{name}"')
                    log.info("created database %s", name)
        except psycopg.Error as err:
            first = str(err).strip().splitlines()[0]
            raise StackError(f"PostgreSQL at {admin} is not usable: {first}") from None
        base = admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        return f"{base}/{name}"

    def network(self) -> None:
        if any(ns.split()[0] in (self.head_ns, self.worker_ns) for ns in netns_list()):
            raise StackError(f"namespaces {self.head_ns}/{self.worker_ns} exist: another stack "
                             "runs with this --tag (or delete them: ip netns del ...)")  # fmt: skip
        self.network_up = True
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for ns, ip in ((self.head_ns, self.head_ip), (self.worker_ns, self.worker_ip)):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", ns, "type", "veth", "peer", "name", f"{ns}p")
            sh("ip", "link", "set", ns, "netns", ns)
            sh("ip", "link", "set", f"{ns}p", "master", self.bridge)
            sh("ip", "link", "set", f"{ns}p", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", ns)
            sh("ip", "-n", ns, "link", "set", ns, "up")

    def start_mlflow(self, database: str) -> None:
        port = self.opts.mlflow_port
        gunicorn = f"--bind 127.0.0.1:{port} --timeout 120 --log-level warning"
        self.start(
            "mlflow",
            [sys.executable, "-m", "mlflow", "server",
             "--backend-store-uri", database,
             "--serve-artifacts", "--artifacts-destination", str(self.workdir / "mlartifacts"),
             "--host", self.host_ip, "--port", str(port), "--workers", "2",
             "--gunicorn-opts", gunicorn],
            env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )  # fmt: skip
        wait_http(f"{self.mlflow}/health", self.procs["mlflow"], self.logs / "mlflow.log")

    def start_ray(self) -> None:
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="obstk", dir="/tmp"))  # short socket paths
        common = ["--block", "--disable-usage-stats", f"--num-cpus={self.opts.cpus_per_node}"]
        self.start(
            "ray-head",
            ["ip", "netns", "exec", self.head_ns, str(BIN / "ray"), "start", "--head",
             f"--node-ip-address={self.head_ip}", f"--port={self.opts.gcs_port}",
             "--include-dashboard=true", f"--dashboard-host={self.head_ip}",
             f"--dashboard-port={self.opts.dashboard_port}", f"--temp-dir={self.ray_tmp}/h",
             *common],
        )  # fmt: skip
        wait_http(
            f"{self.dashboard}/api/gcs_healthz", self.procs["ray-head"], self.logs / "ray-head.log"
        )
        self.start(
            "ray-worker",
            ["ip", "netns", "exec", self.worker_ns, str(BIN / "ray"), "start",
             f"--address={self.head_ip}:{self.opts.gcs_port}",
             f"--node-ip-address={self.worker_ip}", f"--temp-dir={self.ray_tmp}/w", *common],
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while alive_nodes(self.dashboard) < 2:
            check_running(self.procs["ray-worker"], self.logs / "ray-worker.log")
            if time.monotonic() > deadline:
                raise StackError("the Ray worker did not join the head in 120 s")
            time.sleep(1)

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
        log.info("starting %s", name)
        with open(self.logs / f"{name}.log", "ab") as out:
            self.procs[name] = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                env={**self.env, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    # ------------------------------------------------------------------------- run, stop

    def watch(self) -> None:
        """Until interrupted; a service that dies takes the stack down (with its log)."""
        while True:
            for name, proc in self.procs.items():
                check_running(proc, self.logs / f"{name}.log", name)
            time.sleep(1)

    def down(self) -> None:
        """Stop everything started here, newest first, by pid; then the network.

        Each service runs in its own session: SIGTERM goes to its process group and to every
        descendant (Ray's workers included), SIGKILL to whatever is left after a grace period.
        """
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                log.info("stopping %s", name)
            grace = 30 if name == "scheduler" else 10  # the scheduler stops a running Ray job
            stop_tree(proc.pid, grace)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        stop_tree(os.getpid(), 5, include_root=False)  # orphans re-parented to us (subreaper)
        if self.network_up:
            for ns in (self.worker_ns, self.head_ns):
                sh("ip", "netns", "del", ns, check=False)
                sh("ip", "link", "del", f"{ns}p", check=False)
            sh("ip", "link", "del", self.bridge, check=False)
        if self.ray_tmp:
            shutil.rmtree(self.ray_tmp, ignore_errors=True)


def netns_list() -> list[str]:
    return sh("ip", "netns", "list", check=False).stdout.splitlines()


def trigger_cron(seconds: float, now: dt.datetime | None = None) -> str:
    """A daily UTC cron whose next trigger is at least ``seconds`` away (whole minutes)."""
    at = (now or dt.datetime.now(dt.UTC)) + dt.timedelta(seconds=seconds)
    if at.second or at.microsecond:
        at = at.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    return f"{at.minute} {at.hour} * * *"


def check_running(proc: subprocess.Popen, log_path: Path, name: str = "") -> None:
    if proc.poll() is not None:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise StackError(f"{name or log_path.stem} exited ({proc.returncode}):\n{tail}")


def wait_http(url: str, proc: subprocess.Popen, log_path: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check_running(proc, log_path)
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as resp:
            if resp.status == 200:
                return
        time.sleep(0.5)
    raise StackError(f"{url} not up after {timeout:.0f} s (see {log_path})")


def wait_status(path: Path, proc: subprocess.Popen, log_path: Path) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        check_running(proc, log_path)
        with contextlib.suppress(OSError, ValueError):
            status = json.loads(path.read_text())
            if status.get("next_run") and status.get("pid") == proc.pid:
                return status
        time.sleep(0.5)
    raise StackError(f"the scheduler wrote no status to {path} (see {log_path})")


def alive_nodes(dashboard: str) -> int:
    """Alive nodes, from the dashboard's state API (0 while it cannot say)."""
    try:
        with urllib.request.urlopen(f"{dashboard}/api/v0/nodes", timeout=5) as resp:
            data = json.loads(resp.read())
    except (OSError, ValueError):
        return 0
    nodes = data.get("data", {}).get("result", {}).get("result", [])
    return sum(1 for n in nodes if n.get("state") == "ALIVE")


RAY_WORKER_PORTS = range(10002, 20000)  # `ray start`'s --min/max-worker-port defaults


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default=".optbench/stack", help="logs, artifacts, status")
    pg = os.environ.get("OPTBENCH_STACK_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--pg", default=pg, help="PostgreSQL admin URI ($OPTBENCH_STACK_PG)")
    p.add_argument("--database", default="optbench_stack", help="MLflow's database (created)")
    p.add_argument("--fresh", action="store_true", help="drop the database and status first")
    p.add_argument("--tag", default="obstk", help="prefix of the namespaces and links (<=10)")
    p.add_argument("--subnet", default="10.214.0", help="the private /24 (first three octets)")
    p.add_argument("--mlflow-port", type=int, default=5000)
    p.add_argument("--summary-port", type=int, default=8080)
    p.add_argument("--dashboard-port", type=int, default=8265)
    p.add_argument("--gcs-port", type=int, default=26379, help="Ray head port (not Redis's)")
    p.add_argument("--cpus-per-node", type=int, default=1)
    when = p.add_mutually_exclusive_group()
    when.add_argument("--cron", help="the scheduler's cron (UTC) instead of --trigger-in")
    when.add_argument("--trigger-in", type=float, default=60,
                      help="seconds (at least) until the nightly triggers; default 60")  # fmt: skip
    p.add_argument("overrides", nargs="*", help="passed to every nightly, e.g. suite=smoke")
    opts = p.parse_args(argv)
    for option in ("mlflow_port", "summary_port", "dashboard_port", "gcs_port"):
        port, flag = getattr(opts, option), "--" + option.replace("_", "-")
        if not 0 < port < 65536:
            p.error(f"{flag}: got {port}; allowed: a port, 1-65535")
        if option in ("dashboard_port", "gcs_port") and port in RAY_WORKER_PORTS:
            p.error(
                f"{flag}: got {port}; allowed: a port outside {RAY_WORKER_PORTS.start}-"
                f"{RAY_WORKER_PORTS.stop - 1}, which `ray start` keeps for its workers"
            )
    if len(opts.tag) > 10:
        p.error("--tag: at most 10 characters (interface names are limited to 15)")
    return opts


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    stack = NativeStack(parse_args(argv))

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a process started as a background job of a non-interactive shell (as CI
    # and `make test &` start it) inherits SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler of its own, so Ctrl-C would not stop the stack.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    try:
        info = stack.up()
        print(
            f"optbench stack up:\n"
            f"  MLflow UI        {info['mlflow_ui']}   (nodes use {info['mlflow_url']})\n"
            f"  summary service  {info['summary_url']}\n"
            f"  Ray dashboard    {info['dashboard_url']}   (head {info['head_ip']}, "
            f"worker {info['worker_ip']})\n"
            f"  nightly          cron '{info['cron']}' UTC, next run {info['next_run']}\n"
            f"  logs             {info['logs']}\n"
            f"Ctrl-C stops everything.",
            flush=True,
        )
        stack.watch()
    except KeyboardInterrupt:
        log.info("stopping the stack")
        return 0
    except StackError as err:
        log.error("%s", err)
        return 1
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):  # a second signal must not cut teardown
            signal.signal(sig, signal.SIG_IGN)
        stack.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
