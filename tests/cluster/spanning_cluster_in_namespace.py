"""The scenario of ``test_local_store_refused_on_a_spanning_cluster``, run inside a network namespace.

Inside, loopback carries two more addresses, 10.251.0.1 and 10.251.0.2, that
exist only in this namespace. A Ray head announces the first; a second node,
added later, announces the second, as a raylet on another machine would. The
driver (this process) reaches the head at 10.251.0.1, so that address is its
own and the second one is not: to ``cluster_is_local`` the second node is on
another machine. ``results.json`` records what ``prepare_services`` did at
each stage; the test outside checks it.

Usage (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``, ``RAY_ADDRESS`` and ``MLFLOW_TRACKING_URI`` unset)::

    unshare -n sh -c 'ip link set lo up && ip addr add 10.251.0.1/32 dev lo && ip addr add 10.251.0.2/32 dev lo
                      && exec python -m tests.cluster.spanning_cluster_in_namespace WORKDIR'
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HEAD_IP, OTHER_IP = "10.251.0.1", "10.251.0.2"


def prepare(workdir: Path, address: str) -> dict:
    """What ``prepare_services`` does now: the tracking URI it accepts, or the error it refuses with."""
    from components.tracking.tracking_store import TrackingUnavailable
    from pipelines.run_steps import prepare_services

    try:
        return {"accepted": prepare_services(workdir, address)}
    except TrackingUnavailable as exc:
        return {"refused": str(exc)}


def main(workdir: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    results: dict = {}
    # A short private folder for Ray's sockets and session files, so that the machine's own record of
    # "the current cluster" (/tmp/ray) is left alone.
    ray_tmp = tempfile.mkdtemp(prefix="ray-ns-", dir="/tmp")
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "node_ip_address": HEAD_IP, "include_dashboard": False, "temp_dir": ray_tmp})
    try:
        results["one_machine"] = prepare(workdir, cluster.address)
        other = cluster.add_node(num_cpus=1, node_ip_address=OTHER_IP)
        cluster.wait_for_nodes()
        results["nodes"] = sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"])

        @ray.remote(num_cpus=1)
        def node_ip() -> str:
            return ray.util.get_node_ip_address()

        # The second node is a working member: a task pinned to it runs there.
        results["task_on_other_node"] = ray.get(node_ip.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(other.node_id, soft=False)).remote())
        results["two_machines"] = prepare(workdir, cluster.address)
        os.environ["MLFLOW_TRACKING_URI"] = f"postgresql://tvp@{HEAD_IP}/mlflow"  # a store every node reaches
        results["two_machines_shared_store"] = prepare(workdir, cluster.address)
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    (workdir / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
