"""Wikipedia ingestion: a pages-articles dump → a shard set of documents, through the one shard stage.

One sample per article (namespace 0, not a redirect, with prose left once
cleaned), keyed by its page id (zero-padded, so keys sort as ids do):

- ``.txt``: the article's prose, one sentence per line (``wikitext_prose.py``, ``sentences.py``);
- ``.json``: ``id``, ``revision_id``, ``title``, ``url_title`` (URL-safe), ``url`` (when the dump names its
  wiki) and ``categories`` (the names of its ``[[Category:...]]`` links, in order).

Pages that are not articles are counted by category in each shard's stats and
the manifest's ``errors``: ``redirect``, ``other_namespace``,
``unknown_namespace`` (a namespace ``<siteinfo>`` does not declare), ``empty``
(no wikitext) and ``no_prose`` (nothing left once cleaned: a page of templates).

What the driver does depends on the dump (``components/data/shards/shard_stage.py`` runs the rest):

- multistream ``.xml.bz2`` with its index (found beside it, or given): the
  driver reads only the index. A row is one bz2 stream (a byte range of the
  dump, ~100 pages), and each shard's Ray task reads, decompresses and parses
  its own streams, so a 20 GB dump is decompressed and cleaned by every worker
  at once. The dump must be at a path every node sees.
- ``.xml`` or ``.xml.bz2`` without an index: nothing says where pages start,
  so the driver streams the dump once, parsing pages, and a row is a page
  (its wikitext included); the tasks clean them. On a large dump the driver's
  single decompression is then the limit: use the multistream file.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from functools import cached_property
from importlib.metadata import version
from pathlib import Path
from typing import Any, ClassVar, Iterator
from urllib.parse import quote

import pyarrow as pa

from components.data.ingest.sentences import DEFAULT_LANGUAGE, split_sentences
from components.data.ingest.wikipedia_dump import (
    ARTICLE_NAMESPACE, Page, SiteInfo, StreamRange, WikipediaDumpError, check_multistream_tail, index_for,
    iter_pages, read_index, read_siteinfo, read_stream_pages,
)
from components.data.ingest.wikitext_prose import build_cleaner
from components.data.shards.shard_source import ShardContent
from components.data.shards.shard_stage import Planned, ShardDone, build_shard_set

CLEANER_VERSION = 1  # raise when the cleaner's output changes: sets made before are then refused, not mixed
FILE_NAMESPACE, CATEGORY_NAMESPACE = 6, 14
SKIPS = ("redirect", "other_namespace", "unknown_namespace", "empty", "no_prose")
PAGE_SCHEMA = pa.schema([("id", pa.int64()), ("revision_id", pa.int64()), ("title", pa.string()),
                         ("ns", pa.int64()), ("redirect", pa.bool_()), ("text", pa.string())])
STREAM_SCHEMA = pa.schema([("stream_start", pa.int64()), ("stream_end", pa.int64()), ("pages", pa.int64())])


def sample_key(page_id: int) -> str:
    return f"{page_id:010d}"


def _fingerprint_of_file(path: Path, span: int = 1 << 20) -> str:
    """SHA-256 of the first and last MiB and the size: tells dumps apart without reading 20 GB."""
    digest, size = hashlib.sha256(), os.path.getsize(path)
    with open(path, "rb") as f:
        digest.update(f.read(span))
        f.seek(max(size - span, 0))
        digest.update(f.read(span))
    digest.update(str(size).encode())
    return digest.hexdigest()[:32]


def _skip_reason(page: Page) -> str | None:
    if page.redirect:
        return "redirect"
    if page.ns is None:
        return "unknown_namespace"
    if page.ns != ARTICLE_NAMESPACE:
        return "other_namespace"
    if not page.text.strip():
        return "empty"
    return None


@dataclass
class WikipediaDumpReader:
    """The stage's ``InputReader`` for a dump: stream rows with an index, page rows without one."""

    dump: Path
    index: Path | None = None
    input_name: ClassVar[str] = "dump"

    def __post_init__(self):
        self.dump = Path(self.dump).resolve()
        if not self.dump.is_file():
            raise WikipediaDumpError(f"no dump at {self.dump}")
        if self.index is None:
            self.index = index_for(self.dump)
        elif not Path(self.index).is_file():
            raise WikipediaDumpError(f"no index at {self.index}")
        self.index = Path(self.index).resolve() if self.index else None

    @cached_property
    def site(self) -> SiteInfo:
        return read_siteinfo(self.dump)

    @cached_property
    def streams(self) -> list[StreamRange]:
        """The dump's page streams (multistream with an index), checked: the index fits, the tail is whole,
        and some page is an article."""
        streams = read_index(self.index, self.dump, self.site)
        check_multistream_tail(self.dump, streams)
        if not any(s.articles for s in streams):
            raise WikipediaDumpError(f"{self.dump.name} has no articles: its index lists no page in namespace 0")
        return streams

    def rows_per_shard(self, pages_per_shard: int) -> int:
        """Rows of about ``pages_per_shard`` pages: pages themselves, or whole streams of a multistream dump."""
        if not self.index:
            return pages_per_shard
        return max(1, round(pages_per_shard / (self.num_pages() / len(self.streams))))

    def num_pages(self) -> int | None:
        return sum(s.pages for s in self.streams) if self.index else None

    def describe(self) -> dict[str, Any]:
        source = {"dump": self.dump.name, "bytes": self.dump.stat().st_size,
                  "digest": _fingerprint_of_file(self.dump), "dbname": self.site.dbname}
        if self.index:
            source.update(index=self.index.name, index_bytes=self.index.stat().st_size, streams=len(self.streams))
        return source

    def read(self, batch_rows: int) -> Iterator[pa.Table]:
        return self._read_streams(batch_rows) if self.index else self._read_pages(batch_rows)

    def _read_streams(self, batch_rows: int) -> Iterator[pa.Table]:
        for i in range(0, len(self.streams), batch_rows):
            batch = self.streams[i:i + batch_rows]
            yield pa.table({"stream_start": [s.start for s in batch], "stream_end": [s.end for s in batch],
                            "pages": [s.pages for s in batch]}, schema=STREAM_SCHEMA)

    def _read_pages(self, batch_rows: int) -> Iterator[pa.Table]:
        rows: list[dict[str, Any]] = []
        articles = 0
        for page in iter_pages(self.dump):
            skip = _skip_reason(page)
            articles += skip is None
            rows.append({"id": page.id, "revision_id": page.revision_id, "title": page.title, "ns": page.ns,
                         "redirect": page.redirect, "text": None if skip else page.text})
            if len(rows) >= batch_rows:
                yield pa.Table.from_pylist(rows, schema=PAGE_SCHEMA)
                rows = []
        if not articles:  # raised before the last rows are planned: the stage then leaves nothing behind
            raise WikipediaDumpError(f"{self.dump.name} has no articles (no page in namespace 0 with text)")
        if rows:
            yield pa.Table.from_pylist(rows, schema=PAGE_SCHEMA)


@dataclass
class _Counts:
    pages: int = 0
    articles: int = 0
    sentences: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


@dataclass(frozen=True)
class WikipediaShardBuilder:
    """The stage's ``ShardBuilder``: one shard's rows (pages, or streams of ``dump``) → document samples."""

    site: SiteInfo
    dump: str | None = None  # the multistream dump whose streams the rows name; None when rows are pages

    def __call__(self, rows: pa.Table, first_row: int) -> ShardContent:
        counts = _Counts()
        return ShardContent(self._samples(self._pages(rows), counts), lambda: {
            "input_rows": counts.pages, "articles": counts.articles, "sentences": counts.sentences,
            "errors": dict(sorted(counts.skipped.items())),
        })

    def _pages(self, rows: pa.Table) -> Iterator[Page]:
        if "stream_start" in rows.column_names:
            ranges = list(zip(rows.column("stream_start").to_pylist(), rows.column("stream_end").to_pylist()))
            yield from read_stream_pages(self.dump, ranges, self.site)
            return
        for row in rows.to_pylist():
            yield Page(row["title"], row["ns"], row["id"], row["revision_id"], row["redirect"], row["text"] or "")

    def _samples(self, pages: Iterator[Page], counts: _Counts) -> Iterator[dict[str, Any]]:
        cleaner = build_cleaner(self.site.names_of(FILE_NAMESPACE), self.site.names_of(CATEGORY_NAMESPACE))
        language = self.site.language or DEFAULT_LANGUAGE
        base = self.site.base_url.rpartition("/")[0] if "/wiki/" in self.site.base_url else ""
        for page in pages:
            counts.pages += 1
            reason = _skip_reason(page)
            prose = None if reason else cleaner.clean(page.text)
            sentences = list(split_sentences(prose.paragraphs, language)) if prose else []
            if not reason and not sentences:
                reason = "no_prose"
            if reason:
                counts.skip(reason)
                continue
            counts.articles += 1
            counts.sentences += len(sentences)
            url_title = quote(page.title.replace(" ", "_"), safe="()_,-.!~*':;@")
            meta = {"id": page.id, "revision_id": page.revision_id, "title": page.title, "url_title": url_title,
                    "categories": prose.categories}
            if base:
                meta["url"] = f"{base}/{url_title}"
            yield {"__key__": sample_key(page.id), "txt": "\n".join(sentences) + "\n", "json": meta}


def shard_wikipedia_dump(
    reader: WikipediaDumpReader,
    out_dir: str | Path,
    pages_per_shard: int,
    processes: int | None = None,
    on_planned: Planned | None = None,
    on_shard_done: ShardDone | None = None,
) -> dict[str, Any]:
    """Write the missing shards of ``reader``'s dump into ``out_dir``; return the set's manifest.

    A folder holding shards made from another dump or other settings is refused (``ShardSetError``); a
    rerun after a crash completes the missing shards and gives the set an uninterrupted run gives.
    """
    builder = WikipediaShardBuilder(reader.site, str(reader.dump) if reader.index else None)
    config = {"pages_per_shard": pages_per_shard, "cleaner_version": CLEANER_VERSION,
              "segmenter": f"sentencex=={version('sentencex')}", "language": reader.site.language or DEFAULT_LANGUAGE}
    try:
        return build_shard_set(reader, builder, out_dir, config, reader.rows_per_shard(pages_per_shard), processes,
                               on_planned=on_planned, on_shard_done=on_shard_done)
    except Exception as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, WikipediaDumpError):  # raised in a shard's Ray task (a corrupt stream): as itself
            raise cause from None
        raise
