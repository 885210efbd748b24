"""The console is for people: a ``tvp`` command shows its own progress and summary; library output goes to a log.

Inside ``Console`` (the CLI opens one around every command):
- this process's stderr is the log: what Ray's and MLflow's loggers, Ray Data,
  Python warnings and tracebacks of library threads write there lands in the
  command's log file, not on the terminal;
- the output of Ray workers that reaches this driver (Ray Train's controller
  and workers, Ray Data's tasks) goes to the log too, except the lines a
  worker marks for people (``components.console_lines``): its progress,
  thinned out over time (``progress_gap``; the latest line held back is shown
  before tvp prints anything else), and its warnings, always shown;
- a library message that a person should act on is restated in one line,
  ``tvp: warning: ...``, once (``RESTATED``);
- with ``verbose`` (``tvp -v``) the library output is also shown live.

The log is ``WORKDIR/logs/tvp-COMMAND-TIME.log`` for commands with a work
directory, else a file in the temporary folder. Lines wait in memory until
the work directory exists, so a command that fails before creating it leaves
nothing behind there; it leaves its log in the temporary folder instead, if it
logged anything. ``Console.log_path`` says where the log went, if anywhere.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import TextIO

# Worker progress on the console: lines at least PROGRESS_EVERY_S apart at first, a gap that doubles every
# two lines up to PROGRESS_MAX_EVERY_S, so that a short job shows a few lines and a long one a line every few minutes.
PROGRESS_EVERY_S = 10.0
PROGRESS_MAX_EVERY_S = 300.0
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Library messages a person should know about, each restated in one line. Matched on single lines of
# library output (driver loggers and worker output alike); {0}, {1}... are the pattern's groups.
RESTATED: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\[FailurePolicy\] RETRY"),
     "a training worker failed: Ray Train restarts the worker group from the latest checkpoint"),
    (re.compile(r"\[FailurePolicy\] RAISE"),
     "a training worker failed and Ray Train will not retry it"),
    (re.compile(r"Cluster resources are not enough to run any task from (\S+?)\.? The job may hang"),
     "Ray Data has no free CPU to run {0} and waits for one: give the cluster more CPUs or training fewer"),
    (re.compile(r"resource request cannot be scheduled right now: (\{[^}]*\})"),
     "Ray cannot place {0} yet: every resource of the cluster is taken, and the job waits for one"),
    (re.compile(r"running low on memory|OutOfMemoryError"),
     "Ray killed a worker because its node ran low on memory"),
)


def progress_gap(shown: int) -> float:
    """Seconds to wait before the next worker progress line, after ``shown`` of them."""
    return min(PROGRESS_MAX_EVERY_S, PROGRESS_EVERY_S * 2 ** (shown // 2))


def restatement(line: str) -> str | None:
    """The one-line restatement of a library line that a person should act on, else None."""
    for pattern, message in RESTATED:
        match = pattern.search(line)
        if match:
            return message.format(*match.groups())
    return None


class LogFile:
    """A log that starts writing to ``path`` once ``anchor`` (the work directory) exists; thread-safe.

    Until then lines wait in memory; ``close`` moves them to ``fallback`` if the anchor never appeared.
    Lines that come after ``close`` (from a handler that kept the stream) are appended to the same file.
    """

    def __init__(self, path: Path, anchor: Path, fallback: Path, header: str) -> None:
        self.path, self.anchor, self.fallback, self.header = path, anchor, fallback, header
        self.written_to: Path | None = None  # where the log is, once a line reached a file
        self._pending: list[str] = []
        self._file: TextIO | None = None
        self._closed = False
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        with self._lock:
            if self._closed:
                if self.written_to is not None:
                    with open(self.written_to, "a", encoding="utf-8", errors="replace") as late:
                        late.write(text)
                return
            if self._file is None and not self._pending:
                self._pending.append(self.header)
            if self._file is None and self.anchor.is_dir():
                self._open(self.path)
            if self._file is None:
                self._pending.append(text)
            else:
                self._file.write(text)
                self._file.flush()

    def close(self) -> Path | None:
        """Close the file; return where the log went (None if nothing was logged)."""
        with self._lock:
            if self._file is None and self._pending:
                self._open(self.fallback)
            if self._file is not None:
                self._file.close()
                self._file = None
            self._closed = True
            return self.written_to

    def _open(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8", errors="replace")
        self._file.write("".join(self._pending))
        self._pending.clear()
        self.written_to = path


class LibraryStream(io.TextIOBase):
    """Stands in for ``sys.stderr``: text goes to the log, whole lines are checked for restatements."""

    def __init__(self, console: "Console") -> None:
        self._console = console
        self._partial = ""

    def write(self, text: str) -> int:
        self._console.log.write(text)
        if self._console.verbose:
            self._console.terminal_err.write(text)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()[-10_000:]
        for line in lines:
            self._console.restate(line)
        return len(text)

    def flush(self) -> None:
        if self._console.verbose:
            self._console.terminal_err.flush()

    def isatty(self) -> bool:
        return False  # no progress bars or colours in a log file

    def fileno(self) -> int:
        return self._console.terminal_err.fileno()  # C-level writes (faulthandler) still reach the terminal

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


class ConsoleStream(io.TextIOBase):
    """Stands in for ``sys.stdout``: before tvp prints, the worker progress line held back is shown."""

    def __init__(self, console: "Console") -> None:
        self._console = console

    def write(self, text: str) -> int:
        self._console.show_held_progress()
        return self._console.terminal_out.write(text)

    def flush(self) -> None:
        self._console.terminal_out.flush()

    def isatty(self) -> bool:
        return self._console.terminal_out.isatty()

    def fileno(self) -> int:
        return self._console.terminal_out.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._console.terminal_out, "encoding", "utf-8")


class _LogHandler(logging.Handler):
    """Every record that reaches the root logger: into the log (and on the terminal when verbose)."""

    def __init__(self, console: "Console") -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter(LOG_FORMAT))
        self._console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record) + "\n"
            self._console.log.write(text)
            if self._console.verbose:
                self._console.terminal_err.write(text)
            if record.levelno >= logging.WARNING and not record.name.startswith("tvp"):
                self._console.restate(record.getMessage())
        except Exception:
            self.handleError(record)


class _TvpHandler(logging.Handler):
    """The driver's own ``tvp`` loggers: warnings restated on the console (records also reach the log)."""

    def __init__(self, console: "Console") -> None:
        super().__init__(logging.WARNING)
        self._console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._console.warn(record.getMessage())
        except Exception:
            self.handleError(record)


class Console:
    """The routing described in the module docstring, for one command; use as a context manager."""

    def __init__(self, command: str, workdir: str | Path | None = None, verbose: bool = False) -> None:
        self.command, self.verbose = command, verbose
        self.terminal_out: TextIO = sys.stdout
        self.terminal_err: TextIO = sys.stderr
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = f"tvp-{command}-{stamp}-{os.getpid()}.log"
        fallback = Path(tempfile.gettempdir()) / "tvp-logs" / name
        header = f"# tvp {command}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: library output\n"
        if workdir is None:
            self.log = LogFile(fallback, fallback.parent.parent, fallback, header)
        else:
            work = Path(workdir).resolve()
            self.log = LogFile(work / "logs" / name, work, fallback, header)
        self.log_path: Path | None = None
        self._said: set[str] = set()
        self._held: str | None = None
        self._last_progress = float("-inf")
        self._progress_shown = 0
        self._out_lock = threading.RLock()
        self._saved: dict = {}

    # --- what the routing calls ---------------------------------------------------------------------------

    def warn(self, message: str) -> None:
        """``tvp: warning: MESSAGE`` on the terminal, once per message."""
        message = " ".join(message.split())
        with self._out_lock:
            if message in self._said:
                return
            self._said.add(message)
            self.show_held_progress()
            self.terminal_err.write(f"tvp: warning: {message}\n")
            self.terminal_err.flush()

    def restate(self, line: str) -> None:
        message = restatement(line)
        if message:
            self.warn(message)

    def progress(self, message: str) -> None:
        """A worker's progress line: shown now if none was for a while, else held until then or tvp prints."""
        with self._out_lock:
            if self.verbose or time.monotonic() - self._last_progress >= progress_gap(self._progress_shown):
                self._held = None
                self._show_progress(message)
            else:
                self._held = message

    def show_held_progress(self) -> None:
        with self._out_lock:
            if self._held is not None:
                held, self._held = self._held, None
                self._show_progress(held)

    def _show_progress(self, message: str) -> None:
        self._last_progress = time.monotonic()
        self._progress_shown += 1
        self._print_out(message)

    def worker_output(self, output) -> None:
        """The sink for ``cluster.worker_output``: marked lines for people, everything into the log."""
        from components.console_lines import parse

        for line in output.lines:
            marked = parse(line)
            if marked is None:
                text = f"({output.source}) {line}\n"
                self.log.write(text)
                if self.verbose:
                    self.terminal_err.write(text)
                self.restate(line)
                continue
            level, message = marked
            self.log.write(f"({output.source}) {line}\n")
            if level >= logging.WARNING:
                self.warn(message)
            else:
                self.progress(f"  {message}")

    def _print_out(self, text: str) -> None:
        self.terminal_out.write(text + "\n")
        self.terminal_out.flush()

    # --- opening and closing ------------------------------------------------------------------------------

    def __enter__(self) -> "Console":
        from cluster.worker_output import send_worker_output_to

        root, tvp = logging.getLogger(), logging.getLogger("tvp")
        self._saved = {
            "stdout": sys.stdout, "stderr": sys.stderr, "root_level": root.level, "tvp_level": tvp.level,
            "sink": send_worker_output_to(self.worker_output), "ray_was_up": _ray_is_initialized(),
        }
        self._handlers = [(root, _LogHandler(self)), (tvp, _TvpHandler(self))]
        for logger, handler in self._handlers:
            logger.addHandler(handler)
        # Ray, once imported, logs through its own stderr handler (the stream it saw at import) and does not
        # propagate: while the console runs, its records go to the root logger like every library's.
        self._saved["ray_loggers"] = {}
        for name, logger in list(logging.root.manager.loggerDict.items()):
            if (name == "ray" or name.startswith("ray.")) and isinstance(logger, logging.Logger) \
                    and not logger.propagate:
                self._saved["ray_loggers"][name] = (logger.handlers[:], logger.propagate)
                logger.handlers, logger.propagate = [], True
        root.setLevel(logging.INFO)
        tvp.setLevel(logging.INFO)
        sys.stdout, sys.stderr = ConsoleStream(self), LibraryStream(self)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        from cluster.worker_output import send_worker_output_to

        from components.errors import TvpError

        self.show_held_progress()
        if exc is not None and not isinstance(exc, (TvpError, KeyboardInterrupt, SystemExit)):
            self.log.write("".join(traceback.format_exception(exc_type, exc, tb)))  # a bug: where it happened
        if not self._saved["ray_was_up"] and _ray_is_initialized():
            _shutdown_ray()  # its last words (late worker output, shutdown notices) go to the log too
        sys.stdout, sys.stderr = self._saved["stdout"], self._saved["stderr"]
        send_worker_output_to(self._saved["sink"])
        for logger, handler in self._handlers:
            logger.removeHandler(handler)
        for name, (handlers, propagate) in self._saved["ray_loggers"].items():
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = handlers, propagate
        logging.getLogger().setLevel(self._saved["root_level"])
        logging.getLogger("tvp").setLevel(self._saved["tvp_level"])
        self.log_path = self.log.close()


def _ray_is_initialized() -> bool:
    ray = sys.modules.get("ray")  # never imported here: a command that did not use Ray does not pay for it
    return bool(ray is not None and getattr(ray, "is_initialized", lambda: False)())


def _shutdown_ray() -> None:
    try:
        sys.modules["ray"].shutdown()
    except Exception:  # noqa: BLE001 - the command is over; its result stands whatever Ray says on the way out
        traceback.print_exc()
