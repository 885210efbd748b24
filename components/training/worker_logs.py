"""Each worker's log, kept beside the run's checkpoints; the driver archives them to the MLflow run.

Workers write to the run's storage (a shared folder or object storage),
not to MLflow: only one process writes to the tracking store, and a
worker group that is killed still leaves the log it had saved at its last
checkpoint for the driver to archive.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pyarrow.fs

from components.console_lines import attach_console_lines
from components.data.shards.shard_store import ShardStore

LOG_FOLDER = "worker_logs"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class WorkerLog(logging.Handler):
    """Collects the ``tvp`` loggers' records of one worker; ``save()`` (re)writes them to storage."""

    def __init__(self, filesystem: pyarrow.fs.FileSystem, run_fs_path: str, rank: int):
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter(FORMAT))
        started = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self.filesystem = filesystem
        self.path = f"{run_fs_path}/{LOG_FOLDER}/{started}-rank{rank}.log"
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def save(self) -> None:
        self.filesystem.create_dir(self.path.rsplit("/", 1)[0], recursive=True)
        with self.filesystem.open_output_stream(self.path) as out:
            out.write(("\n".join(self.lines) + "\n").encode())


def attach_worker_log(filesystem: pyarrow.fs.FileSystem, run_fs_path: str, rank: int) -> WorkerLog:
    handler = WorkerLog(filesystem, run_fs_path, rank)
    logger = logging.getLogger("tvp")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    attach_console_lines(rank)  # and marked for the console: the driver shows them, and files Ray's lines away
    return handler


def download_worker_logs(storage_uri: str, run_name: str, dst: str | Path) -> list[Path]:
    """Copy every saved worker log of run ``run_name`` under ``storage_uri`` into ``dst``."""
    folder = ShardStore(f"{storage_uri.rstrip('/')}/{run_name}/{LOG_FOLDER}")  # a local folder or object storage
    copied = []
    for name in folder.names():
        copied.append(Path(dst) / name)
        copied[-1].write_bytes(folder.read_bytes(name))
    return copied
