"""``tvp filter clip-score SHARDS --model MODEL_URI (--min-score S | --keep-fraction F) --output DIR``.

Keeps the image-text pairs of a shard set whose CLIP score (the cosine
similarity of the registered CLIP's unit-norm image and text embeddings) is at
least S, or the top F of the set, as LAION and DataComp curate. The stage is
``components/data/filtering/clip_score_stage.py``; this module checks the
inputs and the model first (one-line errors before anything is written),
and shows progress and a summary.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from components.data.filtering.clip_score import ClipScoreError, ScoreRule
from components.data.filtering.clip_score_stage import DEFAULT_BATCH_SIZE, ScoringModel, filter_shard_set
from components.data.shards.shard_reader import ShardSetError
from components.data.shards.shard_set import ShardSet

PAIR_MEMBERS = ("jpg", "txt")


def open_image_text_set(location: str, index_dir: str | None = None) -> ShardSet:
    """The shard set at ``location``; ``ShardSetError`` unless its samples are image-text pairs."""
    shard_set = ShardSet.open(location, index_dir)
    if not shard_set.num_samples:
        raise ShardSetError(f"{location} holds no samples: there is nothing to score")
    first = next(iter(shard_set.iter_samples()), None)
    members = sorted(m for m in (first or {}) if not m.startswith("__"))
    missing = [m for m in PAIR_MEMBERS if m not in members]
    if missing:
        raise ShardSetError(f"{location} is not an image-text set: its samples have "
                            f"{', '.join('.' + m for m in members) or 'no members'} but no "
                            f"{' or '.join('.' + m for m in missing)} (CLIP scores need .jpg and .txt)")
    return shard_set


def load_scoring_model(model_uri: str, tracking_uri: str) -> ScoringModel:
    """The registered version behind ``model_uri``, which must be a CLIP; one-line errors otherwise."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from components.tracking.registry import download_registered_checkpoint, resolve_model_version
    from components.training.checkpoint import CheckpointError, read_checkpoint_config

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    try:
        version = resolve_model_version(client, model_uri)
    except ValueError as err:
        raise ClipScoreError(f"--model {model_uri}: {err}") from err
    except MlflowException as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ClipScoreError(f"--model {model_uri} names no registered version in {tracking_uri} ({reason})") from err
    with tempfile.TemporaryDirectory() as tmp:
        try:
            checkpoint = download_registered_checkpoint(f"models:/{version.name}/{version.version}", tmp,
                                                        tracking_uri)
            config = read_checkpoint_config(checkpoint)
        except (CheckpointError, OSError, MlflowException) as err:
            raise ClipScoreError(f"--model {model_uri} (version {version.version}) is not a tvp checkpoint: "
                                 f"{str(err).strip().splitlines()[0]}") from err
        if config.get("task") != "clip":
            raise ClipScoreError(f"--model {model_uri} is a {config.get('task')} model, not a CLIP: "
                                 "CLIP scores need a registered tvp CLIP")
        files = {name: (checkpoint / name).read_bytes()
                 for name in ["config.json", "model.safetensors", *config.get("files", [])]}
    return ScoringModel(model_uri, version.name, str(version.version), version.run_id or "", files)


class Progress:
    """Scoring, then writing: a line redrawn in place on a terminal, printed every few seconds in a log."""

    def __init__(self, echo: Callable[[str], None], interactive: bool, every_s: float = 5.0):
        self.echo, self.interactive, self.every_s = echo, interactive, every_s
        self.started = self.last_line = time.monotonic()

    def _show(self, line: str, last: bool) -> None:
        now = time.monotonic()
        if not self.interactive and now - self.last_line < self.every_s and not last:
            return
        self.last_line = now
        if self.interactive:
            print("\r" + line, end="\n" if last else "", file=sys.stderr, flush=True)
        else:
            self.echo(line)

    def scored(self, done: int, total: int, pairs: int) -> None:
        if done == 0:
            self.started = time.monotonic()
            self.echo(f"  scoring: {total} shards to score" if total else "  scoring: every shard scored already")
            return
        rate = pairs / max(time.monotonic() - self.started, 1e-9)
        self._show(f"  scored shards {done}/{total}  pairs {pairs}  {rate:.0f} pairs/s", done == total)

    def threshold(self, threshold: float, kept: int, scored: int) -> None:
        self.echo(f"  threshold {threshold:.4f}: {kept} of {scored} scored pairs pass")

    def planned(self, shards: int, pending: int, rows: int) -> None:
        self.echo(f"  writing: {shards} shards; {pending} to do")

    def shard_done(self, stats: dict[str, Any], done: int, total: int) -> None:
        self._show(f"  written shards {done}/{total}", done == total)


def summary_lines(manifest: dict[str, Any], output: str) -> list[str]:
    facts = manifest["clip_score"]
    rule = (f"top {facts['keep_fraction']:g} of the set" if "keep_fraction" in facts
            else f"min score {facts['min_score']:g}")
    lines = [f"  kept {facts['kept']} of {facts['scored']} scored pairs ({100 * facts['kept_fraction']:.1f}%) at "
             f"clip score >= {facts['threshold']:.4f} ({rule}), model {facts['model']['name']} version "
             f"{facts['model']['version']}",
             f"  filtered set: {output} ({manifest['num_shards']} shards, "
             f"content hash {manifest['content_hash'][:12]})"]
    if facts["unscored"]:
        lines.append("  not scored: " + ", ".join(f"{k} {v}" for k, v in sorted(facts["unscored"].items())))
    return lines


def filter_clip_score(
    shards: str,
    model_uri: str,
    output: str,
    rule: ScoreRule,
    tracking_uri: str,
    actors: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    gpus_per_actor: float = 0.0,
    index_dir: str | Path | None = None,
    echo: Callable[[str], None] = print,
    connect: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Filter ``shards`` into ``output`` by ``rule`` (resuming a previous run there); return the manifest.

    The set and the model are checked before ``connect`` (which starts or joins Ray) is called.
    """
    shard_set = open_image_text_set(shards, str(index_dir) if index_dir else None)
    model = load_scoring_model(model_uri, tracking_uri)
    echo(f"scoring {shard_set.num_samples} samples in {len(shard_set.refs)} shards of {shard_set.location} with "
         f"{model.name} version {model.version}")
    if connect:
        connect()
    progress = Progress(echo, interactive=echo is print and sys.stderr.isatty())
    manifest = filter_shard_set(shard_set, model, output, rule, actors, batch_size, gpus_per_actor,
                                on_scored=progress.scored, on_threshold=progress.threshold,
                                on_planned=progress.planned, on_shard_done=progress.shard_done)
    for line in summary_lines(manifest, output):
        echo(line)
    return manifest
