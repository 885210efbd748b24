"""Wikipedia ingestion throughput: ``tvp ingest wikipedia`` against wikiextractor, pages per second.

The dump: the embedded sample (gensim's 206-page English pages-articles
sample: 106 long articles, 100 redirects) copied ``--copies`` times (default
97: 19,982 pages, ~590 MB of XML) with fresh page ids and titles, written as a
multistream ``.xml.bz2`` of 100 pages per bz2 stream with its index, as
Wikimedia publishes them. Made once into ``benchmarks/.cache/`` and reused.

Both tools read that same file with the same number of processes:
wikiextractor 3.1.0 (its own venv, ``benchmarks/wikiextractor_env.sh``) with
``--processes P`` and its defaults (one reading process feeding P extracting
processes, no template expansion), tvp with ``--processes P`` on a fresh local
Ray (its start-up counted), which finds the index beside the dump and has each
shard task decompress and clean its own streams. A rate is all pages of the
dump over the wall time of the whole command. Rounds alternate (wikiextractor,
tvp, ...); the result is the median.

After the last round, tvp's output is checked for markup left behind: no
``{{``, ``[[``, ``<ref`` or ``'''`` in any article (counted for wikiextractor's
output too, for comparison); a tvp output with any is an invalid run.

Run: ``.venv/bin/python benchmarks/wikipedia_ingest.py [--copies N] [--processes P] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.wikipedia_dumps import read_sample_xml, renumbered, split_dump, write_multistream  # noqa: E402

CACHE = REPO / "benchmarks" / ".cache"
MARKUP = ("{{", "[[", "<ref", "'''")


def _copy_pages(args: tuple[list[str], int]) -> list[str]:
    pages, copy = args
    import re

    ids = [int(re.search(r"<id>(\d+)</id>", p).group(1)) for p in pages]
    return [renumbered(p, i + copy * 1_000_000, copy) for p, i in zip(pages, ids)]


def build_dump(copies: int) -> tuple[Path, int]:
    """The cached multistream dump of ``copies`` copies of the sample; (its path, its number of pages)."""
    dump = CACHE / f"enwiki-bench-{copies}x-multistream.xml.bz2"
    header, pages, footer = split_dump(read_sample_xml())
    total = len(pages) * copies
    if dump.exists() and dump.with_name(dump.name.replace(".xml.bz2", "-index.txt.bz2")).exists():
        return dump, total
    print(f"building {dump.name}: {total} pages (once)", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor() as pool:
        all_pages = [p for chunk in pool.map(_copy_pages, [(pages, c) for c in range(copies)]) for p in chunk]
    partial = dump.with_name("partial-" + dump.name)
    index = write_multistream(partial, header, all_pages, footer, pages_per_stream=100)
    index.rename(dump.with_name(dump.name.replace(".xml.bz2", "-index.txt.bz2")))
    partial.rename(dump)
    return dump, total


def run_wikiextractor(dump: Path, out: Path, processes: int) -> float:
    venv = subprocess.run(["bash", str(REPO / "benchmarks" / "wikiextractor_env.sh")], check=True,
                          capture_output=True, text=True).stdout.strip()
    started = time.perf_counter()
    subprocess.run([f"{venv}/bin/python", "-m", "wikiextractor.WikiExtractor", str(dump), "-o", str(out),
                    "--processes", str(processes), "-q"], check=True, capture_output=True)
    return time.perf_counter() - started


def run_tvp(dump: Path, out: Path, processes: int) -> float:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "ingest", "wikipedia", str(dump), "--output",
                             str(out), "--processes", str(processes), "--pages-per-shard", "1000"],
                            cwd=REPO, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode:
        raise SystemExit(f"tvp failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return elapsed


def markup_left_in_tvp(out: Path) -> tuple[int, int]:
    """(articles, articles with any of MARKUP in their text)."""
    articles = dirty = 0
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".txt"):
                    text = tar.extractfile(member).read().decode()
                    articles += 1
                    dirty += any(m in text for m in MARKUP)
    return articles, dirty


def markup_left_in_wikiextractor(out: Path) -> tuple[int, int]:
    articles = dirty = 0
    for path in sorted(out.rglob("wiki_*")):
        for doc in path.read_text().split("</doc>"):
            if "<doc " in doc:
                articles += 1
                dirty += any(m in doc.split(">", 1)[1] for m in MARKUP)
    return articles, dirty


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=97, help="copies of the 206-page sample (default: %(default)s)")
    parser.add_argument("--processes", type=int, default=2, help="processes of each tool (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of each tool (default: %(default)s)")
    args = parser.parse_args()

    dump, pages = build_dump(args.copies)
    print(f"dump: {dump.name}, {pages} pages, {dump.stat().st_size / 1e6:.0f} MB; {args.processes} processes",
          flush=True)
    rates: dict[str, list[float]] = {"wikiextractor": [], "tvp": []}
    work = Path(tempfile.mkdtemp(prefix="tvp-wikipedia-bench-"))
    try:
        for round_ in range(args.rounds):
            for name, run in (("wikiextractor", run_wikiextractor), ("tvp", run_tvp)):
                out = work / name
                shutil.rmtree(out, ignore_errors=True)
                elapsed = run(dump, out, args.processes)
                rates[name].append(pages / elapsed)
                print(f"round {round_ + 1} {name}: {elapsed:.1f} s, {pages / elapsed:.1f} pages/s", flush=True)
        articles, dirty = markup_left_in_tvp(work / "tvp")
        ref_articles, ref_dirty = markup_left_in_wikiextractor(work / "wikiextractor")
        manifest = json.loads((work / "tvp" / "manifest.json").read_text())
        print(f"tvp: {articles} articles ({manifest['errors']}), {dirty} with {'/'.join(MARKUP)} left; "
              f"wikiextractor: {ref_articles} articles, {ref_dirty} with markup left")
        if dirty:
            raise SystemExit("invalid run: tvp's output holds markup")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tvp, reference = statistics.median(rates["tvp"]), statistics.median(rates["wikiextractor"])
    print(f"RESULT metric=pages_per_s tvp={tvp:.1f} reference={reference:.1f} ratio={tvp / reference:.2f} "
          f"better=higher")


if __name__ == "__main__":
    main()
