"""A local SQLite tracking store is refused once the Ray cluster spans machines.

``cluster_is_local`` can only judge by the addresses nodes announce: loopback,
and the addresses this machine is known by (its host name, the driver's own
node address), count as this machine; any other address is another machine.
The multi-node fixture runs every node on 127.0.0.1, so it always looks
local. Here a real second raylet announces an address that is neither, as a
node on another host would: it runs inside a network namespace
(``unshare -n``) whose loopback carries 10.251.0.1 (the head, which the
driver reaches) and 10.251.0.2 (the other node). Those addresses exist only in
the namespace, which has no other interface, so nothing can leave the machine.
What stays simulated is only that the two raylets share one kernel.

The same ``prepare_services`` call that ``tvp train`` makes is checked three
times: on the one-node cluster (accepted), after the second node joined
(refused, naming the store and the way out), and with a store every node
reaches (accepted). About 10 s: two raylets, no Train run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

ADDRESSES = ("10.251.0.1", "10.251.0.2")


def run_in_namespace(workdir: Path) -> dict:
    setup = " && ".join(["ip link set lo up", *(f"ip addr add {ip}/32 dev lo" for ip in ADDRESSES)])
    command = f"{setup} && exec {sys.executable} -m tests.cluster.spanning_cluster_in_namespace {workdir}"
    # Ray's single-machine switch would pin every node to 127.0.0.1; no session cluster, no tracking server.
    unset = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS", "MLFLOW_TRACKING_URI"}
    env = {k: v for k, v in os.environ.items() if k not in unset}
    done = subprocess.run(["unshare", "-n", "sh", "-c", command], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((workdir / "results.json").read_text())


def test_local_store_refused_on_a_spanning_cluster(tmp_path):
    results = run_in_namespace(tmp_path)
    local_store = f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert results["one_machine"] == {"accepted": local_store}
    assert results["nodes"] == list(ADDRESSES)
    assert results["task_on_other_node"] == ADDRESSES[1]
    refusal = results["two_machines"].get("refused", "")
    assert "nodes on other machines" in refusal and local_store in refusal and "MLFLOW_TRACKING_URI" in refusal
    assert results["two_machines_shared_store"] == {"accepted": f"postgresql://tvp@{ADDRESSES[0]}/mlflow"}
