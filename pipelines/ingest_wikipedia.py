"""``tvp ingest wikipedia``: a pages-articles dump → a document shard set, with progress and a short summary."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable

from components.data.ingest.wikipedia_stage import WikipediaDumpReader, shard_wikipedia_dump


class Progress:
    """Shards, pages and pages/s: redrawn in place on a terminal, a line every few seconds in a log."""

    def __init__(self, echo: Callable[[str], None], interactive: bool, every_s: float = 5.0):
        self.echo, self.interactive, self.every_s = echo, interactive, every_s
        self.started = self.last_line = time.monotonic()
        self.pages = self.articles = 0

    def planned(self, shards: int, pending: int, rows: int) -> None:
        self.started = time.monotonic()
        self.echo(f"  {shards} shards; {pending} to do")

    def shard_done(self, stats: dict[str, Any], done: int, total: int) -> None:
        self.pages += stats["input_rows"]
        self.articles += stats["articles"]
        now = time.monotonic()
        if not self.interactive and now - self.last_line < self.every_s and done < total:
            return
        self.last_line = now
        line = (f"  shards {done}/{total}  pages {self.pages}  articles {self.articles}  "
                f"{self.pages / max(now - self.started, 1e-9):.0f} pages/s")
        if self.interactive:
            print("\r" + line, end="\n" if done == total else "", file=sys.stderr, flush=True)
        else:
            self.echo(line)


def summary_lines(manifest: dict[str, Any]) -> list[str]:
    skipped = manifest["errors"]
    other = {k: v for k, v in skipped.items() if k not in ("redirect", "other_namespace", "empty", "no_prose")}
    lines = [f"  {manifest['num_samples']} articles from {manifest['num_input_rows']} pages in "
             f"{manifest['num_shards']} shards",
             f"  skipped: {skipped.get('redirect', 0)} redirects, {skipped.get('other_namespace', 0)} in other "
             f"namespaces, {skipped.get('empty', 0) + skipped.get('no_prose', 0)} empty"
             + "".join(f", {v} {k.replace('_', ' ')}" for k, v in sorted(other.items()))]
    return lines


def open_dump(dump: str | Path, index: str | Path | None = None) -> WikipediaDumpReader:
    """The dump's reader, checked as far as can be without reading it all (its header; with an index, the index
    and the dump's tail): a bad dump fails here, before Ray starts."""
    reader = WikipediaDumpReader(Path(dump), Path(index) if index else None)
    reader.describe()
    return reader


def ingest_wikipedia(
    reader: WikipediaDumpReader,
    output: str | Path,
    pages_per_shard: int,
    processes: int | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Shard the dump into ``output`` (resuming a previous run there); return the manifest."""
    echo(f"  {reader.dump.name}: " + (f"{reader.num_pages()} pages in {len(reader.streams)} bz2 streams, read "
                                      f"in parallel (index {reader.index.name})" if reader.index
                                      else "no multistream index, so this process streams its pages"))
    progress = Progress(echo, interactive=echo is print and sys.stderr.isatty())
    manifest = shard_wikipedia_dump(reader, output, pages_per_shard, processes,
                                    on_planned=progress.planned, on_shard_done=progress.shard_done)
    for line in summary_lines(manifest):
        echo(line)
    return manifest
