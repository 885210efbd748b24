"""A training driver the recovery test can kill and start again: ``python -m tests.e2e.train_driver SPEC``.

SPEC is a JSON file with the task (name, config, files), the TrainConfig
fields, the shard folder, storage path, run name, tracking URI and experiment.
Exits 143 when stopped by SIGTERM after its checkpoint, as ``tvp train`` does.
"""

import json
import shutil
import sys

from pydantic import TypeAdapter

from cluster.ray_cluster import connect
from components.data.loading.shard_plan import ShardSource
from components.tracking.run_tracker import RunTracker
from components.training.ray_trainer import fit
from components.tasks.registry import build_task
from components.training.stop_request import TrainingStopped
from components.training.train_config import TrainConfig


def main(spec_path: str) -> int:
    spec = json.loads(open(spec_path).read())
    connect(spec.get("address"))
    task = build_task(spec["task"], spec["task_config"], spec["files"])
    cfg = TypeAdapter(TrainConfig).validate_python(spec["train"])
    tracker = RunTracker.create(spec["tracking_uri"], spec["experiment"], spec["run_name"])
    try:
        result = fit(task, cfg, [ShardSource(spec["shards"])], spec["storage"], spec["run_name"],
                     tracking={"tracking_uri": spec["tracking_uri"], "run_id": tracker.run_id})
    except TrainingStopped as exc:
        tracker.finish("KILLED")
        print("TRAINING STOPPED:", exc, flush=True)
        return 143
    tracker.finish()
    if spec.get("final_weights"):  # for the test to compare with an uninterrupted run's
        with result.checkpoint.as_directory() as path:
            shutil.copyfile(f"{path}/model.safetensors", spec["final_weights"])
    print("TRAINING DONE", tracker.run_id, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
