"""The streaming dump reader on real bz2 files: the embedded sample, a multistream copy of it, and bad dumps."""

import bz2
from collections import Counter

import pytest

from components.data.ingest.wikipedia_dump import (
    WikipediaDumpError, check_multistream_tail, index_for, iter_pages, read_index, read_siteinfo, read_stream_pages,
)
from tests.wikipedia_dumps import (
    read_sample_xml, sample_dump, sample_multistream, split_dump, table_markup_dump, write_multistream,
)

PAGE = "<page><title>{title}</title>{ns}<id>{id}</id><revision><id>7</id><text>{text}</text></revision></page>"
SITEINFO = ('<siteinfo><namespaces><namespace key="0" /><namespace key="1">Talk</namespace>'
            '<namespace key="6">File</namespace><namespace key="14">Category</namespace></namespaces></siteinfo>')


def write_dump(path, pages, siteinfo=SITEINFO, compress=True):
    root = '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" xml:lang="en">'
    xml = f'{root}{siteinfo}{"".join(pages)}</mediawiki>'
    path.write_bytes(bz2.compress(xml.encode()) if compress else xml.encode())
    return path


@pytest.fixture(scope="module")
def sample_pages():
    site = []
    return list(iter_pages(sample_dump(), site)), site[0]


def test_the_sample_streams_206_pages_with_their_fields(sample_pages):
    pages, site = sample_pages
    assert len(pages) == 206
    assert Counter(p.redirect for p in pages) == {False: 106, True: 100}
    assert all(p.ns == 0 for p in pages if not p.redirect)
    anarchism = next(p for p in pages if p.title == "Anarchism")
    assert (anarchism.id, anarchism.revision_id) == (12, 716551092) and len(anarchism.text) > 100_000
    assert site.namespaces[14] == "Category" and site.dbname == "enwiki" and site.language == "en"
    assert read_siteinfo(sample_dump()) == site


def test_a_multistream_dump_reads_stream_by_stream_to_the_same_pages(sample_pages):
    pages, site = sample_pages
    dump = sample_multistream()
    index = index_for(dump)
    assert index.name == "enwiki-sample-multistream-index.txt.bz2"
    streams = read_index(index, dump, site)
    assert [s.pages for s in streams] == [30] * 6 + [26]
    assert sum(s.articles for s in streams) == 205  # by title: one page is Wikipedia:...
    check_multistream_tail(dump, streams)
    # The last stream first: any stream decompresses and parses alone.
    last = list(read_stream_pages(dump, [(streams[-1].start, streams[-1].end)], read_siteinfo(dump)))
    assert [p.id for p in last] == [p.id for p in pages[180:]]
    every = list(read_stream_pages(dump, [(s.start, s.end) for s in streams], site))
    assert [(p.id, p.title, p.text) for p in every] == [(p.id, p.title, p.text) for p in pages]
    assert list(iter_pages(dump))[5].text == pages[5].text  # the plain reader reads it too


def test_a_page_without_ns_takes_its_namespace_from_its_title(tmp_path):
    dump = write_dump(tmp_path / "old.xml", [PAGE.format(title="Talk:X", ns="", id=1, text="t"),
                                             PAGE.format(title="X", ns="", id=2, text="x"),
                                             PAGE.format(title="Y", ns="<ns>90</ns>", id=3, text="y")], compress=False)
    assert [p.ns for p in iter_pages(dump)] == [1, 0, None]  # 90: a namespace the site does not declare


def test_the_table_markup_file_has_no_siteinfo_but_every_page_its_ns():
    pages = list(iter_pages(table_markup_dump()))
    assert len(pages) == 5 and {p.ns for p in pages} == {0}


def _write(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make, message", [
    (lambda p: _write(p, bz2.compress(read_sample_xml().encode()[:200_000])[:-5000]), "truncated"),
    (lambda p: _write(p, bz2.compress(b"<mediawiki><page><title>A</title></pag></mediawiki>")), "not well-formed XML"),
    (lambda p: _write(p, bz2.compress(b"<html><body>Not a dump</body></html>")), "not a MediaWiki export"),
    (lambda p: write_dump(p, [PAGE.format(title="A", ns="", id=1, text="a")], siteinfo=""),
     "unknown namespace layout"),
    (lambda p: _write(p, b"not bz2 at all"), "not valid bz2"),
    (lambda p: write_dump(p, [PAGE.format(title="A", ns="<ns>main</ns>", id=1, text="a")]), "not a number"),
])
def test_bad_dumps_fail_in_one_line(tmp_path, make, message):
    dump = make(tmp_path / "bad.xml.bz2")
    with pytest.raises(WikipediaDumpError, match=message) as error:
        list(iter_pages(dump))
    assert "\n" not in str(error.value)


def test_a_truncated_multistream_dump_is_found_from_its_tail(tmp_path):
    header, raw, footer = split_dump(read_sample_xml())
    dump = tmp_path / "x-multistream.xml.bz2"
    index = write_multistream(dump, header, raw[:12], footer, pages_per_stream=5)
    site = read_siteinfo(dump)
    last_start = read_index(index, dump, site)[-1].start
    dump.write_bytes(dump.read_bytes()[:-30])  # the closing stream cut short
    with pytest.raises(WikipediaDumpError, match="truncated"):
        check_multistream_tail(dump, read_index(index, dump, site))
    dump.write_bytes(dump.read_bytes()[:last_start + 100])  # the last page stream too
    with pytest.raises(WikipediaDumpError, match="truncated"):
        check_multistream_tail(dump, read_index(index, dump, site))
    index.write_bytes(bz2.compress(b"99999999:1:A\n"))
    with pytest.raises(WikipediaDumpError, match="points past the end"):
        read_index(index, dump, site)
