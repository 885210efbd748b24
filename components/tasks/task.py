"""The task: the one plug-in point between a model family and the shared platform.

A task is the training spec of one model family. The worker loop, the
evaluation runners, checkpoints, the model registry and the pipelines know a
model only through it:

- **assets**: ``prepare_assets`` builds what the model needs besides its
  weights from the training data, before training (CLIP: the caption
  tokenizer), reading only ``asset_columns``. Assets are text files that
  travel with every checkpoint (``files``). ``fit_to_data`` sizes the task
  to its training set's facts (a classifier's class names).
- **model**: ``build_model``; ``fsdp_units`` (the modules FSDP shards one by
  one); ``adapt_weights`` (how a checkpoint's weights are fitted to this
  task's model when fine-tuning: a new head, a resized table).
- **training data**: ``transform_batch`` is a pure function from decoded
  shard columns (``columns``, raw bytes) to numeric model input. Per-sample
  randomness (masking, crops) must come from the generators it is handed, one
  per sample, seeded by (seed, epoch, sample id): a replayed step after a
  resume sees the same masks and crops.
- **variable-size targets** (boxes, say) are padded with counts: the
  transform pads each sample's items to a fixed ``max_items`` and adds a count
  column; ``components.tasks.targets.unpad`` gives the loss the exact
  per-sample tensors back. Every batch column keeps a fixed shape, which is what
  lets batches be stacked, moved to a device and split across workers.
- **loss**: ``loss(model, batch)`` → (scalar, metrics).
- **evaluation** is a per-batch step plus a reduction: ``eval_transform``
  turns ``eval_columns`` into arrays, ``eval_begin`` prepares what every step
  needs once (CLIP: the class prompts' embeddings), ``eval_step`` returns
  per-sample outputs (dim 0 = samples), and ``eval_reduce`` turns the outputs
  of every batch of every worker, concatenated, into metrics. Facts about the
  held-out set as a whole (its class names) come from its manifest
  (``EvalFacts``), never from the samples one worker happens to see, so the
  same evaluation split over many workers equals the one-process result.
- **inference**: ``predict`` serves the registered model's pyfunc flavour;
  ``inference_inputs`` and ``inference_example`` are its signature.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Sequence

import numpy as np
import torch
from pydantic import TypeAdapter
from torch import nn

from components.models.transformer import Block, DecoderLayer
from components.training.checkpoint import CheckpointError


@dataclass(frozen=True)
class EvalFacts:
    """What an evaluation knows about its held-out shard set as a whole (from ``manifest.json``)."""

    classes: dict[int, str] = field(default_factory=dict)  # class name by label id; empty when the set has none
    num_samples: int = 0

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> "EvalFacts":
        """``manifest["classes"]`` maps label ids (JSON keys are strings) to names."""
        classes = {int(k): str(v) for k, v in (manifest.get("classes") or {}).items()}
        return cls(classes=dict(sorted(classes.items())), num_samples=int(manifest.get("num_samples", 0)))


class Task(ABC):
    name: ClassVar[str]
    config_type: ClassVar[type]  # a dataclass; validated with pydantic, so wrong keys and types name themselves
    columns: ClassVar[tuple[str, ...]]  # shard members transform_batch reads
    eval_columns: ClassVar[tuple[str, ...]] = ()  # shard members eval_transform reads
    asset_columns: ClassVar[tuple[str, ...]] = ()  # shard members prepare_assets reads
    backbone_prefixes: ClassVar[tuple[str, ...]] = ()  # parameter names that TrainConfig.backbone_lr applies to
    fsdp_unit_types: ClassVar[tuple[type[nn.Module], ...]] = (Block, DecoderLayer)  # encoder blocks and decoder layers
    fsdp_forward_methods: ClassVar[tuple[str, ...]] = ()  # model methods besides forward that evaluation calls
    # The registered model's signature: input column → MLflow type name ("string", "binary", "double", ...).
    inference_inputs: ClassVar[dict[str, str]] = {}
    inference_example: ClassVar[dict[str, list]] = {}
    pretrained_layout: ClassVar[str] = ""  # the other library whose layout import_pretrained reads ("timm", ...)

    def __init__(self, config: Any, files: dict[str, str] | None = None):
        self.config = config
        self.files = dict(files or {})

    @classmethod
    def from_dict(cls, config: dict[str, Any], files: dict[str, str] | None = None) -> "Task":
        return cls(TypeAdapter(cls.config_type).validate_python(config), files)

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)

    # -- assets -----------------------------------------------------------------------------------------------
    def prepare_assets(self, samples: Iterable[dict[str, bytes]]) -> dict[str, str]:
        """Files the model needs, built from training samples (``asset_columns`` only); none by default."""
        return {}

    def fit_to_data(self, training_facts: Callable[[], EvalFacts]) -> "Task":
        """This task sized to its training data (a classifier's classes from the training set's manifest);
        ``training_facts`` reads them only when called. Itself by default."""
        return self

    def with_files(self, files: dict[str, str]) -> "Task":
        return type(self)(self.config, {**self.files, **files})

    # -- model ------------------------------------------------------------------------------------------------
    @abstractmethod
    def build_model(self) -> nn.Module: ...

    def fsdp_units(self, model: nn.Module) -> list[nn.Module]:
        """Modules FSDP shards one by one (before the root)."""
        return [m for m in model.modules() if isinstance(m, self.fsdp_unit_types)]

    def layer_ids(self, model: nn.Module) -> dict[str, int] | None:
        """Parameter name → depth (0 for the embeddings, the head on top), for ``TrainConfig.layer_decay``;
        None when the model has no such layers (the default)."""
        return None

    def adapt_weights(self, weights: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        """A full state dict for ``model`` from a parent checkpoint's ``weights``.

        By default every parameter must be there with the same shape; parameters the parent lacks (a new
        head) keep the model's initial values. Tasks override this to resize tables or drop old heads.
        """
        target = model.state_dict()
        adapted = dict(target)
        for key, value in weights.items():
            if key not in target:
                raise CheckpointError(f"the checkpoint has {key!r}, which this {self.name} model does not")
            if value.shape != target[key].shape:
                raise CheckpointError(f"{key!r} has shape {tuple(value.shape)} in the checkpoint but "
                                      f"{tuple(target[key].shape)} in this {self.name} model")
            adapted[key] = value
        return adapted

    # -- training data ----------------------------------------------------------------------------------------
    @abstractmethod
    def transform_batch(self, batch: dict[str, np.ndarray],
                        rngs: Sequence[np.random.Generator] | None = None) -> dict[str, np.ndarray]:
        """Decoded shard columns in, model input columns out (numeric arrays of fixed shape only).

        ``rngs`` holds one generator per sample, seeded by (seed, epoch, sample id); None at evaluation.
        """

    @abstractmethod
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]: ...

    def count_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Text tokens in a batch, for tokens/s; 0 for tasks without text."""
        return 0

    # -- evaluation -------------------------------------------------------------------------------------------
    def eval_transform(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``eval_columns`` in, arrays out; by default the training transform without randomness."""
        return self.transform_batch(batch, None)

    def eval_begin(self, model: nn.Module, facts: EvalFacts) -> Any:
        """What every ``eval_step`` needs, computed once per evaluation (None by default)."""
        return None

    @abstractmethod
    def eval_step(self, model: nn.Module, batch: dict[str, torch.Tensor], context: Any) -> dict[str, torch.Tensor]:
        """Per-sample outputs of one batch: tensors whose first dimension is the batch's samples."""

    @abstractmethod
    def eval_reduce(self, outputs: dict[str, np.ndarray], facts: EvalFacts) -> dict[str, float]:
        """Metrics from the outputs of every batch and worker, concatenated along dim 0 (in any order)."""

    def visualize(self, model: nn.Module, samples: list[dict[str, bytes]], facts: EvalFacts) -> Any:
        """A picture of results on a few held-out samples (a PIL image, or a dict of them by name), logged with
        each evaluation; or None."""
        return None

    def eval_pictures(self, outputs: dict[str, np.ndarray], facts: EvalFacts) -> dict[str, Any]:
        """Pictures of the whole evaluation (a confusion matrix, say) from the outputs ``eval_reduce`` gets,
        by name; logged with the evaluation's metrics. None by default."""
        return {}

    def eval_documents(self, outputs: dict[str, np.ndarray], facts: EvalFacts) -> dict[str, Any]:
        """JSON documents of the whole evaluation (a detector's results in COCO's format, say) by name, from the
        outputs ``eval_reduce`` gets; logged with the evaluation's metrics. None by default."""
        return {}

    # -- other libraries' layouts -----------------------------------------------------------------------------
    @classmethod
    def import_pretrained(cls, folder: Path) -> tuple[dict[str, Any], dict[str, str], dict[str, torch.Tensor]] | None:
        """A model saved in another library's layout (Hugging Face's, say) as this task's (config, files,
        weights), to fine-tune from; None when ``folder`` is not a layout this task reads."""
        return None

    def export_pretrained(self, weights: dict[str, torch.Tensor], folder: Path) -> Path:
        """Write ``weights`` in the layout other libraries load (Hugging Face's, say); return the folder."""
        raise NotImplementedError(f"task {self.name} has no export to another library's layout")

    # -- inference --------------------------------------------------------------------------------------------
    def predict(self, model: nn.Module, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Inference for the registered model's pyfunc flavour: one output record per input record."""
        raise NotImplementedError(f"task {self.name} has no inference output yet")
