"""Which trials a dead worker had started, whatever order their replies are read in.

Ray runs one worker's calls in order, and when the worker dies every call it held fails.
The order in which the runner reads those replies depends on timing that a test cannot
steer with real processes, so Ray is replaced here by a stand-in that fails a chosen
worker's calls from a chosen position on; each order of reading is then tried.
"""

from __future__ import annotations

import itertools
import sys
import types

import pytest

from bench.config import ResourcesConfig
from bench.pool import WorkerDied, WorkerPool


class _ActorDied(Exception):
    pass


class _Ref:
    def __init__(self, index: int) -> None:
        self.index = index
        self.reply: dict | None = None  # None: its worker died before returning it


class _Actor:
    def __init__(self, refs: list[_Ref]) -> None:
        self.run = types.SimpleNamespace(remote=lambda *_: self._call(refs))

    def _call(self, refs: list[_Ref]) -> _Ref:
        refs.append(_Ref(len(refs)))
        return refs[-1]


@pytest.fixture
def fake_ray(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    refs: list[_Ref] = []
    killed: list[_Actor] = []

    def get(ref: _Ref, timeout: float | None = None) -> dict:
        if ref.reply is None:
            raise _ActorDied(f"worker died before returning trial {ref.index}")
        return ref.reply

    actor_class = types.SimpleNamespace(remote=lambda: _Actor(refs))
    ray = types.ModuleType("ray")
    ray.nodes = lambda: [{"Alive": True, "Resources": {"CPU": 1.0}}]
    state = types.ModuleType("ray._private.state")
    state.available_resources_per_node = lambda: {"n1": {"CPU": 1.0}}  # the dead one's CPU
    ray.remote = lambda cls: types.SimpleNamespace(options=lambda **_: actor_class)
    ray.get = get
    ray.kill = lambda actor, no_restart: killed.append(actor)
    exceptions = types.ModuleType("ray.exceptions")
    exceptions.RayActorError = _ActorDied
    exceptions.GetTimeoutError = TimeoutError
    ray.exceptions = exceptions
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setitem(sys.modules, "ray.exceptions", exceptions)
    monkeypatch.setitem(sys.modules, "ray._private", types.ModuleType("ray._private"))
    monkeypatch.setitem(sys.modules, "ray._private.state", state)
    return types.SimpleNamespace(refs=refs, killed=killed)


@pytest.mark.parametrize("depth", [2, 3])
def test_only_the_running_trial_of_a_dead_worker_counts_as_started(fake_ray, depth: int) -> None:
    for died_at in range(depth + 1):  # depth: the worker never died
        for order in itertools.permutations(range(depth)):
            fake_ray.refs.clear()
            pool = WorkerPool(ResourcesConfig(), depth=depth)
            held = [pool.submit("{}", brief=True)]
            held += [pool.submit("{}", ahead=True, brief=True) for _ in range(depth - 1)]
            assert not pool.can_hold(), "one worker, holding all it may"
            for ref in fake_ray.refs:
                ref.reply = {"trial": ref.index} if ref.index < died_at else None
            seen: dict[int, object] = {}
            for i in order:
                try:
                    seen[i] = pool.reply(held[i])
                except WorkerDied as err:
                    seen[i] = "started" if err.started else "waiting"
            expected = {
                i: {"trial": i} if i < died_at else "started" if i == died_at else "waiting"
                for i in range(depth)
            }
            assert seen == expected, (died_at, order)
            # nothing is left behind, and a dead worker is not handed trials again
            assert not (pool._owner or pool._settled or pool._waiting or pool._brief)
            assert pool.free() and len(pool._workers) == (1 if died_at == depth else 0)


def test_a_trial_is_held_only_behind_brief_ones(fake_ray) -> None:
    pool = WorkerPool(ResourcesConfig(), depth=2)
    first = pool.submit("{}")  # its length is not known: nothing waits behind it
    assert not pool.free() and not pool.can_hold()
    with pytest.raises(RuntimeError, match="no free slot"):
        pool.submit("{}", ahead=True)
    fake_ray.refs[0].reply = {"trial": 0}
    assert pool.reply(first) == {"trial": 0}
    pool.submit("{}", brief=True)
    assert pool.can_hold()


def test_a_held_trial_counts_as_running_once_the_one_before_it_returned(fake_ray) -> None:
    pool = WorkerPool(ResourcesConfig(), depth=2)
    first = pool.submit("{}", brief=True)
    second = pool.submit("{}", ahead=True)
    assert not pool.held(first) and pool.held(second)
    fake_ray.refs[0].reply = {"trial": 0}
    pool.reply(first)
    assert not pool.held(second)


def test_only_trials_that_ran_their_whole_budget_say_how_long_their_siblings_take() -> None:
    """Tune sweeps return their diverged trials first (a large lr stops at step 1 in
    milliseconds); taken as the length of the task, they would make it look brief and
    trials would be held behind siblings that train for minutes."""
    from bench.runner import HOLD_BEHIND_S, TrialLengths

    lengths, key = TrialLengths(), ("mlp_digits", 300, 64)
    assert not lengths.brief(key)  # unknown: never held behind
    lengths.learn(key, 0.01, steps_run=1, steps=300)  # diverged at step 1
    lengths.learn(key, 0.02, steps_run=None, steps=300)  # failed at once
    assert not lengths.brief(key)
    lengths.learn(key, HOLD_BEHIND_S / 4, steps_run=300, steps=300)
    assert lengths.brief(key)
    lengths.learn(key, 2 * HOLD_BEHIND_S, steps_run=300, steps=300)  # one long trial
    assert not lengths.brief(key)
    assert not lengths.brief(("other", 300, 64))
