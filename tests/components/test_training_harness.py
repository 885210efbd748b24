"""The one training loop in one process (no Ray): learning, exact resume, replayed randomness,
variable-size targets intact, and a resume that opens no finished shard."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from components.data.loading.rank_reader import rank_samples, shuffle_windows
from components.data.loading.shard_plan import read_shard_refs
from components.data.shards.shard_set import ShardSet
from components.data.shards.tar_samples import iter_shard_samples
from components.evaluation.batch_evaluation import evaluate, sample_batches
from components.tasks.task import EvalFacts
from components.tasks.registry import register_task
from components.training.harness import train_in_process
from tests.tasks import toy_task
from tests.tasks.toy_task import SEEN, toy_samples, write_toy_shards

register_task("toy", "tests.tasks.toy_task:ToyTask")
SHARDS, PER_SHARD = 6, 32


@pytest.fixture(scope="module")
def toy_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    return write_toy_shards(root / "train", SHARDS, PER_SHARD, seed=0), write_toy_shards(root / "eval", 2, 24, seed=1)


def spec(train_dir: str, eval_dir: str | None = None, **train) -> dict:
    out = {
        "task": "toy", "task_config": {"hidden": 16}, "files": {},
        "train": {"epochs": 3, "batch_size": 16, "lr": 0.02, "shuffle_buffer": 64, "loader_workers": 0,
                  "log_every": 1, "weight_decay": 0.0, "preemption_check_every_steps": 0, **train},
        "sources": [[train_dir, 1.0]],
    }
    if eval_dir:
        out["eval"] = {"location": eval_dir, "facts": {"classes": {"0": "a", "1": "b", "2": "c"}}}
    return out


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_the_loop_learns_and_evaluates_after_every_epoch(toy_sets, tmp_path):
    train_dir, eval_dir = toy_sets
    run = train_in_process(spec(train_dir, eval_dir), tmp_path / "run")
    epochs = [r for r in run.reports if r["trigger"] == "epoch"]
    assert len(epochs) == 3 and all(r["num_eval_samples"] == 48 and r["num_classes"] == 3 for r in epochs)
    assert epochs[-1]["eval_metrics"] == "mse,num_classes,num_eval_samples"

    task = run.loop.task
    facts = EvalFacts.from_manifest(spec(train_dir, eval_dir)["eval"]["facts"])
    samples = list(ShardSet.open(eval_dir).iter_samples(task.eval_columns))
    torch.manual_seed(0)
    untrained = evaluate(task, task.build_model(), sample_batches(task, samples, 10), facts)
    assert epochs[-1]["mse"] < 0.1 * untrained["mse"], (untrained, [r["mse"] for r in epochs])
    # The loop's evaluation (its own reader and batch size) equals a one-process evaluation of the final model.
    final = evaluate(task, run.model, sample_batches(task, samples, 7), facts)
    assert final["mse"] == pytest.approx(epochs[-1]["mse"], rel=1e-5)


def test_a_stopped_and_resumed_run_ends_with_the_same_weights_and_samples(toy_sets, tmp_path):
    train_dir, _ = toy_sets
    whole = train_in_process(spec(train_dir, sample_log_dir=str(tmp_path / "whole_log")), tmp_path / "whole")
    first = train_in_process(spec(train_dir, sample_log_dir=str(tmp_path / "split_log")), tmp_path / "split",
                             stop_after_steps=17)
    assert first.stopped and first.reports[-1]["trigger"] == "stop" and first.reports[-1]["step"] == 17
    second = train_in_process(spec(train_dir, sample_log_dir=str(tmp_path / "split_log")), tmp_path / "split")
    assert second.resumed and not second.stopped
    # Both sides: the resumed run neither skipped nor repeated a step, and trained on the same samples...
    whole_log, split_log = ((tmp_path / name / "rank0.log").read_text().splitlines() for name in ("whole_log", "split_log"))
    assert [line for line in split_log if line.startswith("#")] == ["# start at step 0", "# start at step 17"]
    assert whole_log[1:] == [line for line in split_log if not line.startswith("#")]
    # ...and the final weights are the same (a resume that started anywhere else would differ).
    for key, value in weights(whole.model).items():
        assert torch.equal(value, whole.model.state_dict()[key])
        assert torch.allclose(value, second.model.state_dict()[key], atol=1e-6), key


def test_per_sample_randomness_replays_after_a_resume(toy_sets, tmp_path):
    train_dir, _ = toy_sets
    SEEN["masks"].clear()
    train_in_process(spec(train_dir, epochs=1), tmp_path / "whole")
    whole = list(SEEN["masks"])
    SEEN["masks"].clear()
    train_in_process(spec(train_dir, epochs=1), tmp_path / "split", stop_after_steps=5)
    before = len(SEEN["masks"])
    train_in_process(spec(train_dir, epochs=1), tmp_path / "split")
    assert before == 5 * 16 and SEEN["masks"] == whole
    assert len({tuple(m) for m in whole}) > 4  # the masks really vary per sample


def test_variable_size_targets_reach_the_loss_intact(toy_sets, tmp_path):
    train_dir, _ = toy_sets
    SEEN["items"].clear()
    run = train_in_process(spec(train_dir, epochs=1, shuffle_buffer=0), tmp_path / "run")
    expected = [s["json"]["items"] for s in toy_samples(SHARDS * PER_SHARD, seed=0)]
    assert len(SEEN["items"]) == run.loop.plans.steps(1, 1, 16) * 16 == len(expected)  # one epoch: every sample
    received = sorted(tuple(round(v, 3) for v in items) for items in SEEN["items"])
    assert received == sorted(tuple(items) for items in expected)
    assert {len(i) for i in SEEN["items"]} == set(range(toy_task.MAX_ITEMS + 1))


def test_a_resume_opens_no_finished_shard(toy_sets):
    train_dir, _ = toy_sets
    refs = read_shard_refs(train_dir)
    opened: list[str] = []

    def counting(url, members):
        opened.append(url)
        return iter_shard_samples(url, members)

    window = 64  # two shards a window
    full = list(rank_samples(refs, ["json"], window, seed=3))
    skip = 150  # past two whole windows (128 samples), into the third
    resumed = list(rank_samples(refs, ["json"], window, seed=3, skip=skip, open_samples=counting))
    assert resumed == full[skip:]
    assert opened == [r.url for r in shuffle_windows(refs, window)[2]]  # only the window it was in
    assert len(shuffle_windows(refs, window)) == 3


def test_loader_processes_do_not_change_the_batches(toy_sets):
    from components.data.loading.rank_reader import rank_batches

    train_dir, _ = toy_sets
    refs = read_shard_refs(train_dir)
    task = toy_task.ToyTask(toy_task.ToyConfig())

    def ids(workers: int) -> list[list[int]]:
        return [b["sample_id"].tolist() for b in rank_batches(refs, task.columns, task.transform_batch, 16, 64,
                                                               seed=1, epoch=2, skip=3, loader_workers=workers)]

    in_process = ids(0)
    assert in_process == ids(2) and len(in_process) == SHARDS * PER_SHARD // 16 - 3
    assert np.unique(np.concatenate(in_process)).size == len(in_process) * 16


def test_checkpoints_at_evaluation_carry_the_metric_others_count_as_latest_only(toy_sets, tmp_path):
    train_dir, eval_dir = toy_sets
    run = train_in_process(spec(train_dir, eval_dir, epochs=1, eval_every_steps=4, checkpoint_every_steps=3,
                                checkpoint_metric="mse", checkpoint_metric_mode="min"), tmp_path / "run")
    by_trigger = {(r["trigger"], r["step"]): r for r in run.reports}
    assert set(by_trigger) == {("steps", 3), ("evaluation", 4), ("steps", 6), ("evaluation", 8), ("steps", 9),
                               ("epoch", 12)}
    for (trigger, _), report in by_trigger.items():
        if trigger in ("evaluation", "epoch"):
            assert math.isfinite(report["mse"]) and report["eval_metrics"]
        else:  # NaN ranks below every evaluated checkpoint in Ray Train's ordering, in either mode
            assert math.isnan(report["mse"]) and report["eval_metrics"] == ""


def test_two_processes_with_fsdp_end_where_ddp_ends(toy_sets, tmp_path):
    """The loop under a real gloo process group of two ranks, sharded (FSDP2) and replicated (DDP), evaluating
    on both: the same final weights and the same evaluation."""
    from safetensors.torch import load_file

    from components.training.harness import train_in_processes

    train_dir, eval_dir = toy_sets
    finals = {}
    for parallelism in ("ddp", "fsdp"):
        final = train_in_processes(spec(train_dir, eval_dir, epochs=1, parallelism=parallelism), tmp_path / parallelism)
        finals[parallelism] = (load_file(str(final / "model.safetensors")),
                               json.loads((final / ".committed").read_text()))
    (ddp, ddp_report), (fsdp, fsdp_report) = finals["ddp"], finals["fsdp"]
    assert ddp.keys() == fsdp.keys()
    for key in ddp:
        assert torch.allclose(ddp[key], fsdp[key], atol=1e-5), key
    assert ddp_report["num_eval_samples"] == fsdp_report["num_eval_samples"] == 48
    assert fsdp_report["mse"] == pytest.approx(ddp_report["mse"], rel=1e-4)
