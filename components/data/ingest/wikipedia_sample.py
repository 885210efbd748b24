"""The embedded Wikipedia dump: the real sample that gensim ships in its test data, found without importing gensim.

``enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``: 206
pages of an English pages-articles dump (106 articles, 100 redirects).
``enwiki-table-markup.xml.bz2``: 5 long articles heavy with table markup.
Importing gensim takes seconds and is never needed: the files are located from
the installed distribution's record of its files.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from components.errors import TvpError

SAMPLE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
TABLE_MARKUP = "enwiki-table-markup.xml.bz2"


def _test_data_file(name: str) -> Path:
    try:
        gensim = distribution("gensim")
    except PackageNotFoundError:
        raise TvpError("the embedded Wikipedia sample comes with gensim's test data: pip install gensim") from None
    path = Path(gensim.locate_file(f"gensim/test/test_data/{name}"))
    if not path.is_file():
        raise TvpError(f"gensim is installed without its test data ({name} missing): reinstall it")
    return path


def sample_dump() -> Path:
    """The 206-page English dump sample."""
    return _test_data_file(SAMPLE)


def table_markup_dump() -> Path:
    """Five articles of table markup (no ``<siteinfo>``)."""
    return _test_data_file(TABLE_MARKUP)
