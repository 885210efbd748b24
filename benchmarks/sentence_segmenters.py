"""Sentence segmenters for Wikipedia prose: correctness on hard cases and speed, sentencex (tvp's) against the rest.

The candidates that install from the registry with their data (no separate
download, nothing unpickled): sentencex 1.0.32 (tvp's choice), blingfire 0.1.8,
syntok 1.4.4 and pysbd 0.3.4. Each splits the same hard cases (abbreviations
such as "U.S.", "Dr.", "e.g.", "ca.", "Jr."; decimals; initials; quoted
sentences; "?" and "!") and then the prose of the embedded dump sample as tvp's
cleaner leaves it, paragraph by paragraph; speed is MB of prose per second on
one core. The candidates live in a venv of their own
(``benchmarks/.cache/segmenters-venv``, made on first use): blingfire needs
numpy and the others nothing of the project's.

The result compares sentencex with the fastest other segmenter that splits every hard case right.

Run: ``.venv/bin/python benchmarks/sentence_segmenters.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VENV = REPO / "benchmarks" / ".cache" / "segmenters-venv"
PACKAGES = ["sentencex==1.0.32", "blingfire==0.1.8", "numpy==2.4.6", "syntok==1.4.4", "pysbd==0.3.4"]
CASES = [
    ("The U.S. Army arrived in 1944. It stayed for years.", 2),
    ("Dr. Smith met Mr. J. R. R. Tolkien at 3 p.m. on Monday. They talked.", 2),
    ("The value rose to 3.14 percent in 2001. It fell to 2.5 later.", 2),
    ('He said "Stop here." Then he left.', 2),
    ("George W. Bush was born in New Haven, Conn. in 1946. He became president.", 2),
    ("The company was founded by John F. Kennedy Jr. and others. Profits grew.", 2),
    ("It was ca. 1500 B.C. when the city fell. Few survived.", 2),
    ("Is it true? Yes! It is.", 3),
    ("The population was 1,234 (approx.) in 2010. Growth was slow.", 2),
    ("See e.g. the work of St. Augustine. He wrote much.", 2),
    ("In 1776, the U.S. declared independence. The U.K. objected.", 2),
]
MEASURE = r'''
import json, sys, time
cases, prose_path = json.loads(sys.argv[1]), sys.argv[2]
paragraphs = open(prose_path, encoding="utf-8").read().split("\n")
def splitter(name):
    if name == "sentencex":
        from sentencex import segment
        return lambda t: list(segment("en", t))
    if name == "blingfire":
        import blingfire
        return lambda t: blingfire.text_to_sentences(t).split("\n")
    if name == "pysbd":
        import pysbd
        return pysbd.Segmenter(language="en", clean=False).segment
    import syntok.segmenter as segmenter
    return lambda t: ["".join(tok.spacing + tok.value for tok in s) for p in segmenter.analyze(t) for s in p]
results = {}
for name in ("sentencex", "blingfire", "syntok", "pysbd"):
    split = splitter(name)
    right = sum(len([s for s in split(text) if s.strip()]) == n for text, n in cases)
    started = time.process_time()
    for paragraph in paragraphs:
        split(paragraph)
    seconds = time.process_time() - started
    results[name] = {"right": right, "mb_per_s": sum(map(len, paragraphs)) / seconds / 1e6}
print(json.dumps(results))
'''


def venv_python() -> Path:
    python = VENV / "bin" / "python"
    stamp = VENV / ".installed"
    if not (python.exists() and stamp.exists() and stamp.read_text() == "\n".join(PACKAGES)):
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *PACKAGES],
                       check=True)
        stamp.write_text("\n".join(PACKAGES))
    return python


def sample_prose() -> str:
    from components.data.ingest.wikipedia_dump import iter_pages
    from components.data.ingest.wikitext_prose import WikitextCleaner
    from tests.wikipedia_dumps import sample_dump

    cleaner = WikitextCleaner()
    return "\n".join(p for page in iter_pages(sample_dump()) if not page.redirect
                     for p in cleaner.clean(page.text).paragraphs)


def main() -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8") as prose:
        prose.write(sample_prose())
        prose.flush()
        out = subprocess.run([str(venv_python()), "-c", MEASURE, json.dumps(CASES), prose.name], check=True,
                             capture_output=True, text=True).stdout
    results = json.loads(out)
    print(f"{'segmenter':<10} {'hard cases':>10} {'MB/s':>8}")
    for name, r in results.items():
        print(f"{name:<10} {r['right']:>5}/{len(CASES):<4} {r['mb_per_s']:>8.2f}")
    others = [r for n, r in results.items() if n != "sentencex" and r["right"] == len(CASES)]
    reference = max(others, key=lambda r: r["mb_per_s"]) if others else {"mb_per_s": float("nan")}
    tvp = results["sentencex"]["mb_per_s"]
    print(f"RESULT metric=segmenter_mb_per_s tvp={tvp:.2f} reference={reference['mb_per_s']:.2f} "
          f"ratio={tvp / reference['mb_per_s']:.2f} better=higher")


if __name__ == "__main__":
    main()
