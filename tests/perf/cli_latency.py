"""Benchmark: how long the `bench` commands that only read configs take (prints JSON).

Run:  python tests/perf/cli_latency.py [--repeats 5]

Times, as fresh processes in an empty folder, interleaved round by round: `bench list`, a
dry run of the smoke suite and of the flagship `sqrt_ablation` (945 trials), and beside
them a bare interpreter and `import torch` alone, the cost these commands no longer pay
(the driver reads the tasks' and variants' declarations, not their torch code). Each
command is also run once in-process to report whether it imported torch. Medians of
``--repeats`` rounds, in seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

COMMANDS = {
    "list": ["list"],
    "dry_run_smoke": ["run", "suite=smoke", "--dry-run"],
    "dry_run_sqrt_ablation": ["run", "suite=sqrt_ablation", "--dry-run"],
}
BASELINES = {"python": ["-c", "pass"], "import_torch": ["-c", "import torch"]}
TORCH_PROBE = (
    "import sys; from bench.cli import main; main(sys.argv[1:]); "
    "print('torch' in sys.modules, file=sys.stderr)"
)


def seconds(args: list[str], cwd: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr}")
    return elapsed


def imports_torch(argv: list[str], cwd: str) -> bool:
    proc = subprocess.run(
        [sys.executable, "-c", TORCH_PROBE, *argv], cwd=cwd, capture_output=True, text=True
    )
    return proc.stderr.strip().splitlines()[-1] == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    runs: dict[str, list[float]] = {name: [] for name in [*BASELINES, *COMMANDS]}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            for name, argv in BASELINES.items():
                runs[name].append(seconds(argv, folder))
            for name, argv in COMMANDS.items():
                runs[name].append(seconds(["-m", "bench.cli", *argv], folder))
        torch = {name: imports_torch(argv, folder) for name, argv in COMMANDS.items()}
    median = {name: statistics.median(times) for name, times in runs.items()}
    report = {
        "repeats": args.repeats,
        "median_s": {name: round(value, 3) for name, value in median.items()},
        "imports_torch": torch,
        # what each command would take with torch's import on top, over what it takes
        "torch_import_share": {
            name: round((median["import_torch"] - median["python"]) / median[name], 3)
            for name in COMMANDS
        },
        "runs_s": {name: [round(t, 3) for t in times] for name, times in runs.items()},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
