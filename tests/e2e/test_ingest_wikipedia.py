"""``tvp ingest wikipedia`` as a user runs it, against the session's Ray head: the embedded sample, SIGKILLed
after its first shard and started again, must end as the set an uninterrupted run makes; bad dumps end in one
line with exit status 2 and leave nothing behind."""

import bz2
import json
import os
import signal
import subprocess
import time

from components.data.ingest.wikipedia_stage import WikipediaDumpReader, shard_wikipedia_dump
from tests.conftest import REPO, TVP, run_tvp
from tests.wikipedia_dumps import read_sample_xml, sample_dump


def test_a_killed_ingestion_resumes_to_the_set_an_uninterrupted_run_makes(ray_address, tmp_path):
    out = tmp_path / "docs"
    command = [*TVP, "ingest", "wikipedia", "--sample", "--output", str(out), "--pages-per-shard", "5",
               "--processes", "1"]
    first = subprocess.Popen(command, cwd=REPO, env=os.environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.glob("*_stats.json")) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    kept = sorted(out.glob("*_stats.json"))
    assert kept and not (out / "manifest.json").exists(), "the run was not killed halfway"
    kept_mtime = kept[0].stat().st_mtime_ns

    second = run_tvp("ingest", "wikipedia", "--sample", "--output", str(out), "--pages-per-shard", "5",
                     "--processes", "1")
    assert second.returncode == 0, second.stderr[-3000:]
    to_do = int(second.stdout.split(" shards; ")[1].split(" to do")[0])
    assert 0 < to_do < 42
    assert "106 articles from 206 pages in 42 shards" in second.stdout
    assert "skipped: 100 redirects, 0 in other namespaces, 0 empty" in second.stdout
    assert kept[0].stat().st_mtime_ns == kept_mtime  # a finished shard is never redone
    assert not list(out.glob("*.tmp*")) and not (out / "_inputs").exists()

    whole = shard_wikipedia_dump(WikipediaDumpReader(sample_dump()), tmp_path / "whole", 5, processes=2)
    assert json.loads((out / "manifest.json").read_text())["content_hash"] == whole["content_hash"]


def test_bad_dumps_end_in_one_line_and_leave_nothing(ray_address, tmp_path):
    truncated = tmp_path / "truncated.xml.bz2"
    truncated.write_bytes(bz2.compress(read_sample_xml().encode())[:-100_000])
    not_xml = tmp_path / "page.xml"
    not_xml.write_text("<mediawiki><siteinfo></siteinfo><page><title>A</page>")
    for dump, message in [(truncated, "is truncated"), (not_xml, "not well-formed XML")]:
        result = run_tvp("ingest", "wikipedia", str(dump), "--output", str(tmp_path / "out"))
        assert result.returncode == 2, result.stderr[-3000:]
        errors = [line for line in result.stderr.splitlines() if line.startswith("tvp:")]
        assert len(errors) == 1 and errors[0].startswith("tvp: error: ") and message in errors[0], result.stderr
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "out").exists()
    result = run_tvp("ingest", "wikipedia", str(truncated), "--sample", "--output", str(tmp_path / "out"))
    assert result.returncode == 2 and "either a DUMP or --sample" in result.stderr
