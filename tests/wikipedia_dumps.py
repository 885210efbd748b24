"""Small real dumps for tests and benchmarks: gensim's shipped sample, and multistream files built from it.

The gensim test-data files are found through importlib's metadata of the
installed distribution (importing gensim itself takes seconds). A multistream
dump is written as Wikimedia writes it: a bz2 stream with the ``<mediawiki>``
root and ``<siteinfo>``, one stream per ``pages_per_stream`` pages, one with
the closing tag, and an index of ``OFFSET:PAGE_ID:TITLE`` lines (bz2).
"""

from __future__ import annotations

import bz2
import html
import re
import tempfile
from functools import lru_cache
from pathlib import Path

from components.data.ingest.wikipedia_sample import sample_dump, table_markup_dump

__all__ = ["sample_dump", "table_markup_dump", "split_dump", "read_sample_xml", "write_multistream", "renumbered",
           "sample_multistream"]

_PAGE = re.compile(r"[ \t]*<page>.*?</page>\n?", re.S)
_ID = re.compile(r"<id>(\d+)</id>")
_TITLE = re.compile(r"<title>(.*?)</title>")


def split_dump(xml: str) -> tuple[str, list[str], str]:
    """(header: root and siteinfo, the pages' XML, footer: the closing tag)."""
    pages = [m for m in _PAGE.finditer(xml)]
    return xml[:pages[0].start()], [m.group() for m in pages], xml[pages[-1].end():]


def read_sample_xml(path: Path | None = None) -> str:
    return bz2.decompress((path or sample_dump()).read_bytes()).decode("utf-8")


def renumbered(page: str, new_id: int, copy: int) -> str:
    """A copy of a page's XML with another page id and a distinct title."""
    page = _ID.sub(f"<id>{new_id}</id>", page, count=1)
    return _TITLE.sub(lambda m: f"<title>{m.group(1)} ({copy})</title>", page, count=1) if copy else page


def write_multistream(path: Path, header: str, pages: list[str], footer: str, pages_per_stream: int = 100) -> Path:
    """Write ``path`` (a multistream ``.xml.bz2``) and its index beside it; return the index's path."""
    index_lines = []
    with open(path, "wb") as f:
        f.write(bz2.compress(header.encode("utf-8")))
        for i in range(0, len(pages), pages_per_stream):
            offset = f.tell()
            chunk = pages[i:i + pages_per_stream]
            for page in chunk:
                title = html.unescape(_TITLE.search(page).group(1))
                index_lines.append(f"{offset}:{_ID.search(page).group(1)}:{title}")
            f.write(bz2.compress("".join(chunk).encode("utf-8")))
        f.write(bz2.compress(footer.encode("utf-8")))
    index = path.with_name(path.name.replace(".xml.bz2", "-index.txt.bz2"))
    index.write_bytes(bz2.compress(("\n".join(index_lines) + "\n").encode("utf-8")))
    return index


@lru_cache(maxsize=None)
def sample_multistream(pages_per_stream: int = 30) -> Path:
    """The embedded sample rewritten as a multistream dump with its index, made once per test process."""
    dump = Path(tempfile.mkdtemp(prefix="tvp-wikipedia-")) / "enwiki-sample-multistream.xml.bz2"
    header, pages, footer = split_dump(read_sample_xml())
    write_multistream(dump, header, pages, footer, pages_per_stream)
    return dump
