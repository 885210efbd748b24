"""A pipeline file: named steps, each a ``tvp`` command, whose arguments refer to parameters and earlier outputs.

```yaml
name: clip-pretrain
description: embedded digits → shards → CLIP → evaluation → champion
params:
  data: tvp-pipeline/data          # a default; --param data=... overrides it
  epochs: null                     # no default: --param epochs=N is required
steps:
  - name: ingest
    run: tvp ingest image-text ${params.data}/train.parquet --output ${run.workdir}/shards
  - name: train
    run: [tvp, train, clip, --data, "${steps.ingest.output}", --set, "train.epochs=${params.epochs}"]
```

``run`` is an argument list, or one string split as a shell would (no shell
runs it). A step with ``if: ${steps.select.count}`` runs only when that
renders to a true value (not empty, 0, false or no); a skipped step's
dependants are skipped too. An argument that is a single reference to a list
output becomes one argument per item, its option repeated
(``--data ${steps.select.locations}`` → ``--data a --data b``).
References, checked when the file is loaded:
- ``${params.NAME}``: a parameter declared under ``params``;
- ``${steps.STEP.KEY}``: an output of an earlier step (``KEY`` may be dotted,
  ``metrics.zero_shot_top1``); which keys a command hands on is listed in
  ``STEP_OUTPUTS``;
- ``${run.name}``, ``${run.workdir}``: the pipeline run's name and work folder.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.config import ConfigError, _describe, named_yaml, read_yaml_mapping

EXAMPLES_DIR = Path(__file__).parent / "examples"
REFERENCE = re.compile(r"\$\{([^}]*)\}")
STEP_NAME = r"^[a-z][a-z0-9_-]*$"
RUN_FIELDS = ("name", "workdir")

# The commands a step may run, and the outputs each hands on (see pipelines/step_outputs.py).
# Steps that manage pipelines, jobs or schedules would nest one orchestrator inside another: not steps.
STEP_OUTPUTS: dict[str, tuple[str, ...]] = {
    "demo": ("workdir", "run_id", "run_name", "registered_model", "model_version", "model_uri", "zero_shot_top1"),
    "demo-data": ("train_table", "heldout_table", "num_train", "num_heldout"),
    # the last two: imagefolder, and coco --sample
    "ingest": ("output", "content_hash", "num_samples", "num_shards", "train", "heldout"),
    "inspect": (),
    "train": ("run_id", "run_name", "experiment", "registered_model", "model_version", "model_uri",
              "checkpoint_uri", "data_manifest_hash", "metrics", "promotion"),
    "evaluate": ("model_uri", "metrics"),
    "select-shards": ("locations", "content_hashes", "count", "trained"),
    "export": ("output",),
    "split-articles": ("train", "heldout", "categories_train", "categories_heldout"),
    "promote": ("model_uri", "promoted", "reason"),
    "filter": ("output", "content_hash", "num_samples", "threshold", "kept_fraction"),
}
STEP_OUTPUTS["finetune"] = STEP_OUTPUTS["train"]
STEP_OUTPUTS_WITH_FIELDS = ("metrics",)  # outputs that are mappings: referred to as metrics.NAME


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Step(_Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(pattern=STEP_NAME, description="how later steps and the run record refer to this step")
    run: list[str] = Field(min_length=2, description="the tvp command: an argument list or one shell-style string")
    run_if: str | None = Field(None, alias="if", description="run only if this renders to a true value (not empty, "
                                                             "0, false or no); otherwise the step is skipped")
    description: str = ""

    @field_validator("run", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return shlex.split(value)
            except ValueError as exc:
                raise ValueError(f"cannot split the command: {exc}") from None
        if isinstance(value, list):
            return [str(v) if isinstance(v, (int, float, bool)) else v for v in value]
        return value

    @field_validator("run")
    @classmethod
    def _a_tvp_command(cls, run: list[str]) -> list[str]:
        if run[0] != "tvp":
            raise ValueError(f"a step runs a tvp command (tvp COMMAND ...), not {run[0]!r}")
        if run[1] not in STEP_OUTPUTS:
            raise ValueError(f"tvp {run[1]} is not a step command (one of: {', '.join(sorted(STEP_OUTPUTS))})")
        return run

    @property
    def command(self) -> str:
        return self.run[1]


class PipelineSpec(_Strict):
    name: str = Field(pattern=STEP_NAME, description="the pipeline's name; its runs are recorded under it")
    description: str = ""
    params: dict[str, str | int | float | bool | None] = Field(
        default_factory=dict, description="parameters and their defaults (null: must be given with --param)")
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _references_resolve(self) -> "PipelineSpec":
        seen: dict[str, Step] = {}
        for step in self.steps:
            if step.name in seen:
                raise ValueError(f"two steps are named {step.name!r}")
            for arg in [*step.run, *([step.run_if] if step.run_if else [])]:
                for ref in REFERENCE.findall(arg):
                    _check_reference(ref, step, self.params, seen)
            seen[step.name] = step
        return self


def _check_reference(ref: str, step: Step, params: dict[str, Any], earlier: dict[str, Step]) -> None:
    where = f"step {step.name!r}: ${{{ref}}}"
    parts = ref.split(".")
    if parts[0] == "params" and len(parts) == 2:
        if parts[1] not in params:
            raise ValueError(f"{where} names no declared parameter (declared: {', '.join(params) or 'none'})")
    elif parts[0] == "run" and len(parts) == 2:
        if parts[1] not in RUN_FIELDS:
            raise ValueError(f"{where}: a run has {', '.join(RUN_FIELDS)}")
    elif parts[0] == "steps" and len(parts) >= 3:
        source = earlier.get(parts[1])
        if source is None:
            raise ValueError(f"{where} names no earlier step")
        outputs = STEP_OUTPUTS[source.command]
        if parts[2] not in outputs or (len(parts) > 3 and parts[2] not in STEP_OUTPUTS_WITH_FIELDS):
            raise ValueError(f"{where}: tvp {source.command} hands on {', '.join(outputs) or 'nothing'}")
    else:
        raise ValueError(f"{where} is not ${{params.NAME}}, ${{steps.STEP.OUTPUT}} or ${{run.name|workdir}}")


def load_pipeline(name_or_path: str) -> tuple[PipelineSpec, str]:
    """The validated pipeline (a file, or the name of an example in pipelines/examples) and the hash of its
    file (a resumed run notices a changed file)."""
    path = named_yaml(name_or_path, EXAMPLES_DIR, "pipeline")
    data = read_yaml_mapping(path, "pipeline")
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"pipeline file {path}: {_describe(exc.errors()[0])}") from None
    return spec, hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def resolve_params(spec: PipelineSpec, given: list[str]) -> dict[str, str]:
    """The declared defaults with ``--param K=V`` laid over them; every parameter ends up with a value."""
    values = {k: v for k, v in spec.params.items() if v is not None}
    for item in given:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param expects NAME=VALUE, got {item!r}")
        if key not in spec.params:
            raise ConfigError(f"pipeline {spec.name} has no parameter {key!r} "
                              f"(it has: {', '.join(spec.params) or 'none'})")
        values[key] = value
    missing = [k for k in spec.params if k not in values]
    if missing:
        raise ConfigError(f"pipeline {spec.name} needs --param {missing[0]}=VALUE")
    return {k: _text(v) for k, v in values.items()}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def references(step: Step) -> set[str]:
    """The earlier steps whose outputs ``step`` uses (in its command or its condition)."""
    texts = [*step.run, *([step.run_if] if step.run_if else [])]
    return {ref.split(".")[1] for text in texts for ref in REFERENCE.findall(text) if ref.startswith("steps.")}


def _lookup(step: Step, ref: str, params: dict[str, str], outputs: dict[str, dict[str, Any]],
            run: dict[str, str]) -> Any:
    parts = ref.split(".")
    if parts[0] == "params":
        return params[parts[1]]
    if parts[0] == "run":
        return run[parts[1]]
    found: Any = outputs.get(parts[1], {})
    for key in parts[2:]:
        if not isinstance(found, dict) or key not in found:
            raise ConfigError(f"step {step.name!r}: ${{{ref}}} has no value (step {parts[1]!r} did not hand it on)")
        found = found[key]
    if found is None:
        raise ConfigError(f"step {step.name!r}: ${{{ref}}} is empty")
    return found


def render(step: Step, params: dict[str, str], outputs: dict[str, dict[str, Any]], run: dict[str, str]) -> list[str]:
    """The step's arguments after ``tvp`` with every reference replaced by its value.

    An argument that is one reference to a list (``--data ${steps.select.locations}``) becomes one argument
    per item, with the option before it repeated: ``--data a --data b``.
    """
    rendered: list[str] = []
    for arg in step.run[1:]:
        whole = REFERENCE.fullmatch(arg)
        value = _lookup(step, whole.group(1), params, outputs, run) if whole else None
        if isinstance(value, list):
            if not value:
                raise ConfigError(f"step {step.name!r}: {arg} is an empty list")
            option = rendered.pop() if rendered and rendered[-1].startswith("-") else None
            for item in value:
                rendered += [option, _text(item)] if option else [_text(item)]
            continue
        rendered.append(REFERENCE.sub(lambda m: _text(_lookup(step, m.group(1), params, outputs, run)), arg))
    return rendered


def should_run(step: Step, params: dict[str, str], outputs: dict[str, dict[str, Any]], run: dict[str, str]) -> bool:
    if step.run_if is None:
        return True
    text = REFERENCE.sub(lambda m: _text(_lookup(step, m.group(1), params, outputs, run)), step.run_if)
    return text.strip().lower() not in ("", "0", "false", "no", "[]")
