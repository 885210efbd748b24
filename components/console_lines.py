"""Lines a Ray worker means for the person at the console, marked so the driver can tell them from library output.

Ray forwards everything a worker process prints to the driver of its job,
tvp's own progress ("epoch 3/24 step 30 loss 4.15") as well as Ray Train's
per-report lines and MLflow's logs. A worker's ``tvp`` loggers print their
records as marked lines::

    [tvp] epoch 3/24  step 30  loss 4.1530  924 samples/s  data wait 1%
    [tvp WARNING] a node of this run is being preempted: checkpointing at step 31

and the driver shows those (without the marker) on the console and files
every other line in the command's log (``pipelines.console``). A marked line
read raw, where no tvp driver sorts them, still reads well.
"""

from __future__ import annotations

import logging
import re
import sys

_MARKED = re.compile(r"^\[tvp(?: (WARNING|ERROR|CRITICAL))?\] (.*)$")


def mark(level: int, message: str) -> str:
    """``message`` as a marked line of this ``level`` (INFO and below carry no level name)."""
    name = logging.getLevelName(level) if level >= logging.WARNING else ""
    return f"[tvp{' ' + name if name else ''}] {message}"


def parse(line: str) -> tuple[int, str] | None:
    """(level, message) of a marked line; None for any other line."""
    match = _MARKED.match(line)
    if match is None:
        return None
    return logging.getLevelName(match.group(1)) if match.group(1) else logging.INFO, match.group(2)


class ConsoleLineHandler(logging.Handler):
    """Prints each record as one marked line on the process's stdout (whatever ``sys.stdout`` is then)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = " ".join(self.format(record).splitlines())  # one record, one line
            sys.stdout.write(mark(record.levelno, text) + "\n")
            sys.stdout.flush()
        except Exception:
            self.handleError(record)


def attach_console_lines(rank: int, logger_name: str = "tvp") -> ConsoleLineHandler:
    """Mark the ``tvp`` loggers' records for the console: rank 0's from INFO, every other rank's warnings.

    The records stop at these loggers' own handlers (the worker log keeps them too): passed on to the
    root logger, Ray's handler would print each again, unmarked.
    """
    logger = logging.getLogger(logger_name)
    for handler in [h for h in logger.handlers if isinstance(h, ConsoleLineHandler)]:
        logger.removeHandler(handler)  # a worker process may run several loops in turn
    handler = ConsoleLineHandler(logging.INFO if rank == 0 else logging.WARNING)
    logger.addHandler(handler)
    logger.setLevel(min(logger.level or logging.INFO, logging.INFO))
    logger.propagate = False
    return handler
