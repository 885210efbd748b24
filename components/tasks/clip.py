"""CLIP as a task: images and captions in, the symmetric contrastive loss out (across all workers' batches);
zero-shot classification, image-text retrieval and a linear probe on the held-out set.

Captions are tokenised by the task's tokenizer, one of its files: a CLIP byte-level BPE (``tokenizer.json`` +
``tokenizer_config.json``, ``components/data/loading/clip_tokenizer.py``) trained on the training captions
or OpenAI's vocabulary (``task.tokenizer``), or, in versions registered before it, the caption tokenizer
(``tokenizer.json`` alone), which keeps encoding as it did.

Training augmentation is optional: ``augment`` (the ViT task's image recipe) and ``captions`` (one line of
a multi-line caption drawn, words dropped), both drawn from each sample's own generator; without them images
are resized and normalised as CLIP's preprocessing does.

Evaluation (``evaluation``): ``zero_shot`` (class names of the held-out manifest in ``zero_shot_templates``,
top-1 and top-5; samples carry ``label`` in their ``.json``), ``retrieval`` (each held-out image against
its own caption, ``.txt``: recall@1/5/10 both ways) and ``linear_probe`` (logistic regression on the frozen
image embeddings of one seeded half of the labelled held-out samples, top-1 on the other half).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import numpy as np
import torch
from torch import nn

from components.data.loading.clip_tokenizer import (
    CONFIG_FILE, TextTokenizer, load_text_tokenizer, openai_clip_tokenizer, train_clip_tokenizer,
)
from components.data.loading.image_augment import AugmentConfig, augment_images, eval_images
from components.data.loading.image_batches import CLIP_MEAN, CLIP_STD, images_to_array
from components.evaluation.linear_probe import linear_probe, probe_split
from components.evaluation.retrieval import retrieval_metrics
from components.evaluation.zero_shot import label_ranks, zero_shot_classifier, zero_shot_top_predictions
from components.losses.contrastive import clip_loss
from components.models.clip import CLIP, CLIPConfig
from components.models.vit import resample_positions
from components.tasks.task import EvalFacts, Task
from components.training.checkpoint import CheckpointError

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CAPTIONS = 200_000  # captions read from the training shards to train the tokenizer
EVALUATIONS = ("zero_shot", "retrieval", "linear_probe")
NO_LABEL = -1


@dataclass
class CaptionAugmentConfig:
    """Caption augmentation during training, drawn from each sample's generator after its image's draws."""

    pick_line: bool = False  # a caption of several lines (several captions of one image): use one, uniformly
    word_dropout: float = 0.0  # drop each word with this probability (at least one word is kept)

    __pydantic_config__ = {"extra": "forbid"}

    def __post_init__(self) -> None:
        if not 0.0 <= self.word_dropout < 1.0:
            raise ValueError(f"word_dropout is {self.word_dropout}: it must lie in [0, 1)")


@dataclass
class ClipTaskConfig:
    model: CLIPConfig = field(default_factory=CLIPConfig)
    # Prompts for zero-shot evaluation; "{}" is replaced by the class name. Several make an ensemble (the
    # mean of their normalised embeddings); DEFAULT_TEMPLATES in components/evaluation/zero_shot.py is one.
    zero_shot_templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])
    eval_batch_size: int = 256
    # What evaluation measures (see the module docstring); the held-out samples must carry what each needs.
    evaluation: list[str] = field(default_factory=lambda: ["zero_shot"])
    tokenizer: Literal["trained", "openai"] = "trained"  # "openai" needs text.vocab_size 49408
    local_loss: bool = False  # each worker's rows against the global batch's columns (less memory, same gradient)
    gather: bool = True  # negatives from every worker's batch (False: each worker's own batch only)
    augment: AugmentConfig | None = None  # training images (its image_size is the model's); None: resize only
    captions: CaptionAugmentConfig = field(default_factory=CaptionAugmentConfig)

    __pydantic_config__ = {"extra": "forbid"}

    def __post_init__(self) -> None:
        unknown = [e for e in self.evaluation if e not in EVALUATIONS]
        if unknown:
            raise ValueError(f"evaluation {unknown[0]!r} is unknown: choose from {', '.join(EVALUATIONS)}")
        if self.tokenizer == "openai" and self.model.text.vocab_size != 49408:
            raise ValueError(f"tokenizer openai needs task.model.text.vocab_size 49408, "
                             f"not {self.model.text.vocab_size}")
        if self.augment is not None and self.augment.image_size != self.model.vision.image_size:
            self.augment = replace(self.augment, image_size=self.model.vision.image_size)


@lru_cache(maxsize=4)
def _tokenizer(tokenizer_json: str, config_json: str | None) -> TextTokenizer:
    files = {TOKENIZER_FILE: tokenizer_json, **({CONFIG_FILE: config_json} if config_json is not None else {})}
    return load_text_tokenizer(files)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def augment_caption(text: str, rng: np.random.Generator, cfg: CaptionAugmentConfig) -> str:
    """One caption drawn as ``cfg`` says; a fixed number of draws per switched-on step, whatever the text."""
    if cfg.pick_line:
        lines = [line for line in text.splitlines() if line.strip()] or [text]
        text = lines[int(rng.integers(len(lines)))]
    if cfg.word_dropout:
        words = text.split()
        keep = rng.random(len(words)) >= cfg.word_dropout
        if words and not keep.any():
            keep[int(rng.integers(len(words)))] = True
        text = " ".join(w for w, k in zip(words, keep) if k)
    return text


class ClipTask(Task):
    """Batches hold ``image`` (B, 3, S, S) float32 and ``tokens`` (B, L) int64.

    Needs its tokenizer among its files (prepared from the training captions, or OpenAI's). Evaluation samples
    carry ``label`` in their ``.json`` (zero-shot, linear probe) and a ``.txt`` caption (retrieval); class names
    come from the set's manifest.
    """

    name = "clip"
    config_type = ClipTaskConfig
    columns = ("jpg", "txt")
    asset_columns = ("txt",)
    fsdp_forward_methods = ("encode_image", "encode_text")
    inference_inputs = {"text": "string", "image": "binary"}
    inference_example = {"text": ["a photo of a cat."]}
    pretrained_layout = "open_clip"

    def __init__(self, config: Any, files: dict[str, str] | None = None):
        super().__init__(config, files)
        # The members evaluation reads: a label-only set (zero-shot) needs no caption, a caption-only set
        # (retrieval) no label.
        wanted = set(self.config.evaluation)
        self.eval_columns = ("jpg",) + (("json",) if wanted - {"retrieval"} else ()) + (
            ("txt",) if "retrieval" in wanted else ())

    # -- assets -----------------------------------------------------------------------------------------------
    def prepare_assets(self, samples: Iterable[dict[str, bytes]]) -> dict[str, str]:
        text = self.config.model.text
        if self.config.tokenizer == "openai":
            return openai_clip_tokenizer(context_length=text.context_length).files()
        captions = (_text(s["txt"]) for s in samples if "txt" in s)
        try:
            tokenizer = train_clip_tokenizer(islice(captions, TOKENIZER_CAPTIONS), text.vocab_size,
                                             context_length=text.context_length)
        except ValueError as exc:
            raise CheckpointError(f"task.model.text.vocab_size: {exc}") from None
        return tokenizer.files()

    @property
    def tokenizer(self) -> TextTokenizer:
        if TOKENIZER_FILE not in self.files:
            raise CheckpointError("this CLIP task has no tokenizer.json: prepare its assets from training data first")
        return _tokenizer(self.files[TOKENIZER_FILE], self.files.get(CONFIG_FILE))

    def tokenize(self, texts: list[str]) -> np.ndarray:
        return self.tokenizer.encode(list(texts), self.config.model.text.context_length)

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
    def images(self, encoded: list[bytes], rngs: Sequence[np.random.Generator] | None = None) -> np.ndarray:
        """Encoded pictures → (N, 3, S, S): augmented when training with ``augment`` set, else deterministic."""
        if self.config.augment is None:
            return images_to_array(encoded, self.config.model.vision.image_size, CLIP_MEAN, CLIP_STD)
        if rngs is None:
            return eval_images(encoded, self.config.augment)
        return augment_images(encoded, rngs, self.config.augment)

    def transform_batch(self, batch: dict[str, np.ndarray],
                        rngs: Sequence[np.random.Generator] | None = None) -> dict[str, np.ndarray]:
        captions = [_text(t) for t in batch["txt"]]
        images = self.images(list(batch["jpg"]), rngs)  # the images' draws first, then the captions'
        if rngs is not None:
            captions = [augment_caption(c, rng, self.config.captions) for c, rng in zip(captions, rngs)]
        return {"image": images, "tokens": self.tokenize(captions)}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        image_emb, text_emb, scale = model(batch["image"], batch["tokens"])
        loss = clip_loss(image_emb, text_emb, scale, local_loss=self.config.local_loss, gather=self.config.gather)
        return loss, {"loss": loss.item(), "logit_scale": scale.item()}

    def count_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["tokens"] != self.config.model.text.pad_id).sum())

    # -- evaluation -------------------------------------------------------------------------------------------
    def eval_transform(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {"image": self.images(list(batch["jpg"]))}
        if "json" in batch:
            out["label"] = np.array([_label(m) for m in batch["json"]], dtype=np.int64)
        if "txt" in batch:
            out["tokens"] = self.tokenize([_text(t) for t in batch["txt"]])
        return out

    @torch.no_grad()
    def eval_begin(self, model: nn.Module, facts: EvalFacts) -> dict[str, torch.Tensor]:
        if "zero_shot" not in self.config.evaluation:
            return {}
        if not facts.classes:
            raise CheckpointError("zero-shot evaluation needs class names: the evaluation set's manifest has none "
                                  "(or set task.evaluation to [retrieval] for image-text pairs)")
        ids = sorted(facts.classes)
        classifier = zero_shot_classifier(_unwrap(model).encode_text, self.tokenize, [facts.classes[i] for i in ids],
                                          self.config.zero_shot_templates)
        return {"classifier": classifier, "class_ids": torch.tensor(ids)}

    @torch.no_grad()
    def eval_step(self, model: nn.Module, batch: dict[str, torch.Tensor], context: dict[str, torch.Tensor]
                  ) -> dict[str, torch.Tensor]:
        clip = _unwrap(model)
        image_emb = clip.encode_image(batch["image"])
        out = {"image_embedding": image_emb}
        if "label" in batch:
            out["label"] = batch["label"]
        if "classifier" in context and "label" in batch:  # the true class's rank: 0 is a top-1 hit
            out["label_rank"] = torch.from_numpy(label_ranks(image_emb, context["classifier"], batch["label"],
                                                             context["class_ids"].tolist()))
        if "tokens" in batch:
            out["text_embedding"] = clip.encode_text(batch["tokens"])
        return out

    def eval_reduce(self, outputs: dict[str, np.ndarray], facts: EvalFacts) -> dict[str, float]:
        wanted = self.config.evaluation
        metrics: dict[str, float] = {"num_eval_samples": float(len(outputs["image_embedding"]))}
        labelled = outputs["label"] >= 0 if "label" in outputs else np.zeros(0, bool)
        if "zero_shot" in wanted:
            ranks = outputs["label_rank"][labelled]
            for k in (1, 5):  # an unknown label ranks -1: a miss
                metrics[f"zero_shot_top{k}"] = float(((ranks >= 0) & (ranks < k)).mean()) if len(ranks) else 0.0
            metrics["num_classes"] = float(len(facts.classes))
        if "retrieval" in wanted:
            images, texts = outputs["image_embedding"], outputs["text_embedding"]
            metrics.update(retrieval_metrics(images, texts, np.arange(len(texts))))
        if "linear_probe" in wanted:
            features, labels = outputs["image_embedding"][labelled], outputs["label"][labelled]
            if len(np.unique(labels)) >= 2 and np.bincount(labels - labels.min()).max() >= 2:
                metrics.update(linear_probe(*probe_split(features, labels, seed=0)).metrics())
        return metrics

    @torch.no_grad()
    def visualize(self, model: nn.Module, samples: list[dict[str, bytes]], facts: EvalFacts) -> Any:
        """Held-out pictures with their top zero-shot predictions (and the true class) when zero-shot is
        evaluated; otherwise none."""
        from components.viz.top_predictions import top_predictions_picture

        if not samples or "zero_shot" not in self.config.evaluation or not facts.classes:
            return None
        samples = samples[:12]
        batch = self.eval_transform({c: np.array([s[c] for s in samples], dtype=object) for c in self.eval_columns})
        context = self.eval_begin(model, facts)
        image_emb = _unwrap(model).encode_image(torch.from_numpy(batch["image"]))
        rows, probabilities = zero_shot_top_predictions(image_emb, context["classifier"], k=5)
        ids = context["class_ids"].numpy()
        return top_predictions_picture([s["jpg"] for s in samples], ids[rows], probabilities, facts.classes,
                                       batch["label"].tolist(), columns=4)

    # -- other libraries' layouts -----------------------------------------------------------------------------
    @classmethod
    def import_pretrained(cls, folder: Path) -> tuple[dict[str, Any], dict[str, str], dict[str, torch.Tensor]] | None:
        """An open_clip folder (``open_clip_config.json`` + ``open_clip_model.safetensors``) or a Hugging Face
        ``CLIPModel`` folder (``config.json`` of model type ``clip`` + ``model.safetensors``), with OpenAI's
        tokenizer (the one both use for a 49,408-id text tower) and the image normalisation it records."""
        from components.models import clip_layouts

        hf_config = folder / "config.json"
        try:
            if (folder / "open_clip_config.json").is_file():
                model_cfg, weights, preprocess = clip_layouts.import_open_clip_folder(folder)
            elif hf_config.is_file() and json.loads(hf_config.read_text()).get("model_type") == "clip":
                model_cfg, weights = clip_layouts.import_hf_folder(folder)
                preprocess = {}
            else:
                return None
        except (ValueError, FileNotFoundError) as exc:
            raise CheckpointError(f"{folder}: {exc}") from None
        if model_cfg.text.vocab_size != 49408:
            raise CheckpointError(f"{folder}: a text tower of {model_cfg.text.vocab_size} ids is not OpenAI's "
                                  "tokenizer's (49,408): tvp cannot tell which tokenizer it was trained with")
        config: dict[str, Any] = {"model": asdict(model_cfg), "tokenizer": "openai"}
        mean, std = tuple(preprocess.get("mean", CLIP_MEAN)), tuple(preprocess.get("std", CLIP_STD))
        if (mean, std) != (tuple(CLIP_MEAN), tuple(CLIP_STD)):  # another normalisation: resize and normalise so
            config["augment"] = {"image_size": model_cfg.vision.image_size, "crop": False, "hflip": 0.0,
                                 "randaugment_ops": 0, "mixup_alpha": 0.0, "cutmix_alpha": 0.0,
                                 "label_smoothing": 0.0, "eval_crop_pct": 1.0, "mean": mean, "std": std}
        files = openai_clip_tokenizer(context_length=model_cfg.text.context_length).files()
        return config, files, weights

    def export_pretrained(self, weights: dict[str, torch.Tensor], folder: Path) -> Path:
        """``open_clip_config.json`` + ``open_clip_model.safetensors`` that ``open_clip.create_model("local-dir:"
        + folder)`` loads, with this model's image normalisation. The tokenizer is not written: open_clip's own
        is OpenAI's, the same as a model trained with ``tokenizer: openai``."""
        from components.models.clip_layouts import export_open_clip_folder

        aug = self.config.augment
        mean, std = (aug.mean, aug.std) if aug is not None else (CLIP_MEAN, CLIP_STD)
        try:
            return export_open_clip_folder(folder, self.config.model, weights, mean=tuple(mean), std=tuple(std))
        except ValueError as exc:
            raise CheckpointError(f"cannot export this CLIP in open_clip's layout: {exc}") from None

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
        return model.encode_image(torch.from_numpy(self.images([bytes(b) for b in images])))


def _label(meta: Any) -> int:
    """A held-out sample's class id from its ``.json``; ``NO_LABEL`` when it has none."""
    value = json.loads(meta).get("label") if meta else None
    return NO_LABEL if value is None else int(value)


def _unwrap(model: nn.Module) -> nn.Module:
    """The CLIP module inside a DDP wrapper (its encode_* methods are not on the wrapper)."""
    return getattr(model, "module", model)


def _fit_sequence(table: torch.Tensor, length: int) -> torch.Tensor:
    """A (1, L, D) position table cut to ``length`` rows, or extended by repeating its last row."""
    if length <= table.shape[1]:
        return table[:, :length]
    return torch.cat([table, table[:, -1:].expand(1, length - table.shape[1], table.shape[2])], dim=1)
