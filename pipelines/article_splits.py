"""``tvp split-articles``: a document shard set → held-out split and a labelled sentence table, built offline.

From the articles of ``tvp ingest wikipedia`` it writes, under ``--output``:

- ``train/`` and ``heldout/``: the documents split by article (a stable hash
  of the page id decides, so the split never changes with shard layout);
  ``tvp train bert --data train --eval heldout`` measures masked-LM and NSP
  accuracy on articles it never saw;
- ``categories-train.csv`` and ``categories-heldout.csv`` (``text``,
  ``label``): each sentence of an article labelled by one of its categories
  (the most common categories first, each article counted once), the same
  article split: a small classification set for ``tvp finetune bert``.

Everything is read in this one process: it is meant for sample-sized sets
(the embedded dump), not a whole Wikipedia.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.data.shards.shard_set import ShardSet
from components.data.shards.shard_writer import finalize_shard_set, write_shard
from components.errors import TvpError

MAX_PER_SHARD = 1000
MIN_SHARDS = 8  # training deals whole shards to workers: a small set still gets enough of them
MIN_WORDS = 4  # shorter sentences ("See also.") say nothing of their article's subject


class SplitError(TvpError, ValueError):
    pass


@dataclass
class ArticleSplits:
    train: Path
    heldout: Path
    categories_train: Path
    categories_heldout: Path
    num_train: int
    num_heldout: int
    classes: list[str]
    labelled_sentences: tuple[int, int]  # train, held out


def is_heldout(page_id: Any, fraction: float, seed: int) -> bool:
    digest = hashlib.sha256(f"{seed}:{page_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def choose_categories(articles: list[dict[str, Any]], classes: int) -> dict[str, str]:
    """Article key → category: the most common categories first, each article labelled once, ``classes`` kept."""
    counts = Counter(c for a in articles for c in set(a["categories"]))
    labels: dict[str, str] = {}
    chosen: list[str] = []
    for category, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        members = [a["key"] for a in articles if category in a["categories"] and a["key"] not in labels]
        if len(members) < 2:
            continue
        chosen.append(category)
        labels.update({key: category for key in members})
        if len(chosen) == classes:
            break
    return labels


def _write_documents(samples: list[dict[str, Any]], out: Path, source: dict[str, Any]) -> None:
    """At least ``MIN_SHARDS`` shards where there are that many articles, at most ``MAX_PER_SHARD`` each."""
    out.mkdir(parents=True, exist_ok=True)
    per_shard = max(1, min(MAX_PER_SHARD, math.ceil(len(samples) / MIN_SHARDS)))
    for shard_id, start in enumerate(range(0, max(len(samples), 1), per_shard)):
        chunk = samples[start:start + per_shard]
        write_shard(out, shard_id, chunk, {"input_rows": len(chunk), "errors": {}})
    finalize_shard_set(out, source, {"per_shard": per_shard})


def _write_table(rows: list[tuple[str, str]], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)


def split_articles(docs: str, output: str | Path, heldout_fraction: float = 0.15, classes: int = 4,
                   seed: int = 0) -> ArticleSplits:
    if not 0 < heldout_fraction < 1:
        raise SplitError(f"--heldout-fraction must be between 0 and 1, not {heldout_fraction}")
    shard_set = ShardSet.open(docs)
    articles = []
    for sample in shard_set.iter_samples(["txt", "json"]):
        meta = json.loads(sample["json"])
        articles.append({"key": sample["__key__"], "txt": sample["txt"], "json": sample["json"],
                         "id": meta.get("id", sample["__key__"]), "categories": list(meta.get("categories", []))})
    if len(articles) < 2:
        raise SplitError(f"{docs} holds {len(articles)} articles: a split needs at least 2")
    out = Path(output)
    held = [a for a in articles if is_heldout(a["id"], heldout_fraction, seed)]
    if not held or len(held) == len(articles):
        held = articles[-max(1, round(len(articles) * heldout_fraction)):]
    held_keys = {a["key"] for a in held}
    source = {"split_of": str(docs), "content_hash": shard_set.content_hash, "heldout_fraction": heldout_fraction,
              "seed": seed}
    for name, part in (("train", [a for a in articles if a["key"] not in held_keys]), ("heldout", held)):
        _write_documents([{"__key__": a["key"], "txt": a["txt"], "json": a["json"]} for a in part], out / name,
                         {**source, "part": name})
    labels = choose_categories(articles, classes)
    if len(set(labels.values())) < 2:
        raise SplitError(f"fewer than 2 categories are shared by 2 or more articles of {docs}: no labelled table")
    tables: dict[str, list[tuple[str, str]]] = {"train": [], "heldout": []}
    for article in articles:
        if article["key"] not in labels:
            continue
        part = "heldout" if article["key"] in held_keys else "train"
        for sentence in article["txt"].decode("utf-8").splitlines():
            if len(sentence.split()) >= MIN_WORDS:
                tables[part].append((sentence, labels[article["key"]]))
    trained = {label for _, label in tables["train"]}
    tables["heldout"] = [row for row in tables["heldout"] if row[1] in trained]  # a class never trained on: out
    _write_table(tables["train"], out / "categories-train.csv")
    _write_table(tables["heldout"], out / "categories-heldout.csv")
    return ArticleSplits(out / "train", out / "heldout", out / "categories-train.csv",
                         out / "categories-heldout.csv", len(articles) - len(held), len(held),
                         sorted(set(labels.values())), (len(tables["train"]), len(tables["heldout"])))
