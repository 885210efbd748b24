import pytest

from components.training.train_config import TrainConfig
from pipelines.config import ConfigError, apply_override, load_config
from pipelines.demo_config import DemoConfig
from pipelines.run_config import default_preset, load_run_config


def test_tiny_preset_loads_and_overrides_apply_with_yaml_types():
    cfg = load_config(DemoConfig, "tiny", ["train.epochs=3", "train.lr=0.01", "tracking.experiment=mine"])
    assert cfg.train.epochs == 3 and cfg.train.lr == 0.01 and cfg.tracking.experiment == "mine"
    assert isinstance(cfg.train, TrainConfig) and cfg.task_config("clip").model.vision.image_size == 32


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=3", "unknown config key 'train.epoch'"),
        ("task.model.vision.depth=3", "unknown config key 'task.model.vision.depth'"),
        ("model.vision.width=3", "unknown config key 'model'"),
        ("colour=red", "unknown config key 'colour'"),
        ("train.epochs=many", "config key 'train.epochs': Input should be a valid integer"),
        ("data.image.resize_mode=stretch", "config key 'data.image.resize_mode'"),
        ("train.batch_size=127", "batch_size 127 is not divisible by num_workers × grad_accum_steps (2)"),
        ("task.model.vision.image_size=48", "task.model.vision.image_size (48) must equal data.image.image_size (32)"),
        ("train.epochs", "--set expects key=value"),
        ("train.epochs.x=1", "config key 'train.epochs' is not a section"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(DemoConfig, "tiny", [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_presets_and_files(tmp_path):
    with pytest.raises(ConfigError, match="unknown config preset 'huge'"):
        load_config(DemoConfig, "huge")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(DemoConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(DemoConfig, bad)
    good = tmp_path / "good.yaml"
    good.write_text("train:\n  epochs: 2\n")
    assert load_config(DemoConfig, good).train.epochs == 2


def test_apply_override_builds_nested_sections():
    data = {}
    apply_override(data, "a.b.c=[1, 2]")
    apply_override(data, "a.d=")
    assert data == {"a": {"b": {"c": [1, 2]}, "d": ""}}


def test_training_presets_validate_the_task_section_with_the_tasks_own_type():
    cfg = load_run_config("clip", "clip-tiny", ["train.epochs=2"])
    assert cfg.train.epochs == 2 and cfg.registered_model("clip") == "tvp-clip"
    assert cfg.task_config("clip").model.text.vocab_size == 1024
    with pytest.raises(ConfigError, match="unknown config key 'task.model.text.depth'"):
        load_run_config("clip", "clip-tiny", ["task.model.text.depth=2"])
    with pytest.raises(ConfigError, match="config key 'task.eval_batch_size'"):
        load_run_config("clip", None, ["task.eval_batch_size=lots"])
    assert default_preset("clip") == "clip-tiny" and default_preset("clip", "finetune") == "clip-finetune"


def test_a_parents_task_settings_are_the_base_that_overrides_change():
    parent = load_run_config("clip", "clip-tiny").task
    cfg = load_run_config("clip", "clip-finetune", ["task.zero_shot_templates=['a {}']"], base_task=parent)
    task = cfg.task_config("clip")
    assert task.model.vision.width == 64 and task.zero_shot_templates == ["a {}"] and cfg.train.lr == 0.0001


def test_an_empty_mapping_in_a_fine_tuning_preset_drops_the_parents():
    parent = {"model": {"backbone": "tiny", "num_classes": 11}, "classes": {1: "zero", 2: "one"}}
    task = load_run_config("detr", "detr-finetune", base_task=parent).task
    assert task["classes"] == {} and task["model"] == parent["model"]  # refitted from the new training set
