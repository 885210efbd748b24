"""MediaWiki export XML → pages, streamed: ``.xml``, ``.xml.bz2``, and the multistream ``.xml.bz2`` with its index.

Nothing here holds a dump whole: pages come out one at a time as the XML is
parsed (expat, through ``xml.etree``'s pull parser), each page's elements freed
once it is read.

The layouts:

- ``.xml`` and ``.xml.bz2`` (one or many concatenated bz2 streams): read in
  order from the start, ``iter_pages``.
- multistream ``.xml.bz2`` + its index (``…-multistream-index.txt[.bz2]``,
  lines ``OFFSET:PAGE_ID:TITLE``): every bz2 stream but the first (the
  ``<siteinfo>`` header) and the last (the closing tag) holds whole pages, so
  each stream decompresses and parses alone, anywhere: ``read_stream_pages``.
  ``read_index`` lists the streams (byte ranges and page counts).

Namespaces come from the dump's ``<siteinfo>``: a page's ``<ns>`` when it has one
(dumps since export 0.5), else its title's prefix. A page whose namespace the
site does not declare is returned with ``ns=None`` (the caller counts it).

Errors a person can act on are ``WikipediaDumpError``, one line: a truncated
bz2 file, XML that is not well-formed, a file that is not a MediaWiki export, a
dump whose namespaces cannot be told (no ``<ns>`` and no ``<siteinfo>``), an
index that does not fit its dump.
"""

from __future__ import annotations

import bz2
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator
from xml.etree.ElementTree import ParseError, XMLPullParser

from components.errors import TvpError

CHUNK = 1 << 20
ARTICLE_NAMESPACE = 0


class WikipediaDumpError(TvpError, ValueError):
    """A dump (or its index) that cannot be read; the message names it and the problem in one line."""


@dataclass(frozen=True)
class SiteInfo:
    """What ``<siteinfo>`` says: namespace number → name ("" for articles), the wiki's base URL and database."""

    namespaces: dict[int, str] = field(default_factory=dict)
    base_url: str = ""
    dbname: str = ""
    language: str = ""  # the root element's xml:lang ("en")

    @property
    def declared(self) -> bool:
        return bool(self.namespaces)

    def names_of(self, key: int) -> list[str]:
        return [self.namespaces[key]] if self.namespaces.get(key) else []

    def namespace_of_title(self, title: str) -> int:
        prefix, colon, _ = title.partition(":")
        if colon:
            wanted = prefix.replace("_", " ").strip().lower()
            for key, name in self.namespaces.items():
                if name and name.lower() == wanted:
                    return key
        return ARTICLE_NAMESPACE


@dataclass
class Page:
    title: str = ""
    ns: int | None = None  # None: a namespace the site does not declare
    id: int = 0
    revision_id: int = 0
    redirect: bool = False
    text: str = ""


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


class _PageParser:
    """Feeds XML bytes to expat and hands back complete pages (and the siteinfo once it is read)."""

    def __init__(self, name: str, site: SiteInfo | None = None, wrap: bool = False):
        self.name, self.site = name, site
        self.parser = XMLPullParser(events=("start", "end"))
        self.path: list[str] = []
        self.page: Page | None = None
        self.has_ns = False
        self.root_seen = wrap
        self.namespaces: dict[int, str] = {}
        self.site_fields: dict[str, str] = {}
        self.language = ""
        if wrap:  # a multistream stream is a run of <page>s with no root element of its own
            self.parser.feed(b"<mediawiki>")

    def feed(self, data: bytes) -> list[Page]:
        try:
            self.parser.feed(data)
            return self._pages()
        except ParseError as exc:
            raise WikipediaDumpError(f"{self.name} is not well-formed XML ({exc})") from None

    def close(self, wrapped: bool = False) -> list[Page]:
        try:
            if wrapped:
                self.parser.feed(b"</mediawiki>")
            self.parser.close()
            pages = self._pages()
        except ParseError as exc:
            raise WikipediaDumpError(f"{self.name} is not well-formed XML ({exc}); is it truncated?") from None
        if not self.root_seen:
            raise WikipediaDumpError(f"{self.name} holds no MediaWiki export (no <mediawiki> element)")
        return pages

    def _pages(self) -> list[Page]:
        pages = []
        for event, element in self.parser.read_events():
            tag = _local(element.tag)
            if event == "start":
                if not self.path and tag != "mediawiki":
                    raise WikipediaDumpError(f"{self.name} is not a MediaWiki export: its root element is <{tag}>")
                if not self.path:
                    self.language = element.get("{http://www.w3.org/XML/1998/namespace}lang", "")
                self.root_seen = True
                self.path.append(tag)
                if tag == "page":
                    self.page, self.has_ns = Page(), False
                continue
            self.path.pop()
            parent = self.path[-1] if self.path else ""
            if self.page is not None:
                self._page_field(tag, parent, element)
                if tag == "page":
                    pages.append(self._finish(self.page))
                    self.page = None
                    element.clear()
            elif parent == "namespaces" and tag == "namespace":
                self.namespaces[int(element.get("key", "0"))] = (element.text or "").strip()
            elif parent == "siteinfo":
                self.site_fields[tag] = (element.text or "").strip()
            if tag == "siteinfo":
                self.site = SiteInfo(dict(self.namespaces), self.site_fields.get("base", ""),
                                     self.site_fields.get("dbname", ""), self.language)
                element.clear()
        return pages

    def _page_field(self, tag: str, parent: str, element) -> None:
        page = self.page
        if parent == "page":
            if tag == "title":
                page.title = element.text or ""
            elif tag == "ns":
                self.has_ns = True
                page.ns = self._number(element, "<ns>")
            elif tag == "id":
                page.id = self._number(element, "<id>")
            elif tag == "redirect":
                page.redirect = True
            elif tag == "revision":
                element.clear()  # a full-history dump: the last revision wins
        elif parent == "revision":
            if tag == "id":
                page.revision_id = self._number(element, "revision <id>")
            elif tag == "text":
                page.text = element.text or ""

    def _number(self, element, what: str) -> int:
        try:
            return int(element.text)
        except (TypeError, ValueError):
            raise WikipediaDumpError(f"{self.name}: page {self.page.title!r} has a {what} that is not a number "
                                     f"({element.text!r})") from None

    def _finish(self, page: Page) -> Page:
        site = self.site or SiteInfo()
        if not self.has_ns:
            if not site.declared:
                raise WikipediaDumpError(
                    f"{self.name}: unknown namespace layout: page {page.id} has no <ns> and the dump has no "
                    "<siteinfo> namespaces to tell it from its title")
            page.ns = site.namespace_of_title(page.title)
        elif site.declared and page.ns not in site.namespaces:
            page.ns = None
        return page


def _open_decompressed(path: Path) -> BinaryIO:
    return bz2.open(path, "rb") if path.suffix == ".bz2" else open(path, "rb")


def iter_pages(path: str | Path, site_out: list[SiteInfo] | None = None) -> Iterator[Page]:
    """Every page of the dump in order, streamed; ``site_out`` gets the ``SiteInfo`` once the dump is read."""
    path = Path(path)
    parser = _PageParser(path.name)
    try:
        with _open_decompressed(path) as f:
            while chunk := f.read(CHUNK):
                yield from parser.feed(chunk)
    except (EOFError, OSError) as exc:
        raise WikipediaDumpError(f"{path.name} is truncated or not valid bz2 ({exc})") from None
    yield from parser.close()
    if site_out is not None:
        site_out.append(parser.site or SiteInfo(language=parser.language))


def read_siteinfo(path: str | Path) -> SiteInfo:
    """The ``<siteinfo>`` at the start of a dump (empty when it has none), reading no further than the first page."""
    path = Path(path)
    parser = _PageParser(path.name)
    try:
        with _open_decompressed(path) as f:
            while chunk := f.read(1 << 16):
                if parser.feed(chunk) or parser.site is not None:
                    break
    except (EOFError, OSError) as exc:
        raise WikipediaDumpError(f"{path.name} is truncated or not valid bz2 ({exc})") from None
    if not parser.root_seen:
        raise WikipediaDumpError(f"{path.name} holds no MediaWiki export (no <mediawiki> element)")
    return parser.site or SiteInfo(language=parser.language)


# --- multistream -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamRange:
    """One bz2 stream of pages: bytes ``[start, end)`` of the dump (``end`` may run past it into the next
    stream: decompression stops at the stream's end), the number of pages the index lists for it, and how many
    of those are in the article namespace by their titles."""

    start: int
    end: int
    pages: int
    articles: int


def index_for(dump: str | Path) -> Path | None:
    """The index file beside a multistream dump (``X-multistream.xml.bz2`` → ``X-multistream-index.txt.bz2``)."""
    dump = Path(dump)
    if "multistream" not in dump.name:
        return None
    stem = dump.name.replace(".xml.bz2", "").replace(".xml", "")
    for suffix in ("-index.txt.bz2", "-index.txt"):
        candidate = dump.with_name(stem + suffix)
        if candidate.exists():
            return candidate
    return None


def read_index(index: str | Path, dump: str | Path, site: SiteInfo) -> list[StreamRange]:
    """The page streams of a multistream dump, in file order, checked against the dump's size. Only counts are
    kept (not the titles: an index of the English Wikipedia lists tens of millions)."""
    index, size = Path(index), os.path.getsize(dump)
    starts: list[int] = []
    counts: dict[int, list[int]] = {}  # stream start → [pages, articles]
    opener = bz2.open if index.suffix == ".bz2" else open
    try:
        with opener(index, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                offset, page_id, title = line.rstrip("\n").split(":", 2)
                offset_i, _ = int(offset), int(page_id)
                if offset_i not in counts:
                    if starts and offset_i < starts[-1]:
                        raise ValueError(f"line {number}: offsets go backwards")
                    starts.append(offset_i)
                    counts[offset_i] = [0, 0]
                counts[offset_i][0] += 1
                counts[offset_i][1] += site.namespace_of_title(title) == ARTICLE_NAMESPACE
    except (EOFError, OSError) as exc:
        raise WikipediaDumpError(f"index {index.name} is truncated or not valid bz2 ({exc})") from None
    except ValueError as exc:
        raise WikipediaDumpError(f"index {index.name} is not a multistream index (OFFSET:ID:TITLE lines): "
                                 f"{exc}") from None
    if not starts:
        raise WikipediaDumpError(f"index {index.name} lists no pages")
    if starts[-1] >= size:
        raise WikipediaDumpError(f"index {index.name} points past the end of {Path(dump).name} "
                                 f"(offset {starts[-1]}, file size {size}): another dump's index, or a truncated dump?")
    ends = starts[1:] + [size]
    return [StreamRange(s, e, *counts[s]) for s, e in zip(starts, ends)]


def _decompress_stream(f: BinaryIO, start: int, end: int, name: str) -> bytes:
    """The one bz2 stream that begins at ``start``."""
    f.seek(start)
    decompressor = bz2.BZ2Decompressor()
    parts = []
    try:
        while not decompressor.eof:
            chunk = f.read(min(CHUNK, max(end - f.tell(), 0)) or CHUNK)
            if not chunk:
                break
            parts.append(decompressor.decompress(chunk))
    except OSError as exc:
        raise WikipediaDumpError(f"{name}: the bz2 stream at byte {start} is corrupt ({exc})") from None
    if not decompressor.eof:
        raise WikipediaDumpError(f"{name} is truncated: the bz2 stream at byte {start} has no end")
    return b"".join(parts)


def read_stream_pages(dump: str | Path, streams: list[tuple[int, int]], site: SiteInfo) -> Iterator[Page]:
    """The pages of these streams (``(start, end)`` byte ranges), in order; each stream parsed on its own."""
    dump = Path(dump)
    with open(dump, "rb") as f:
        for start, end in streams:
            parser = _PageParser(f"{dump.name} (bz2 stream at byte {start})", site, wrap=True)
            yield from parser.feed(_decompress_stream(f, start, end, dump.name))
            yield from parser.close(wrapped=True)


def check_multistream_tail(dump: str | Path, streams: list[StreamRange]) -> None:
    """Fail now, not in the last shard's task, when the dump was cut short (an interrupted download): the last
    page stream and the streams after it must all be whole, the last ending with ``</mediawiki>``."""
    dump = Path(dump)
    with open(dump, "rb") as f:
        f.seek(streams[-1].start)
        rest = f.read()  # the last page stream, then the closing tag in its own stream
    last = b""
    while rest:
        decompressor = bz2.BZ2Decompressor()
        try:
            last = decompressor.decompress(rest)
        except OSError as exc:
            raise WikipediaDumpError(f"{dump.name}: a bz2 stream after byte {streams[-1].start} is corrupt "
                                     f"({exc})") from None
        if not decompressor.eof:
            raise WikipediaDumpError(f"{dump.name} is truncated: its last bz2 stream has no end")
        rest = decompressor.unused_data
    if not last.rstrip().endswith(b"</mediawiki>"):
        raise WikipediaDumpError(f"{dump.name} is truncated: it does not end with </mediawiki>")
