"""The demo's embedded image-text data: scikit-learn's handwritten digits, scaled up, with captions.

scikit-learn ships the 1,797 8×8 digit images inside the package, so the
demo needs no download. Each image becomes a PNG file and a row of a
LAION-style Parquet table (image location + caption, plus its label).
Training captions come from ``CAPTION_TEMPLATES``; zero-shot evaluation
uses ``PROMPT_TEMPLATES``, which share no template with them, so the
zero-shot score measures transfer to unseen phrasings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

CAPTION_TEMPLATES = [
    "a handwritten {}",
    "the digit {} written by hand",
    "a scan of a handwritten {}",
    "someone wrote the number {}",
    "{} drawn with a pen",
    "a small grey picture of a {}",
    "numeral {} on a form",
    "an ink sketch of the digit {}",
]

PROMPT_TEMPLATES = [
    "a photo of the number {}.",
    "an image showing a {}.",
    "this is a {}.",
]


@dataclass(frozen=True)
class DigitsTables:
    train: Path
    heldout: Path
    num_train: int
    num_heldout: int


def _write_table_atomic(rows: dict[str, list], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.table(rows), tmp, row_group_size=256)
    os.replace(tmp, path)


def digit_image(pixels: np.ndarray, source_size: int) -> Image.Image:
    """One of scikit-learn's 8×8 digits (values 0-16) as a grey ``source_size``-pixel square picture."""
    grey = (pixels * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").resize((source_size, source_size), Image.Resampling.BICUBIC)


def build_digits_tables(out_dir: str | Path, source_size: int = 64, heldout_fraction: float = 0.2, seed: int = 0) -> DigitsTables:
    """Write images and ``train.parquet``/``heldout.parquet`` tables (columns url, caption, label) into ``out_dir``.

    Output is a function of the arguments alone, so rebuilding it is idempotent.
    """
    from sklearn.datasets import load_digits  # heavy import, needed only here

    digits = load_digits()
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.target))
    num_heldout = int(round(len(order) * heldout_fraction))
    splits = {"heldout": order[:num_heldout], "train": order[num_heldout:]}
    for split, indices in splits.items():
        rows: dict[str, list] = {"url": [], "caption": [], "label": [], "label_name": []}
        for index in indices:
            label = int(digits.target[index])
            name = f"images/{index:04d}.png"
            digit_image(digits.images[index], source_size).save(out / name)
            template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
            rows["url"].append(name)
            rows["caption"].append(template.format(CLASS_NAMES[label]))
            rows["label"].append(label)
            rows["label_name"].append(CLASS_NAMES[label])
        _write_table_atomic(rows, out / f"{split}.parquet")
    return DigitsTables(out / "train.parquet", out / "heldout.parquet", len(splits["train"]), num_heldout)
