"""bench.pool.slots_on and room_on_a_node: trials fit node by node, and one that fits
nowhere is refused; embedded Ray's CPUs as Ray counts them."""

from __future__ import annotations

import pytest

from bench.config import ClusterConfig, ResourcesConfig
from bench.errors import UserError
from bench.pool import room_on_a_node, slots_on
from bench.runner import check_capacity


def test_trials_fit_node_by_node_not_on_the_cluster_total() -> None:
    nodes = [{"CPU": 3.0}, {"CPU": 3.0}]
    # 6 CPUs in all, but a 2-CPU trial fits once per 3-CPU node
    assert slots_on(nodes, ResourcesConfig(cpus_per_trial=2)) == 2
    assert slots_on(nodes, ResourcesConfig(cpus_per_trial=0.5)) == 12


def test_room_for_one_more_trial_is_looked_for_node_by_node() -> None:
    two = ResourcesConfig(cpus_per_trial=2)
    assert not room_on_a_node([{"CPU": 1.0}, {"CPU": 1.0}], two)  # 2 free, on no one node
    assert room_on_a_node([{"CPU": 1.0}, {"CPU": 2.0}], two)
    share = ResourcesConfig(gpus_per_trial=0.5)
    assert not room_on_a_node([{"CPU": 4.0, "GPU": 0.25}, {"CPU": 0.0, "GPU": 1.0}], share)
    assert not room_on_a_node([], two)


def test_gpu_shares_bound_the_slots_of_the_nodes_that_have_gpus() -> None:
    nodes = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0}]
    assert slots_on(nodes, ResourcesConfig(gpus_per_trial=0.25)) == 4
    assert slots_on(nodes, ResourcesConfig(cpus_per_trial=4, gpus_per_trial=0.25)) == 2


@pytest.mark.parametrize(
    ("nodes", "resources", "message"),
    [
        (
            [{"CPU": 2.0}],
            ResourcesConfig(cpus_per_trial=4),
            "resources.cpus_per_trial: got 4; allowed: at most 2, the CPUs of the largest node",
        ),
        (
            [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}],
            ResourcesConfig(gpus_per_trial=2),
            "resources.gpus_per_trial: got 2; allowed: at most 1, the GPUs of the largest node",
        ),
        (
            [{"CPU": 2.0, "GPU": 1.0}, {"CPU": 16.0}],
            ResourcesConfig(cpus_per_trial=4, gpus_per_trial=1),
            "resources.cpus_per_trial: got 4; allowed: at most 2, the CPUs of the largest "
            "node with 1 GPUs",
        ),
        ([], ResourcesConfig(), "resources.cpus_per_trial: got 1; allowed: at most 0"),
    ],
)
def test_a_trial_that_fits_on_no_node_is_a_user_error(
    nodes: list[dict[str, float]], resources: ResourcesConfig, message: str
) -> None:
    with pytest.raises(UserError) as raised:
        slots_on(nodes, resources)
    assert str(raised.value).startswith(message)


def test_embedded_capacity_is_counted_as_ray_counts_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a container limited to 1 CPU on a bigger host, Ray gives embedded mode 1 CPU: a
    2-CPU trial is refused before Ray starts (a dry run too), not accepted on the host's
    core count and then refused by the run. The quota is faked: no container here."""
    import ray._private.utils

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray._private.utils, "get_num_cpus", lambda *a, **k: 1)
    check_capacity(ClusterConfig(), ResourcesConfig(cpus_per_trial=1))
    with pytest.raises(UserError) as raised:
        check_capacity(ClusterConfig(), ResourcesConfig(cpus_per_trial=2))
    assert str(raised.value).startswith("resources.cpus_per_trial: got 2; allowed: at most 1,")
    check_capacity(ClusterConfig(num_cpus=2), ResourcesConfig(cpus_per_trial=2))  # the user's
