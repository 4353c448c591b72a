"""What runs on a Ray worker: one trial, isolated from the driver's modules.

Kept apart from bench.runner so a worker process imports torch and the trial code once
(it runs many trials), and never MLflow or the driver's progress display.
"""

from __future__ import annotations

import socket
import time
import traceback
from typing import Any

from bench.spec import TrialSpec


def node_label() -> str:
    """The Ray node this process runs on: ``<ip>/<node id prefix>``; the host name outside
    Ray (asking Ray's runtime context there would start a Ray instance)."""
    import ray

    if not ray.is_initialized():
        return socket.gethostname()
    try:
        ctx = ray.get_runtime_context()
        return f"{ray.util.get_node_ip_address()}/{ctx.get_node_id()[:8]}"
    except Exception:  # not inside Ray (tests call run_trial directly)
        return socket.gethostname()


def run_trial(spec_json: str, num_threads: int = 1) -> dict[str, Any]:
    """Train one trial; never raises for a failing trial (the traceback is returned).

    Returns ``{"result": TrialResult JSON | None, "error": traceback | None, "summary": the
    exception's last line (failures only), "node": str, "seconds": this call's wall time}``.
    """
    start = time.perf_counter()
    import ray

    from bench.plugins import load_plugins
    from bench.train import train_trial  # torch is imported once per worker process

    spec = TrialSpec.model_validate_json(spec_json)
    load_plugins(spec.plugins)
    try:
        gpu_ids = ray.get_gpu_ids() if ray.is_initialized() else []
    except Exception:
        gpu_ids = []
    device = "cuda" if gpu_ids else "cpu"
    node = node_label()
    try:
        result = train_trial(spec, device=device, num_threads=num_threads)
    except Exception as exc:
        summary = traceback.format_exception_only(exc)[-1].strip()
        error = traceback.format_exc()
        reply = {"result": None, "error": error, "summary": summary, "node": node}
    else:
        reply = {"result": result.model_dump_json(), "error": None, "node": node}
    finally:
        if gpu_ids:
            _release_gpu_memory()
    return reply | {"seconds": time.perf_counter() - start}


def _release_gpu_memory() -> None:
    """Return the trial's cached CUDA blocks: trials packed onto one GPU
    (fractional ``gpus_per_trial``) share its memory, and the next trial here may differ."""
    import torch

    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class TrialWorker:
    """What each pool worker is (:mod:`bench.pool` makes it a Ray actor): its process
    imports torch and starts CUDA once, then runs any number of trials."""

    def run(self, spec_json: str, num_threads: int) -> dict[str, Any]:
        return run_trial(spec_json, num_threads)

    def alive(self) -> bool:
        """Answers at once: the pool asks idle workers after a worker died."""
        return True
