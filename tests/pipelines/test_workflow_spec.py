"""Pipeline files: what loads, what is refused with a message naming the problem, and how references resolve."""

from pathlib import Path

import pytest

from pipelines.config import ConfigError
from pipelines.workflow_spec import EXAMPLES_DIR, load_pipeline, render, resolve_params


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return str(path)


GOOD = """
name: nightly
params: {root: /data, epochs: null, fast: true}
steps:
  - name: shards
    run: tvp ingest image-text ${params.root}/t.parquet --output ${run.workdir}/shards
  - name: train
    run: [tvp, train, clip, --data, "${steps.shards.output}", --set, "train.epochs=${params.epochs}"]
  - name: gate
    run: tvp promote ${steps.train.model_uri} --metric zero_shot_top1 --mode max
  - name: again
    run: "tvp evaluate 'models:/x@champion' --data ${steps.shards.output}"
"""


def test_a_pipeline_renders_params_outputs_and_run_fields(tmp_path):
    spec, digest = load_pipeline(write(tmp_path, GOOD))
    assert [s.name for s in spec.steps] == ["shards", "train", "gate", "again"] and len(digest) == 16
    params = resolve_params(spec, ["epochs=3", "root=s3://b/x"])
    assert params == {"root": "s3://b/x", "epochs": "3", "fast": "true"}
    run = {"name": "n1", "workdir": "/w"}
    assert render(spec.steps[0], params, {}, run) == [
        "ingest", "image-text", "s3://b/x/t.parquet", "--output", "/w/shards"]
    outputs = {"shards": {"output": "/w/shards"}, "train": {"model_uri": "models:/tvp-clip/4", "metrics": {"a": 1}}}
    assert render(spec.steps[1], params, outputs, run)[3:] == ["/w/shards", "--set", "train.epochs=3"]
    assert render(spec.steps[2], params, outputs, run)[1] == "models:/tvp-clip/4"
    assert render(spec.steps[3], params, outputs, run)[1] == "models:/x@champion"  # quoted as a shell would
    with pytest.raises(ConfigError, match=r"step 'gate': \$\{steps.train.model_uri\} has no value"):
        render(spec.steps[2], params, {"train": {}}, run)


@pytest.mark.parametrize("change, message", [
    (("${params.root}", "${params.rot}"), r"step 'shards': \$\{params.rot\} names no declared parameter"),
    (("${steps.shards.output}\", --set", "${steps.gate.output}\", --set"),
     r"step 'train': \$\{steps.gate.output\} names no earlier step"),
    (("${steps.train.model_uri}", "${steps.train.weights}"), r"tvp train hands on run_id, run_name"),
    (("${run.workdir}", "${run.home}"), r"a run has name, workdir"),
    (("${run.workdir}", "${workdir}"), r"is not \$\{params.NAME\}"),
    (("tvp promote", "rm -rf /; tvp promote"), r"a step runs a tvp command \(tvp COMMAND ...\), not 'rm'"),
    (("tvp promote", "tvp submit"), r"tvp submit is not a step command"),
    (("name: gate", "name: train"), r"two steps are named 'train'"),
    (("name: gate", "name: Gate!"), r"steps.2.name"),
    (("params:", "parameters:"), r"unknown config key 'parameters'"),
])
def test_mistakes_are_refused_naming_them(tmp_path, change, message):
    assert change[0] in GOOD
    with pytest.raises(ConfigError, match=message):
        load_pipeline(write(tmp_path, GOOD.replace(*change, 1)))


def test_parameters_must_be_declared_and_given(tmp_path):
    spec, _ = load_pipeline(write(tmp_path, GOOD))
    with pytest.raises(ConfigError, match="pipeline nightly needs --param epochs=VALUE"):
        resolve_params(spec, [])
    with pytest.raises(ConfigError, match=r"has no parameter 'epoch' \(it has: root, epochs, fast\)"):
        resolve_params(spec, ["epoch=3"])
    with pytest.raises(ConfigError, match="--param expects NAME=VALUE"):
        resolve_params(spec, ["epochs"])


def test_files_that_are_no_pipeline_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_pipeline(write(tmp_path, "name: [unclosed"))
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_pipeline(write(tmp_path, "- a list"))
    with pytest.raises(ConfigError, match=r"unknown pipeline 'nope' \(known: .*clip-demo.*; or give a .yaml path\)"):
        load_pipeline("nope")
    with pytest.raises(ConfigError, match="pipeline file .*missing.yaml does not exist"):
        load_pipeline(str(tmp_path / "missing.yaml"))


def test_every_shipped_example_loads():
    examples = sorted(EXAMPLES_DIR.glob("*.yaml"))
    assert {p.stem for p in examples} >= {"clip-demo", "clip-pretrain"}
    for path in examples:
        spec, _ = load_pipeline(path.stem)
        assert spec.name == path.stem
