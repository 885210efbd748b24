"""CLIP as a training task: images and captions in, symmetric contrastive loss out."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from components.data.loading.image_batches import images_to_array
from components.data.loading.tokenizer import encode_captions
from components.evaluation.zero_shot import top1_accuracy, zero_shot_classifier, zero_shot_predict
from components.losses.contrastive import clip_loss
from components.models.clip import CLIP, CLIPConfig
from components.tasks.task import Task

TOKENIZER_FILE = "tokenizer.json"


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


class ClipTask(Task):
    """Batches hold ``image`` (B, 3, S, S) float32 and ``tokens`` (B, L) int64.

    Needs the file ``tokenizer.json`` (a HF tokenizers JSON) among its files.
    """

    name = "clip"
    config_type = ClipTaskConfig
    columns = ["jpg", "txt"]

    @property
    def tokenizer(self) -> Tokenizer:
        return _tokenizer(self.files[TOKENIZER_FILE])

    def tokenize(self, texts: list[str]) -> np.ndarray:
        return encode_captions(self.tokenizer, texts, self.config.model.text.context_length)

    def build_model(self) -> nn.Module:
        return CLIP(self.config.model)

    def transform_batch(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        captions = [t.decode() if isinstance(t, bytes) else str(t) for t in batch["txt"]]
        return {
            "image": images_to_array(list(batch["jpg"]), self.config.model.vision.image_size),
            "tokens": self.tokenize(captions),
        }

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        image_emb, text_emb, scale = model(batch["image"], batch["tokens"])
        loss = clip_loss(image_emb, text_emb, scale)
        return loss, {"loss": loss.item(), "logit_scale": scale.item()}

    def count_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["tokens"] != self.config.model.text.pad_id).sum())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, samples: Iterable[dict[str, Any]]) -> dict[str, float]:
        """Zero-shot top-1 on labelled samples: ``json`` holds ``label`` and ``label_name``."""
        images, labels, names = [], [], {}
        for sample in samples:
            meta = json.loads(sample["json"])
            images.append(sample["jpg"])
            labels.append(int(meta["label"]))
            names[int(meta["label"])] = meta["label_name"]
        class_ids = sorted(names)
        classifier = zero_shot_classifier(
            model.encode_text, self.tokenize, [names[i] for i in class_ids], self.config.zero_shot_templates
        )
        predictions = []
        size = self.config.eval_batch_size
        for start in range(0, len(images), size):
            pixels = torch.from_numpy(images_to_array(images[start : start + size], self.config.model.vision.image_size))
            predictions.append(zero_shot_predict(model.encode_image(pixels), classifier))
        predicted = torch.tensor(class_ids)[torch.cat(predictions)] if predictions else torch.empty(0)
        return {
            "zero_shot_top1": top1_accuracy(predicted, torch.tensor(labels)),
            "num_classes": float(len(class_ids)),
            "num_eval_samples": float(len(labels)),
        }

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
