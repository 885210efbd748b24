"""ViT as a task: labelled images in, soft-target cross-entropy out; top-1/top-5, a confusion matrix and
attention rollout on the held-out split.

Shards carry ``.jpg`` and ``.cls`` (the class index) as ``tvp ingest
imagefolder`` writes them, and their manifest names the classes. Training
follows the DeiT recipe's parts, all in the task's config: random resized
crops, flips and RandAugment drawn from each sample's own generator, mixup or
cutmix per micro-batch, label smoothing (``components/data/loading``),
stochastic depth (``model.drop_path_rate``); the loop adds warmup + cosine,
layer-wise rate decay and the weight EMA (``train.layer_decay``,
``train.ema_decay``).

Supervised contrastive training (``objective: supcon``, Khosla et al. 2020):
each image is augmented twice by the same recipe (the second view continues
the sample's generator where the first stopped, so both replay on resume;
mixup and cutmix do not apply, since a blend of two classes has no positive
set). The encoder and a projection MLP (width → width → ``projection_dim``)
learn from ``supcon_loss`` over both views at ``supcon_temperature``. The
classifier head learns beside them from the detached pooled features (an
online linear probe: cross-entropy with hard labels, no gradient into the
encoder), so evaluation, prediction, export and fine-tuning read the head as
for any ViT classifier: the reported top-1 is that probe's. The projection is
a training-time part: fine-tuning as a classifier and timm export drop it.

Fine-tuning (``tvp finetune vit``): the class names come from the new training
set when ``labels`` is empty, a head of the wrong size starts fresh, positions
are resampled to a new ``model.image_size``, and ``freeze_backbone`` trains
the head alone (a linear probe).
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from components.data.loading.image_augment import AugmentConfig, augment_images, eval_images
from components.data.loading.mixing import mix_batch, smoothed_targets
from components.evaluation.classification import classification_metrics, confusion_matrix, topk_outputs
from components.losses.contrastive import supcon_loss
from components.models.vit import ViTConfig, VisionTransformer, layer_index, resample_positions
from components.tasks.task import EvalFacts, Task
from components.training.checkpoint import CheckpointError

HEAD_PREFIX = "head."
PROJECTION_PREFIX = "projection."  # SupCon's projection MLP (objective supcon only)
SUPCON_VIEWS = 2  # augmented views of each image under objective supcon
TOP_K = 5
ROLLOUT_SAMPLES = 8  # held-out images drawn with their attention rollout at each evaluation


@dataclass
class VitTaskConfig:
    model: ViTConfig = field(default_factory=lambda: ViTConfig(eps=1e-6))  # num_classes follows labels
    labels: list[str] = field(default_factory=list)  # class names by index; empty: the training set's
    # Training-time augmentation; its image_size is always the model's.
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    freeze_backbone: bool = False  # train the head alone (a linear probe); set model.drop_path_rate to 0 with it
    # What trains the encoder: the classifier's cross-entropy, or supervised contrastive learning on two views
    # per image with the head as an online linear probe (see the module docstring).
    objective: Literal["cross_entropy", "supcon"] = "cross_entropy"
    supcon_temperature: float = 0.1  # the paper's best; the loss is not rescaled (base temperature = this)
    projection_dim: int = 128  # output width of SupCon's projection MLP (the paper's 128)

    __pydantic_config__ = {"extra": "forbid"}

    def __post_init__(self) -> None:
        if self.objective not in ("cross_entropy", "supcon"):
            raise ValueError(f"objective {self.objective!r} is not one of 'cross_entropy', 'supcon'")
        if self.objective == "supcon" and self.freeze_backbone:
            raise ValueError("objective supcon trains the encoder, freeze_backbone keeps it fixed: a linear probe "
                             "of a SupCon encoder is objective cross_entropy with freeze_backbone")
        if self.supcon_temperature <= 0 or self.projection_dim < 1:
            raise ValueError(f"supcon_temperature {self.supcon_temperature} and projection_dim "
                             f"{self.projection_dim} must be positive")
        if self.labels and self.model.num_classes != len(self.labels):
            self.model = replace(self.model, num_classes=len(self.labels))
        if self.augment.image_size != self.model.image_size:
            self.augment = replace(self.augment, image_size=self.model.image_size)


def _example_png() -> bytes:
    """A small grey picture: the registered model's input example."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 128, 128)).save(out, format="PNG")
    return out.getvalue()


def _label_ids(column: Sequence[Any]) -> np.ndarray:
    return np.asarray([int(v.decode() if isinstance(v, bytes) else v) for v in column], dtype=np.int64)


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


class SupConViT(VisionTransformer):
    """A ViT classifier with SupCon's projection MLP. Called as usual it gives the head's logits; with
    ``contrastive=True``, (projections (N, P), the head's logits of the detached features (N, C)).

    Both outputs come from one forward so that DDP and FSDP see every parameter used inside the wrapped call.
    """

    def __init__(self, cfg: ViTConfig, projection_dim: int):
        super().__init__(cfg)
        self.projection = nn.Sequential(nn.Linear(cfg.width, cfg.width), nn.ReLU(),
                                        nn.Linear(cfg.width, projection_dim))

    def forward(self, images: torch.Tensor, *, output_attentions: bool = False, contrastive: bool = False):
        if not contrastive:
            return super().forward(images, output_attentions=output_attentions)
        features = self.forward_features(images)  # (N, D)
        # The head is a probe: it must not pull the representation towards cross-entropy's.
        return self.projection(features), self.head(features.detach())


class VitTask(Task):
    """Batches hold ``image`` (B, 3, S, S) float32, ``target`` (B, C) soft labels and ``label`` (B,) int64;
    under objective supcon, ``views`` (B, 2, 3, S, S) float32 and ``label``."""

    name = "vit"
    config_type = VitTaskConfig
    columns = ("jpg", "cls")
    eval_columns = ("jpg", "cls")
    backbone_prefixes = ("patch_embed.", "cls_token", "pos_embed", "encoder.", "ln_post.")
    inference_inputs = {"image": "binary"}
    pretrained_layout = "timm"
    inference_example = {"image": [_example_png()]}

    @property
    def num_classes(self) -> int:
        return len(self.config.labels)

    # -- data facts -------------------------------------------------------------------------------------------
    def fit_to_data(self, training_facts: Callable[[], EvalFacts]) -> "VitTask":
        """Class names from the training set's manifest when the config has none; when it has, the training set
        must use the same names in the same order (its .cls indices are read as they are)."""
        classes = training_facts().classes
        if not self.config.labels:
            if len(classes) < 2:
                raise CheckpointError("ViT training needs a training set with at least 2 classes in its manifest "
                                      "(tvp ingest imagefolder writes them)")
            if sorted(classes) != list(range(len(classes))):
                raise CheckpointError(f"the training set's class ids are {sorted(classes)}: they must be 0..N-1")
            return type(self)(replace(self.config, labels=[classes[i] for i in range(len(classes))]), self.files)
        named = [classes.get(i) for i in range(len(self.config.labels))]
        if classes and (len(classes) != len(self.config.labels) or named != self.config.labels):
            raise CheckpointError("task.labels differ from the training set's classes: leave task.labels empty to "
                                  "take the training set's, or ingest the data with the same class folders")
        return self

    # -- model ------------------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        if not self.config.labels:
            raise CheckpointError("this ViT has no class names: task.labels is empty (train on a set whose "
                                  "manifest names its classes)")
        model_cfg = replace(self.config.model, num_classes=self.num_classes)
        if self.config.objective == "supcon":
            return SupConViT(model_cfg, self.config.projection_dim)
        model = VisionTransformer(model_cfg)
        if self.config.freeze_backbone:
            for name, param in model.named_parameters():
                param.requires_grad_(name.startswith(HEAD_PREFIX))
        return model

    def layer_ids(self, model: nn.Module) -> dict[str, int]:
        return {name: layer_index(name, self.config.model.layers) for name, _ in model.named_parameters()}

    def adapt_weights(self, weights: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        """The encoder carries over; a head of another class count (or none) starts fresh; positions are
        resampled to this model's grid. A SupCon projection is dropped when this model has none (a classifier
        fine-tuned from SupCon training, as the paper does) and starts fresh when the parent had none."""
        target = model.state_dict()
        kept = {}
        for key, value in weights.items():
            if key.startswith(PROJECTION_PREFIX) and key not in target:
                continue
            if key.startswith(HEAD_PREFIX) and (key not in target or value.shape != target[key].shape):
                continue
            if key == "pos_embed" and key in target and value.shape != target[key].shape:
                value = resample_positions(value, self.config.model.grid)
            kept[key] = value
        return super().adapt_weights(kept, model)

    # -- training ---------------------------------------------------------------------------------------------
    def transform_batch(self, batch: dict[str, np.ndarray],
                        rngs: Sequence[np.random.Generator] | None = None) -> dict[str, np.ndarray]:
        aug = self.config.augment
        labels = self._checked(_label_ids(batch["cls"]))
        if self.config.objective == "supcon":
            # View after view: the second continues each sample's generator after the first's draws (a fixed
            # count per view), so both are the sample's own and replay exactly. Each view decodes anew.
            views = [augment_images(list(batch["jpg"]), rngs, aug) for _ in range(SUPCON_VIEWS)]
            return {"views": np.stack(views, axis=1), "label": labels}  # (B, V, 3, S, S)
        images = augment_images(list(batch["jpg"]), rngs, aug)
        targets = smoothed_targets(labels, self.num_classes, aug.label_smoothing if rngs is not None else 0.0)
        images, targets = mix_batch(images, targets, rngs, aug)
        return {"image": images, "target": targets.astype(np.float32), "label": labels}

    def _checked(self, labels: np.ndarray) -> np.ndarray:
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            bad = int(labels[(labels < 0) | (labels >= self.num_classes)][0])
            raise CheckpointError(f"class index {bad} in the data, but this classifier has {self.num_classes} "
                                  f"classes")
        return labels

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        if self.config.objective == "supcon":
            return self._supcon_loss(model, batch)
        logits = model(batch["image"]).float()
        loss = -(batch["target"] * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()
        top1 = (logits.argmax(dim=-1) == batch["target"].argmax(dim=-1)).float().mean()
        return loss, {"loss": loss.item(), "train_top1": top1.item()}

    def _supcon_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """SupCon over every view, plus the probe head's cross-entropy (its gradient reaches the head alone)."""
        views, labels = batch["views"], batch["label"]
        samples, count = views.shape[:2]
        projections, probe_logits = model(views.flatten(0, 1), contrastive=True)  # sample-major rows
        temperature = self.config.supcon_temperature
        contrastive = supcon_loss(projections.float().view(samples, count, -1), labels, temperature, temperature)
        view_labels = labels.repeat_interleave(count)
        probe = F.cross_entropy(probe_logits.float(), view_labels)
        loss = contrastive + probe
        top1 = (probe_logits.argmax(dim=-1) == view_labels).float().mean()
        return loss, {"loss": loss.item(), "supcon_loss": contrastive.item(), "probe_loss": probe.item(),
                      "train_top1": top1.item()}

    # -- evaluation -------------------------------------------------------------------------------------------
    def eval_transform(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"image": eval_images(list(batch["jpg"]), self.config.augment),
                "label": _label_ids(batch["cls"])}

    def eval_begin(self, model: nn.Module, facts: EvalFacts) -> dict[str, torch.Tensor]:
        """The held-out set's class ids mapped to this model's by name (sets ingested apart may number them
        differently); a held-out class the model does not know is an error."""
        index = {name: i for i, name in enumerate(self.config.labels)}
        classes = facts.classes or dict(enumerate(self.config.labels))
        unknown = sorted(name for name in classes.values() if name not in index)
        if unknown:
            raise CheckpointError(f"the held-out set has classes this classifier does not know: "
                                  f"{', '.join(unknown[:5])}")
        remap = torch.full((max(classes) + 1,), -1, dtype=torch.int64)
        for i, name in classes.items():
            remap[i] = index[name]
        return {"remap": remap}

    @torch.no_grad()
    def eval_step(self, model: nn.Module, batch: dict[str, torch.Tensor], context: dict[str, torch.Tensor]
                  ) -> dict[str, torch.Tensor]:
        labels = context["remap"].to(batch["label"].device)[batch["label"]]
        return topk_outputs(model(batch["image"]).float(), labels, TOP_K)

    def eval_reduce(self, outputs: dict[str, np.ndarray], facts: EvalFacts) -> dict[str, float]:
        return classification_metrics(outputs, self.num_classes, TOP_K)

    def eval_pictures(self, outputs: dict[str, np.ndarray], facts: EvalFacts) -> dict[str, Any]:
        from components.viz.confusion_matrix import confusion_picture

        matrix = confusion_matrix(outputs["label"], outputs["predicted"], self.num_classes)
        return {"confusion_matrix": confusion_picture(matrix, self.config.labels)}

    @torch.no_grad()
    def visualize(self, model: nn.Module, samples: list[dict[str, bytes]], facts: EvalFacts) -> Any:
        """Held-out images beside their attention rollout (what the class token drew on), captioned with the
        prediction and the true class."""
        from components.data.shards.contact_sheet import contact_sheet
        from components.viz.attention_rollout import attention_rollout, class_token_maps, overlay

        samples = samples[:ROLLOUT_SAMPLES]
        if not samples:
            return None
        batch = self.eval_transform({c: np.array([s[c] for s in samples], dtype=object) for c in self.eval_columns})
        logits, attentions = _unwrap(model)(torch.from_numpy(batch["image"]), output_attentions=True)
        maps = class_token_maps(attention_rollout(attentions), self.config.model.grid)
        context = self.eval_begin(model, facts)
        labels = context["remap"][torch.from_numpy(batch["label"])].tolist()
        tiles = []
        for sample, heat, predicted, label in zip(samples, maps, logits.argmax(dim=-1).tolist(), labels):
            names = self.config.labels
            caption = f"{'ok' if predicted == label else 'WRONG'}: {names[predicted]} (true: {names[label]})"
            tiles.append((overlay(sample["jpg"], heat), caption))
        return {"attention_rollout": contact_sheet(tiles, columns=4)}

    # -- other libraries' layouts -----------------------------------------------------------------------------
    @classmethod
    def import_pretrained(cls, folder: Path) -> tuple[dict[str, Any], dict[str, str], dict[str, torch.Tensor]] | None:
        """A timm ViT folder (``config.json`` naming a ``vit_*`` architecture, ``model.safetensors``), with the
        preprocessing it records (mean, std, interpolation, crop) and its class names (``label_names``, else
        ``class_0``, ...)."""
        from components.models.vit_layouts import import_timm_folder, timm_data_config

        config_path = folder / "config.json"
        if not config_path.is_file() or not str(json.loads(config_path.read_text()).get("architecture", "")
                                                ).startswith("vit_"):
            return None
        try:
            model_cfg, weights = import_timm_folder(folder)
        except ValueError as exc:
            raise CheckpointError(f"{folder}: {exc}") from None
        data = timm_data_config(folder)
        labels = list(data.get("label_names") or [f"class_{i}" for i in range(model_cfg.num_classes)])
        augment = {k: tuple(data[k]) for k in ("mean", "std") if k in data}
        if data.get("interpolation") in ("bilinear", "bicubic"):
            augment["interpolation"] = data["interpolation"]
        if "crop_pct" in data:
            augment["eval_crop_pct"] = float(data["crop_pct"])
        config = {"model": asdict(model_cfg), "labels": labels, "augment": augment}
        return config, {}, weights

    def export_pretrained(self, weights: dict[str, torch.Tensor], folder: Path) -> Path:
        """``config.json`` + ``model.safetensors`` that ``timm.create_model("local-dir:" + folder,
        pretrained=True)`` loads, recording the normalisation, evaluation crop and class names."""
        from components.models.vit_layouts import export_timm_folder

        aug = self.config.augment
        weights = {k: v for k, v in weights.items() if not k.startswith(PROJECTION_PREFIX)}  # training-time only
        try:
            return export_timm_folder(replace(self.config.model, num_classes=self.num_classes), weights, folder,
                                      mean=aug.mean, std=aug.std, label_names=self.config.labels,
                                      interpolation=aug.interpolation, crop_pct=aug.eval_crop_pct)
        except ValueError as exc:  # a hybrid, or a setting timm's ViT cannot express
            raise CheckpointError(f"cannot export this ViT in timm's layout: {exc}") from None

    # -- inference --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, model: nn.Module, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``image`` (encoded bytes) → ``label`` (the top class's name), ``label_id``, ``probability``, and the
        top 5 as ``top_labels`` / ``top_probabilities``."""
        images = eval_images([bytes(r["image"]) for r in records], self.config.augment)
        probabilities = model(torch.from_numpy(images)).float().softmax(dim=-1)
        best = probabilities.topk(min(TOP_K, self.num_classes), dim=-1)
        out = []
        for values, ids in zip(best.values.tolist(), best.indices.tolist()):
            out.append({"label": self.config.labels[ids[0]], "label_id": ids[0], "probability": values[0],
                        "top_labels": [self.config.labels[i] for i in ids], "top_probabilities": values})
        return out
