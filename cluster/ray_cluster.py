"""Reaching Ray: an in-process local instance, or the cluster named by --address / RAY_ADDRESS."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys

import ray

from cluster import worker_output

# Ray Data needs CPU slots of its own beside the Train workers: with only as
# many logical CPUs as cores, two 1-CPU workers on 2 cores starve the reads
# and the job hangs. Oversubscribing logical CPUs leaves Data its share.
LOCAL_CPU_FACTOR = 2
MIN_LOCAL_CPUS = 4

# How this driver treats logs, on a cluster it starts or one it attaches to:
# - log_to_driver: the workers' output reaches this driver (not only Ray's session folder on each node),
#   whatever RAY_LOG_TO_DRIVER says; cluster.worker_output decides where it goes.
# - logging_level: the driver's "ray" logger from WARNING ("Started a local Ray instance" is not news).
# Not logging_config=ray.LoggingConfig(...): it would configure the root logger of this driver and of every
# worker of the job, over the CLI's own routing (pipelines.console) and Ray Train's worker logging.
DRIVER_LOGGING = {"log_to_driver": True, "logging_level": logging.WARNING}


def connect(address: str | None = None, num_cpus: int | None = None, dashboard: bool = True) -> str:
    """Initialise Ray once: the cluster at ``address`` / $RAY_ADDRESS, else a new local instance.

    Returns the GCS address, which subprocesses can use as RAY_ADDRESS.
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    _quiet_data_logs()
    if not ray.is_initialized():
        if address:
            ray.init(address=address, **DRIVER_LOGGING)
        else:
            start_local(num_cpus, dashboard)
        _send_worker_output_to_sink()
    return ray.get_runtime_context().gcs_address


def _send_worker_output_to_sink() -> None:
    """Hand the workers' output to ``cluster.worker_output`` instead of Ray's printer (once per ray.init).

    Ray has no public hook for this: it registers its printer on a dispatcher under the name
    "ray_print_logs". Where a Ray version lacks that dispatcher, Ray keeps printing the output itself.
    """
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.remove_handler("tvp_worker_output")
    dispatcher.add_handler("tvp_worker_output", worker_output.forward)


def start_local(num_cpus: int | None = None, dashboard: bool = True) -> None:
    """A new in-process Ray instance (never an existing cluster found on the machine).

    It listens on loopback when ``cluster.loopback.use_loopback_only()`` ran before ray was imported,
    as the CLI and the tests do.
    """
    cpus = num_cpus or max(MIN_LOCAL_CPUS, LOCAL_CPU_FACTOR * (os.cpu_count() or 1))
    # Ray announces on stderr that it enabled token authentication for the new instance (it stays enabled);
    # the CLI's stderr is for its own one-line errors.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    # No usage reports from an instance tvp starts for itself (and no reporter thread beside the work).
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # The dashboard serves the state API that Ray Train's placement-group cleaner polls; it listens on
    # loopback only. Jobs without Ray Train (ingestion) start a few seconds sooner without it.
    ray.init(
        address="local",
        num_cpus=cpus,
        include_dashboard=dashboard,
        dashboard_host="127.0.0.1",
        **DRIVER_LOGGING,
    )


def _quiet_data_logs() -> None:
    """Ray Data's per-operator bars and status logs only on a terminal; pipelines print their own progress.

    Ray Data draws on stderr, which the tvp CLI sends to its log file: no bars there.
    """
    import ray.data

    context = ray.data.DataContext.get_current()
    interactive = sys.stderr.isatty()
    context.enable_progress_bars = interactive
    context.print_on_execution_start = interactive
    if not interactive:
        logging.getLogger("ray.data").setLevel(logging.WARNING)


def _local_addresses() -> set[str]:
    addresses = {"localhost", socket.gethostname(), ray.util.get_node_ip_address()}
    try:
        addresses.update(info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None))
    except OSError:
        pass
    return addresses


def is_this_machine(host: str) -> bool:
    """Whether ``host`` (a name or address) is this machine: loopback or one of its own addresses."""
    try:
        if ipaddress.ip_address(host).is_loopback:
            return True
    except ValueError:
        pass
    return host in _local_addresses()


def cluster_is_local() -> bool:
    """True when every alive node of the connected cluster runs on this machine."""
    return all(is_this_machine(node.get("NodeManagerAddress", "")) for node in ray.nodes() if node.get("Alive"))
