"""``tvp ingest image-text``: an image-text table → a WebDataset shard set, via Ray Data."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from components.data.image_processing import ImageConfig
from components.data.image_text_stage import shard_image_text_table
from components.data.image_text_table import ImageTextTable


def ingest_image_text(
    table_path: str | Path,
    output: str | Path,
    image: ImageConfig,
    rows_per_shard: int,
    url_column: str = "url",
    caption_column: str = "caption",
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Shard ``table_path`` into ``output`` (resuming a previous run there); return the manifest."""
    table = ImageTextTable(str(table_path), url_column, caption_column)  # validates before anything is written

    def progress(stats: dict[str, Any], done: int, total: int) -> None:
        failed = ", ".join(f"{k} {v}" for k, v in sorted(stats["errors"].items()))
        echo(f"  shard {stats['shard']}: {stats['successes']}/{stats['input_rows']} ok"
             f"{f' (failed: {failed})' if failed else ''}  [{done}/{total}]")

    manifest = shard_image_text_table(table, output, image, rows_per_shard, on_shard_done=progress)
    errors = ", ".join(f"{k} {v}" for k, v in sorted(manifest["errors"].items())) or "none"
    echo(f"  {output}: {manifest['num_samples']} samples from {manifest['num_input_rows']} rows "
         f"in {manifest['num_shards']} shards; failures: {errors}")
    return manifest
