"""``tvp ingest image-text``: a URL (or path) + caption table → a WebDataset shard set, via Ray Data."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable

from components.data.ingest.image_text_shard import IngestConfig
from components.data.ingest.image_text_stage import shard_image_text_table
from components.data.ingest.url_table import TableSpec


class Progress:
    """One line with rows/s and the success rate: redrawn in place on a terminal, printed every few seconds in a log."""

    def __init__(self, echo: Callable[[str], None], interactive: bool, every_s: float = 5.0):
        self.echo, self.interactive, self.every_s = echo, interactive, every_s
        self.started = time.monotonic()
        self.last_line = 0.0
        self.rows = self.ok = 0

    def planned(self, shards: int, pending: int, rows: int) -> None:
        self.started = time.monotonic()  # rates count from here: planning is not downloading
        self.echo(f"  {rows} rows in {shards} shards; {pending} to do")

    def shard_done(self, stats: dict[str, Any], done: int, total: int) -> None:
        self.rows += stats["input_rows"]
        self.ok += stats["successes"]
        now = time.monotonic()
        if not self.interactive and now - self.last_line < self.every_s and done < total:
            return
        self.last_line = now
        rate = self.rows / max(now - self.started, 1e-9)
        line = (f"  shards {done}/{total}  rows {self.rows}  {rate:.0f} rows/s  "
                f"success {100 * self.ok / max(self.rows, 1):.1f}%")
        if self.interactive:
            print("\r" + line, end="\n" if done == total else "", file=sys.stderr, flush=True)
        else:
            self.echo(line)


def summary_lines(manifest: dict[str, Any]) -> list[str]:
    failures = ", ".join(f"{k} {v}" for k, v in sorted(manifest["errors"].items(), key=lambda kv: -kv[1])) or "none"
    return [f"  {manifest['num_samples']} samples from {manifest['num_input_rows']} rows in "
            f"{manifest['num_shards']} shards", f"  failures by category: {failures}"]


def ingest_image_text(
    table: TableSpec,
    output: str | Path,
    cfg: IngestConfig,
    rows_per_shard: int,
    processes: int | None = None,
    dedup: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Shard ``table`` into ``output`` (resuming a previous run there); return the manifest."""
    progress = Progress(echo, interactive=echo is print and sys.stderr.isatty())
    manifest = shard_image_text_table(table, output, cfg, rows_per_shard, processes, dedup,
                                      on_shard_done=progress.shard_done, on_planned=progress.planned)
    for line in summary_lines(manifest):
        echo(line)
    return manifest
