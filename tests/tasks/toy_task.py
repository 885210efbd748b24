"""A toy task for the platform's tests: points with a variable number of target values each.

Each sample's ``.json`` holds ``x`` (4 floats), ``label`` (0..2) and ``items``
(0 to 5 floats); the model regresses the sum of ``x``. ``transform_batch``
pads ``items`` with counts (the variable-size target design) and draws a
per-sample random ``mask`` from the generator it is handed, so tests can check
both that targets reach the loss intact and that randomness replays exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from components.tasks.targets import pad_items, unpad
from components.tasks.task import EvalFacts, Task

MAX_ITEMS = 5
SEEN: dict[str, list] = {"items": [], "masks": []}  # what the loss received, for the tests to inspect


@dataclass
class ToyConfig:
    hidden: int = 8

    __pydantic_config__ = {"extra": "forbid"}


class ToyTask(Task):
    name = "toy"
    config_type = ToyConfig
    columns = ("json",)
    eval_columns = ("json",)
    asset_columns = ("json",)
    fsdp_unit_types = (nn.Linear,)
    inference_inputs = {"x": "string"}
    inference_example = {"x": ["[0, 0, 0, 0]"]}

    def prepare_assets(self, samples) -> dict[str, str]:
        count = sum(1 for _ in samples)
        return {"toy_asset.json": json.dumps({"samples_seen": count})}

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(4, self.config.hidden), nn.Tanh(), nn.Linear(self.config.hidden, 1))

    def transform_batch(self, batch: dict[str, np.ndarray],
                        rngs: Sequence[np.random.Generator] | None = None) -> dict[str, np.ndarray]:
        meta = [json.loads(m) for m in batch["json"]]
        items, counts = pad_items([np.asarray(m["items"], dtype=np.float32) for m in meta], MAX_ITEMS)
        masks = np.stack([r.random(4) < 0.5 for r in rngs]) if rngs is not None else np.ones((len(meta), 4), bool)
        return {
            "x": np.asarray([m["x"] for m in meta], dtype=np.float32),
            "label": np.asarray([m["label"] for m in meta], dtype=np.int64),
            "items": items, "num_items": counts, "mask": masks,
        }

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        SEEN["items"].extend(t.tolist() for t in unpad(batch["items"], batch["num_items"]))
        SEEN["masks"].extend(batch["mask"].tolist())
        target = batch["x"].sum(dim=1, keepdim=True)
        loss = ((model(batch["x"]) - target) ** 2).mean()
        return loss, {"loss": loss.item()}

    def eval_step(self, model: nn.Module, batch: dict[str, torch.Tensor], context: Any) -> dict[str, torch.Tensor]:
        error = (model(batch["x"]) - batch["x"].sum(dim=1, keepdim=True)).squeeze(1)
        return {"squared_error": error**2, "label": batch["label"]}

    def eval_reduce(self, outputs: dict[str, np.ndarray], facts: EvalFacts) -> dict[str, float]:
        return {"mse": float(outputs["squared_error"].mean()), "num_eval_samples": float(len(outputs["label"])),
                "num_classes": float(len(facts.classes))}

    def predict(self, model: nn.Module, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        x = torch.tensor([json.loads(r["x"]) for r in records], dtype=torch.float32)
        with torch.no_grad():
            return [{"y": float(v)} for v in model(x).squeeze(1)]


def toy_samples(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [{"__key__": f"{i:09d}",
             "json": {"x": rng.normal(size=4).round(3).tolist(), "label": int(i % 3), "label_name": f"class{i % 3}",
                      "items": rng.normal(size=int(rng.integers(0, MAX_ITEMS + 1))).round(3).tolist()}}
            for i in range(n)]


def write_toy_shards(out_dir, shards: int, per_shard: int, seed: int = 0) -> str:
    """A finished tvp shard set of toy samples (``classes`` in its manifest, as facts come from there)."""
    from components.data.shards.shard_store import ShardStore
    from components.data.shards.shard_writer import finalize_shard_set, write_shard

    ShardStore(out_dir).makedirs()
    samples = toy_samples(shards * per_shard, seed)
    for shard in range(shards):
        part = samples[shard * per_shard:(shard + 1) * per_shard]
        write_shard(out_dir, shard, part, {"count": len(part)})
    manifest = finalize_shard_set(out_dir, {"kind": "toy"}, {"seed": seed})
    manifest["classes"] = {str(i): f"class{i}" for i in range(3)}
    ShardStore(out_dir).write_json("manifest.json", manifest)
    return str(out_dir)
