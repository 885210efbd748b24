"""CLIP as a task: images and captions in, symmetric contrastive loss out; zero-shot evaluation."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import islice
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from components.data.loading.image_batches import images_to_array
from components.data.loading.tokenizer import encode_captions, train_caption_tokenizer
from components.evaluation.zero_shot import zero_shot_classifier
from components.losses.contrastive import clip_loss
from components.models.clip import CLIP, CLIPConfig
from components.models.vit import resample_positions
from components.tasks.task import EvalFacts, Task
from components.training.checkpoint import CheckpointError

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CAPTIONS = 200_000  # captions read from the training shards to train the tokenizer


@dataclass
class ClipTaskConfig:
    model: CLIPConfig = field(default_factory=CLIPConfig)
    # Prompts for zero-shot evaluation; "{}" is replaced by the class name.
    zero_shot_templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])
    eval_batch_size: int = 256

    __pydantic_config__ = {"extra": "forbid"}


@lru_cache(maxsize=4)
def _tokenizer(tokenizer_json: str) -> Tokenizer:
    return Tokenizer.from_str(tokenizer_json)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ClipTask(Task):
    """Batches hold ``image`` (B, 3, S, S) float32 and ``tokens`` (B, L) int64.

    Needs ``tokenizer.json`` (a HF tokenizers JSON, trained on the training captions) among its files.
    Evaluation samples carry ``label`` in their ``.json``; class names come from the set's manifest.
    """

    name = "clip"
    config_type = ClipTaskConfig
    columns = ("jpg", "txt")
    eval_columns = ("jpg", "json")
    asset_columns = ("txt",)
    fsdp_forward_methods = ("encode_image", "encode_text")
    inference_inputs = {"text": "string", "image": "binary"}
    inference_example = {"text": ["a photo of a cat."]}

    # -- assets -----------------------------------------------------------------------------------------------
    def prepare_assets(self, samples: Iterable[dict[str, bytes]]) -> dict[str, str]:
        vocab_size = self.config.model.text.vocab_size
        captions = (_text(s["txt"]) for s in samples if "txt" in s)
        tokenizer = train_caption_tokenizer(islice(captions, TOKENIZER_CAPTIONS), vocab_size)
        if tokenizer.get_vocab_size() > vocab_size:
            raise CheckpointError(
                f"task.model.text.vocab_size is {vocab_size}, but the caption tokenizer needs at least "
                f"{tokenizer.get_vocab_size()} ids (256 bytes and the special tokens): raise it"
            )
        return {TOKENIZER_FILE: tokenizer.to_str()}

    @property
    def tokenizer(self) -> Tokenizer:
        if TOKENIZER_FILE not in self.files:
            raise CheckpointError("this CLIP task has no tokenizer.json: prepare its assets from training data first")
        return _tokenizer(self.files[TOKENIZER_FILE])

    def tokenize(self, texts: list[str]) -> np.ndarray:
        return encode_captions(self.tokenizer, texts, self.config.model.text.context_length)

    # -- model ------------------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        return CLIP(self.config.model)

    def adapt_weights(self, weights: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        """Position tables are resized (a new image size or context length); the rest must match."""
        target = model.state_dict()
        weights = dict(weights)
        if "visual.pos_embed" in weights and weights["visual.pos_embed"].shape != target["visual.pos_embed"].shape:
            weights["visual.pos_embed"] = resample_positions(weights["visual.pos_embed"], self.config.model.vision.grid)
        if "text.pos_embed" in weights and weights["text.pos_embed"].shape != target["text.pos_embed"].shape:
            weights["text.pos_embed"] = _fit_sequence(weights["text.pos_embed"], target["text.pos_embed"].shape[1])
        return super().adapt_weights(weights, model)

    # -- training ---------------------------------------------------------------------------------------------
    def transform_batch(self, batch: dict[str, np.ndarray],
                        rngs: Sequence[np.random.Generator] | None = None) -> dict[str, np.ndarray]:
        return {
            "image": images_to_array(list(batch["jpg"]), self.config.model.vision.image_size),
            "tokens": self.tokenize([_text(t) for t in batch["txt"]]),
        }

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        image_emb, text_emb, scale = model(batch["image"], batch["tokens"])
        loss = clip_loss(image_emb, text_emb, scale)
        return loss, {"loss": loss.item(), "logit_scale": scale.item()}

    def count_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["tokens"] != self.config.model.text.pad_id).sum())

    # -- evaluation: zero-shot top-1 --------------------------------------------------------------------------
    def eval_transform(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {
            "image": images_to_array(list(batch["jpg"]), self.config.model.vision.image_size),
            "label": np.array([int(json.loads(m)["label"]) for m in batch["json"]], dtype=np.int64),
        }

    @torch.no_grad()
    def eval_begin(self, model: nn.Module, facts: EvalFacts) -> dict[str, torch.Tensor]:
        if not facts.classes:
            raise CheckpointError("zero-shot evaluation needs class names: the evaluation set's manifest has none")
        ids = sorted(facts.classes)
        classifier = zero_shot_classifier(_unwrap(model).encode_text, self.tokenize, [facts.classes[i] for i in ids],
                                          self.config.zero_shot_templates)
        return {"classifier": classifier, "class_ids": torch.tensor(ids)}

    @torch.no_grad()
    def eval_step(self, model: nn.Module, batch: dict[str, torch.Tensor], context: dict[str, torch.Tensor]
                  ) -> dict[str, torch.Tensor]:
        scores = _unwrap(model).encode_image(batch["image"]) @ context["classifier"].T
        return {"predicted": context["class_ids"][scores.argmax(dim=-1)], "label": batch["label"]}

    def eval_reduce(self, outputs: dict[str, np.ndarray], facts: EvalFacts) -> dict[str, float]:
        labels, predicted = outputs["label"], outputs["predicted"]
        return {
            "zero_shot_top1": float((predicted == labels).mean()) if len(labels) else 0.0,
            "num_classes": float(len(facts.classes)),
            "num_eval_samples": float(len(labels)),
        }

    @torch.no_grad()
    def visualize(self, model: nn.Module, samples: list[dict[str, bytes]], facts: EvalFacts) -> Any:
        """Held-out pictures captioned with their top zero-shot prediction and the true class."""
        from components.data.shards.contact_sheet import contact_sheet

        if not samples:
            return None
        batch = self.eval_transform({c: np.array([s[c] for s in samples], dtype=object) for c in self.eval_columns})
        context = self.eval_begin(model, facts)
        out = self.eval_step(model, {k: torch.from_numpy(v) for k, v in batch.items()}, context)
        captions = [
            f"{'ok' if p == t else 'WRONG'}: {facts.classes.get(p, p)} (true: {facts.classes.get(t, t)})"
            for p, t in zip(out["predicted"].tolist(), out["label"].tolist())
        ]
        return contact_sheet(zip([s["jpg"] for s in samples], captions), columns=8)

    # -- inference --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, model: nn.Module, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Unit-length embeddings: ``text`` (a caption) → ``text_embedding``, ``image`` (encoded bytes) → ``image_embedding``."""
        outputs: list[dict[str, Any]] = [{} for _ in records]
        for column, encode in (("text", self._embed_texts), ("image", self._embed_images)):
            rows = [i for i, r in enumerate(records) if r.get(column) is not None]
            if rows:
                embeddings = encode(model, [records[i][column] for i in rows])
                for i, embedding in zip(rows, embeddings.tolist()):
                    outputs[i][f"{column}_embedding"] = embedding
        return outputs

    def _embed_texts(self, model: nn.Module, texts: list[str]) -> torch.Tensor:
        return model.encode_text(torch.from_numpy(self.tokenize([str(t) for t in texts])))

    def _embed_images(self, model: nn.Module, images: list[bytes]) -> torch.Tensor:
        pixels = images_to_array([bytes(b) for b in images], self.config.model.vision.image_size)
        return model.encode_image(torch.from_numpy(pixels))


def _unwrap(model: nn.Module) -> nn.Module:
    """The CLIP module inside a DDP wrapper (its encode_* methods are not on the wrapper)."""
    return getattr(model, "module", model)


def _fit_sequence(table: torch.Tensor, length: int) -> torch.Tensor:
    """A (1, L, D) position table cut to ``length`` rows, or extended by repeating its last row."""
    if length <= table.shape[1]:
        return table[:, :length]
    return torch.cat([table, table[:, -1:].expand(1, length - table.shape[1], table.shape[2])], dim=1)
