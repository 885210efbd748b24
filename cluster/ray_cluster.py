"""Reaching Ray: an in-process local instance, or the cluster named by --address / RAY_ADDRESS."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket

import psutil
import ray

# Ray Data needs CPU slots of its own beside the Train workers: with only as
# many logical CPUs as cores, two 1-CPU workers on 2 cores starve the reads
# and the job hangs. Oversubscribing logical CPUs leaves Data its share.
LOCAL_CPU_FACTOR = 2
MIN_LOCAL_CPUS = 4


def connect(address: str | None = None, num_cpus: int | None = None) -> str:
    """Initialise Ray once; return the address used (``local`` for a new in-process instance)."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        return address or "local"
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return address
    cpus = num_cpus or max(MIN_LOCAL_CPUS, LOCAL_CPU_FACTOR * (os.cpu_count() or 1))
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
    return "local"


def _local_addresses() -> set[str]:
    addresses = {"localhost", socket.gethostname()}
    for entries in psutil.net_if_addrs().values():
        addresses.update(entry.address.split("%")[0] for entry in entries if entry.family in (socket.AF_INET, socket.AF_INET6))
    return addresses


def cluster_is_local() -> bool:
    """True when every alive node of the connected cluster runs on this machine."""
    local = _local_addresses()
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        host = node.get("NodeManagerAddress", "")
        try:
            if ipaddress.ip_address(host).is_loopback:
                continue
        except ValueError:
            pass
        if host not in local:
            return False
    return True
