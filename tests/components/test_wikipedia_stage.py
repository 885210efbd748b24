"""Wikipedia ingestion through the one shard stage, on the session's Ray head: the embedded sample as a plain
``.xml.bz2`` and as a multistream dump, a foreign folder, and dumps that fail."""

import bz2
import json

import pytest

from components.data.ingest.wikipedia_dump import WikipediaDumpError
from components.data.ingest.wikipedia_stage import WikipediaDumpReader, shard_wikipedia_dump
from components.data.shards.shard_reader import ShardSetError, iter_samples
from tests.wikipedia_dumps import (
    read_sample_xml, sample_dump, sample_multistream, split_dump, table_markup_dump, write_multistream,
)

MARKUP = ("{{", "[[", "<ref", "'''")


def _members(sample):
    return sample["__key__"], sample["txt"], sample["json"]


@pytest.fixture(scope="module")
def plain_set(ray_address, tmp_path_factory):
    out = tmp_path_factory.mktemp("wikipedia") / "plain"
    manifest = shard_wikipedia_dump(WikipediaDumpReader(sample_dump()), out, 60)
    return out, manifest, list(iter_samples(out))


def test_one_sample_per_article_with_skips_counted(plain_set):
    out, manifest, samples = plain_set
    assert manifest["num_samples"] == 106 and manifest["num_input_rows"] == 206 and manifest["num_shards"] == 4
    assert manifest["errors"] == {"redirect": 100}
    assert json.loads((out / "00000_stats.json").read_text())["errors"]["redirect"] > 0
    keys = [s["__key__"] for s in samples]
    assert keys == sorted(keys) and keys[0] == "0000000012" and all("." not in k for k in keys)
    meta = json.loads(samples[0]["json"])
    assert {k: meta[k] for k in ("id", "revision_id", "title", "url_title", "url")} == {
        "id": 12, "revision_id": 716551092, "title": "Anarchism", "url_title": "Anarchism",
        "url": "https://en.wikipedia.org/wiki/Anarchism"}
    assert meta["categories"][:2] == ["Anarchism", "Political culture"]
    lines = samples[0]["txt"].decode().splitlines()
    assert lines[:2] == [
        "Anarchism is a political philosophy that advocates self-governed societies based on voluntary institutions.",
        "These are often described as stateless societies, although several authors have defined them more "
        "specifically as institutions based on non-hierarchical free associations."]
    for sample in samples:
        text = sample["txt"].decode()
        assert not [m for m in MARKUP if m in text], sample["__key__"]
        assert all(line.strip() for line in text.splitlines())
    titles = {json.loads(s["json"])["title"]: json.loads(s["json"]) for s in samples}
    assert titles["Academy Awards"]["url_title"] == "Academy_Awards"


def test_a_multistream_dump_gives_the_same_articles_from_stream_ranges(plain_set, tmp_path):
    _, _, expected = plain_set
    reader = WikipediaDumpReader(sample_multistream())
    assert reader.num_pages() == 206 and reader.rows_per_shard(60) == 2  # streams of 30 pages
    manifest = shard_wikipedia_dump(reader, tmp_path / "multi", 60)
    assert manifest["num_samples"] == 106 and manifest["errors"] == {"redirect": 100}
    assert manifest["source"]["streams"] == 7
    samples = list(iter_samples(tmp_path / "multi"))
    assert [_members(s) for s in samples] == [_members(s) for s in expected]


def test_a_folder_made_from_another_dump_is_refused(plain_set):
    out, manifest, _ = plain_set
    with pytest.raises(ShardSetError, match="another dump"):
        shard_wikipedia_dump(WikipediaDumpReader(table_markup_dump()), out, 60)
    assert json.loads((out / "manifest.json").read_text())["content_hash"] == manifest["content_hash"]


def test_a_dump_with_no_articles_leaves_nothing_behind(ray_address, tmp_path):
    header, pages, footer = split_dump(read_sample_xml())
    redirects = [p for p in pages if "<redirect" in p]
    dump = tmp_path / "redirects.xml.bz2"
    dump.write_bytes(bz2.compress((header + "".join(redirects) + footer).encode()))
    with pytest.raises(WikipediaDumpError, match="no articles"):
        shard_wikipedia_dump(WikipediaDumpReader(dump), tmp_path / "out", 60)
    assert not (tmp_path / "out").exists()
    multistream = tmp_path / "redirects-multistream.xml.bz2"
    write_multistream(multistream, header, [p.replace("<title>", "<title>Talk:") for p in redirects[:5]], footer)
    with pytest.raises(WikipediaDumpError, match="no articles"):
        shard_wikipedia_dump(WikipediaDumpReader(multistream), tmp_path / "out", 60)
    assert not (tmp_path / "out").exists()


def test_a_corrupt_stream_fails_in_its_task_with_the_dump_error_itself(ray_address, tmp_path):
    header, pages, footer = split_dump(read_sample_xml())
    dump = tmp_path / "corrupt-multistream.xml.bz2"
    index = write_multistream(dump, header, pages[:8], footer, pages_per_stream=4)
    data = bytearray(dump.read_bytes())
    first = int(bz2.decompress(index.read_bytes()).split(b":")[0])
    data[first + 2000:first + 2100] = bytes(100)  # inside the first page stream; the tail stays whole
    dump.write_bytes(bytes(data))
    with pytest.raises(WikipediaDumpError, match="corrupt|not well-formed|truncated") as error:
        shard_wikipedia_dump(WikipediaDumpReader(dump), tmp_path / "out", 4)
    assert "\n" not in str(error.value)


def test_every_kind_of_page_that_is_no_article_is_counted(ray_address, tmp_path):
    page = "<page><title>{}</title><ns>{}</ns><id>{}</id><revision><id>9</id><text>{}</text></revision></page>"
    siteinfo = ('<siteinfo><base>https://xx.example.org/wiki/Main</base><namespaces><namespace key="0" />'
                '<namespace key="1">Talk</namespace></namespaces></siteinfo>')
    pages = [page.format("Kept", 0, 1, "A '''kept''' article. [[Category:Tests]]"), page.format("Empty", 0, 2, "  "),
             page.format("Talk:Kept", 1, 3, "Talk."), page.format("Odd", 90, 4, "Odd."),
             page.format("Only templates", 0, 5, "{{Infobox|a=b}}\n{| \n| cell\n|}")]
    dump = tmp_path / "kinds.xml"
    dump.write_text(f'<mediawiki xml:lang="en">{siteinfo}{"".join(pages)}</mediawiki>')
    manifest = shard_wikipedia_dump(WikipediaDumpReader(dump), tmp_path / "out", 60)
    assert manifest["num_samples"] == 1 and manifest["num_input_rows"] == 5
    assert manifest["errors"] == {"empty": 1, "other_namespace": 1, "unknown_namespace": 1, "no_prose": 1}
    [sample] = iter_samples(tmp_path / "out")
    assert sample["txt"] == b"A kept article.\n"
    assert json.loads(sample["json"]) == {"id": 1, "revision_id": 9, "title": "Kept", "url_title": "Kept",
                                          "url": "https://xx.example.org/wiki/Kept", "categories": ["Tests"]}
