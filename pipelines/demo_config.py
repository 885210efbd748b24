"""The demo's config: the training sections of a run plus ``data``. Light to import, so that a wrong key
fails before Ray, MLflow or torch load."""

from __future__ import annotations

from pydantic import Field, model_validator

from components.data.ingest.digits_demo_data import PROMPT_TEMPLATES
from components.data.ingest.image_processing import ImageConfig
from pipelines.run_config import RunConfig, Strict

TASK = "clip"


class DemoDataConfig(Strict):
    source_size: int = Field(64, ge=8, description="side of the PNGs built from the 8x8 digits")
    heldout_fraction: float = Field(0.2, gt=0, lt=1, description="share of images kept for zero-shot evaluation")
    rows_per_shard: int = Field(256, ge=1)
    seed: int = 0  # the train/held-out split and caption choice
    image: ImageConfig = Field(default_factory=ImageConfig)


class DemoConfig(RunConfig):
    data: DemoDataConfig = Field(default_factory=DemoDataConfig)

    @model_validator(mode="after")
    def _sizes_agree(self) -> "DemoConfig":
        # The demo evaluates with prompts that share no template with its training captions.
        self.task.setdefault("zero_shot_templates", list(PROMPT_TEMPLATES))
        image_size = self.task_config(TASK).model.vision.image_size
        if "image" not in self.data.model_fields_set:  # the model's input size, not ingestion's default (256)
            self.data.image = ImageConfig(image_size=image_size)
        if image_size != self.data.image.image_size:
            raise ValueError(
                f"task.model.vision.image_size ({image_size}) must equal "
                f"data.image.image_size ({self.data.image.image_size})"
            )
        return self
