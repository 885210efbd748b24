"""The one training loop for every task, in plain torch: setup, restore, epochs, evaluation, checkpoints.

It runs on each Ray Train worker (``worker_loop.py`` gives it a ``RayContext``)
and in one process (``harness.py``, a ``LocalContext``). Each rank builds the
task and its model, wraps it for data parallelism (DDP or FSDP), and reads
its own planned shards (``components/data/loading/shard_plan.py``) in
micro-batches, taking optimizer steps through ``OptimizerStep``. Checkpoints
hold the weights, the optimizer, schedule and scaler state, and the data
position; a restarted worker resumes from the latest one, skipping exactly
the batches it had trained on without reading the shards it had finished.
Evaluation runs on every rank over its share of the held-out shards, and the
per-sample outputs of all ranks are reduced together. Only rank 0 writes
checkpoints and talks to MLflow.

``spec`` keys: ``task``, ``task_config``, ``files``, ``train`` (TrainConfig
fields), ``sources`` ([shard set location, weight, index folder or None]), and
optionally ``eval`` ({``location``, ``index_dir``, ``facts``}), ``init_weights`` (safetensors bytes a
fine-tuning run starts from), ``tracking`` ({``tracking_uri``, ``run_id``}).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from pydantic import TypeAdapter

from components.data.loading.background_iterator import BackgroundIterator
from components.data.loading.rank_reader import SAMPLE_ID, OpenSamples, rank_batches
from components.data.loading.shard_plan import EpochPlanner, ShardSource, read_shard_refs, rank_shards
from components.data.shards.tar_samples import iter_shard_samples
from components.evaluation.batch_evaluation import gather_outputs, step_outputs
from components.tasks.registry import build_task
from components.tasks.task import EvalFacts
from components.training.checkpoint import load_weights, read_checkpoint_config, save_checkpoint_state
from components.training.checkpoint_migration import migrate_optimizer_state
from components.training.checkpoint_policy import CheckpointPolicy
from components.training.loop_context import LoopContext
from components.training.optimizers import build_adamw, layer_rate_scales
from components.training.parallel import full_state_dict, load_full_state_dict, unwrap, wrap_model
from components.training.schedules import build_scheduler
from components.training.throughput import EpochMeter
from components.training.train_config import TrainConfig
from components.training.train_state import capture_train_state, load_train_state, restore_train_state, save_train_state, step_seed
from components.training.train_step import OptimizerStep
from components.training.weight_average import WeightEMA

log = logging.getLogger("tvp.train")
PICTURE_SAMPLES = 16  # held-out samples in the picture logged with each evaluation


def _grouped(batches: Iterator[dict], size: int) -> Iterator[list[dict]]:
    """Consecutive groups of ``size`` micro-batches; a short last group is dropped."""
    group: list[dict] = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []


def load_initial_weights(model: torch.nn.Module, task: Any, weights: bytes) -> None:
    """A fine-tuning run's starting weights (safetensors bytes), adapted to this task's model."""
    from safetensors.torch import load as load_safetensors

    model.load_state_dict(task.adapt_weights(load_safetensors(weights), model), strict=True)


class TrainingLoop:
    def __init__(self, spec: dict[str, Any], ctx: LoopContext, open_samples: OpenSamples = iter_shard_samples):
        self.spec, self.ctx, self.open_samples = spec, ctx, open_samples
        self.cfg = cfg = TypeAdapter(TrainConfig).validate_python(spec["train"])
        self.task = build_task(spec["task"], spec["task_config"], spec["files"])
        self.plans = EpochPlanner([ShardSource(*source) for source in spec["sources"]], cfg.seed,
                                  cfg.samples_per_epoch)
        self.per_rank_step = cfg.micro_batch_size * cfg.grad_accum_steps
        evaluation = spec.get("eval") or None
        self.eval_refs = read_shard_refs(evaluation["location"], evaluation.get("index_dir")) if evaluation else []
        self.facts = EvalFacts.from_manifest(evaluation["facts"]) if evaluation else EvalFacts()
        self.policy = CheckpointPolicy(cfg, has_eval=bool(evaluation))
        self.position = {"epoch": 1, "epoch_step": 0, "step": 0}
        self._build_model()
        self.tracker = self.sampler = None
        self.sample_log = None
        self._picture_samples: list[dict[str, bytes]] | None = None

    # -- setup ------------------------------------------------------------------------------------------------
    def _build_model(self) -> None:
        cfg, task = self.cfg, self.task
        torch.manual_seed(cfg.seed)  # same initial weights on every rank
        model = task.build_model()
        if self.spec.get("init_weights") is not None:
            load_initial_weights(model, task, self.spec["init_weights"])
        self.model = wrap_model(model, cfg.parallelism, self.ctx.device, task.fsdp_units(model),
                                task.fsdp_forward_methods)
        total_steps = sum(self.plans.steps(e, self.ctx.world, self.per_rank_step) for e in range(1, cfg.epochs + 1))
        optimizer = build_adamw(self.model, cfg.lr, cfg.weight_decay, cfg.backbone_lr, task.backbone_prefixes,
                                self._rate_scales(model))
        scheduler = build_scheduler(optimizer, max(1, total_steps), cfg.warmup_steps, cfg.schedule,
                                    cfg.lr_step_every, cfg.lr_step_gamma)
        self.step_fn = OptimizerStep(self.model, task.loss, optimizer, scheduler, cfg.precision, cfg.grad_clip_norm,
                                     self.ctx.device)
        self.ema = WeightEMA(self.model, cfg.ema_decay) if cfg.ema_decay else None

    def _rate_scales(self, model: torch.nn.Module) -> dict[str, float] | None:
        if self.cfg.layer_decay is None:
            return None
        layers = self.task.layer_ids(model)
        if not layers:
            raise ValueError(f"train.layer_decay needs a model with layers; task {self.task.name} has none")
        return layer_rate_scales(layers, self.cfg.layer_decay)

    def _evaluated_weights(self):
        """The weights evaluation and checkpoints use: the moving average when there is one."""
        return self.ema.applied() if self.ema else contextlib.nullcontext()

    def attach_tracking(self) -> None:
        """Rank 0 logs to the MLflow run named in the spec (MLflow is imported only where it is used)."""
        tracking = self.spec.get("tracking")
        if self.ctx.rank != 0 or not tracking:
            return
        from components.tracking.run_tracker import RunTracker
        from components.tracking.system_metrics import SystemSampler

        self.tracker = RunTracker(tracking["tracking_uri"], tracking["run_id"])
        self.sampler = SystemSampler(self.cfg.system_metrics_every_s)

    def restore(self) -> bool:
        """Continue from the context's latest checkpoint, if there is one; return whether there was."""
        with self.ctx.latest_checkpoint() as path:
            if not path:
                return False
            holder = self.task.build_model()
            load_weights(path, holder)
            load_full_state_dict(self.model, holder.state_dict())
            state = load_train_state(path)
            if state is not None and self.ema:
                # The checkpoint's weights are the average; the live ones travel in the training state.
                self.ema.reset(int(state.get("ema_updates", 0)))
                if "live_weights" in state:
                    load_full_state_dict(self.model, state["live_weights"])
            if state is not None:
                written = read_checkpoint_config(path)  # an older format's parameter names are migrated
                state["optimizer"] = migrate_optimizer_state(state["optimizer"], written["task"],
                                                             written["format_version"])
                self.position = restore_train_state(self.model, self.step_fn, state)
        log.info("resuming at epoch %d, step %d", self.position["epoch"], self.position["step"])
        return True

    # -- reading ----------------------------------------------------------------------------------------------
    def _epoch_reader(self, epoch: int, skip_steps: int) -> BackgroundIterator:
        cfg, ctx = self.cfg, self.ctx
        shards = rank_shards(self.plans.shards(epoch), ctx.rank, ctx.world)
        return BackgroundIterator(lambda: rank_batches(
            shards, self.task.columns, self.task.transform_batch, cfg.micro_batch_size, cfg.shuffle_buffer,
            seed=step_seed(cfg.seed, ctx.rank, epoch), epoch=epoch, skip=skip_steps * cfg.grad_accum_steps,
            loader_workers=cfg.loader_workers, open_samples=self.open_samples,
        ))

    # -- the loop ---------------------------------------------------------------------------------------------
    def run(self) -> bool:
        """Train to the end or to a stop request; return whether it stopped early (after checkpointing)."""
        cfg = self.cfg
        if cfg.sample_log_dir:
            Path(cfg.sample_log_dir).mkdir(parents=True, exist_ok=True)
            self.sample_log = open(Path(cfg.sample_log_dir) / f"rank{self.ctx.rank}.log", "a")
            # Each start of the loop is marked: a resume that replays no step is still seen as one.
            self.sample_log.write(f"# start at step {self.position['step']}\n")
        log.info("rank %d of %d on %s, device %s", self.ctx.rank, self.ctx.world, socket.gethostname(), self.ctx.device)
        next_reader = None
        stopped = False
        for epoch in range(self.position["epoch"], cfg.epochs + 1):
            done = self.position["epoch_step"] if epoch == self.position["epoch"] else 0
            batches = next_reader or self._epoch_reader(epoch, done)
            # The next epoch's reader starts now, in the background, so that its start-up overlaps this epoch.
            next_reader = self._epoch_reader(epoch + 1, 0) if epoch < cfg.epochs else None
            stopped = self._train_epoch(epoch, done, batches)
            batches.close()
            if stopped:
                if next_reader:
                    next_reader.close()
                break
        if self.sample_log:
            self.sample_log.close()
        if self.tracker:
            gap = self.tracker.flush()
            if gap["undelivered"] or gap["delivered_late"]:
                log.warning("tracking gap: %(undelivered)d metric values never reached MLflow, "
                            "%(delivered_late)d arrived late", gap)
        if stopped and self.ctx.rank == 0:
            log.warning("stop requested: checkpointed at step %d; run again with the same name to resume",
                        self.position["step"])
        return stopped

    def _train_epoch(self, epoch: int, done: int, batches: Iterator[dict]) -> bool:
        """One epoch from step ``done``; return whether a stop was requested (after checkpointing)."""
        cfg, ctx = self.cfg, self.ctx
        self.model.train()
        steps_this_epoch = self.plans.steps(epoch, ctx.world, self.per_rank_step)
        meter = EpochMeter()
        groups = _grouped(batches, cfg.grad_accum_steps)
        step = self.position["step"]
        stopping = False
        while done < steps_this_epoch:
            waited = time.perf_counter()
            micro_batches = next(groups, None)
            meter.wait(time.perf_counter() - waited)
            if micro_batches is None:
                break
            ids = [int(i) for batch in micro_batches for i in batch.pop(SAMPLE_ID)]
            torch.manual_seed(step_seed(cfg.seed, ctx.rank, step))
            tokens = sum(self.task.count_tokens(batch) for batch in micro_batches)
            metrics = self.step_fn(micro_batches)
            if self.ema:
                self.ema.update()
            step, done = step + 1, done + 1
            if self.sample_log:  # after the step: the log lists what was trained on
                self.sample_log.write(f"{epoch} {step} {' '.join(map(str, ids))}\n")
                self.sample_log.flush()
            ctx.count_step()
            meter.step(len(ids), tokens, metrics["loss"])
            self.position = {"epoch": epoch, "epoch_step": done, "step": step}
            self._log_step(metrics, step)
            stopping = ctx.stop_requested()
            if done >= steps_this_epoch:
                break
            trigger = self.policy.mid_epoch_trigger(step, stopping, self._preempted(step))
            if trigger:
                evaluated = self.evaluate(step) if self.policy.evaluate_now(step) else {}
                self.save({"train_loss": metrics["loss"], "trigger": trigger}, evaluated)
            if stopping:
                return True
        self.position = {"epoch": epoch + 1, "epoch_step": 0, "step": step}
        epoch_metrics = meter.metrics(ctx.device)
        evaluated = self.evaluate(step) if self.policy.has_eval else {}
        if ctx.rank == 0:
            if self.tracker:
                self.tracker.log_metrics({**epoch_metrics, "epoch": epoch}, step)
            log.info("epoch %d/%d  step %d  loss %.4f  %.0f samples/s  data wait %.0f%%%s", epoch, cfg.epochs, step,
                     epoch_metrics["train_loss"], epoch_metrics["samples_per_s"],
                     100 * epoch_metrics["data_wait_fraction"],
                     "".join(f"  {k} {v:.4g}" for k, v in evaluated.items() if not k.startswith("num_")))
        self.save({**epoch_metrics, "trigger": "epoch"}, evaluated)
        return stopping

    def _log_step(self, metrics: dict[str, float], step: int) -> None:
        if self.tracker and step % self.cfg.log_every == 0:
            self.tracker.log_metrics(metrics, step)
        if self.sampler and self.sampler.due():
            self.tracker.log_metrics(self.sampler.sample(), step)

    def _preempted(self, step: int) -> bool:
        every = self.cfg.preemption_check_every_steps
        if not every or step % every:
            return False
        preempted = self.ctx.preempted()
        if preempted and self.ctx.rank == 0:
            log.warning("a node of this run is being preempted: checkpointing at step %d", step)
        return preempted

    # -- evaluation -------------------------------------------------------------------------------------------
    def evaluate(self, step: int) -> dict[str, float]:
        """The task's evaluation over this rank's share of the held-out shards, reduced over all ranks."""
        ctx, model = self.ctx, self.model
        model.eval()
        try:
            with self._evaluated_weights():
                metrics, pictures, documents = self._evaluate(model)
        finally:
            model.train()
        if ctx.rank == 0 and self.tracker:
            self.tracker.log_metrics(metrics, step)
            for name, picture in pictures.items():
                self.tracker.log_image(picture, f"evaluation/{name}step_{step:07d}.{'png' if name else 'jpg'}")
            for name, document in documents.items():
                self.tracker.log_document(document, f"evaluation/{name}/step_{step:07d}.json")
        return metrics

    def _evaluate(self, model: torch.nn.Module) -> tuple[dict[str, float], dict[str, Any], dict[str, Any]]:
        """Metrics, pictures by name prefix ("" for the task's picture of samples) and documents by name (the
        last two only when the run is tracked, and the whole evaluation's only on rank 0)."""
        cfg, ctx, task = self.cfg, self.ctx, self.task
        context = task.eval_begin(model, self.facts)
        shards = self.eval_refs[ctx.rank::ctx.world]
        batches = rank_batches(shards, task.eval_columns, lambda b, rngs: task.eval_transform(b),
                               cfg.eval_batch_size, shuffle_window=0, seed=0, drop_last=False,
                               loader_workers=0, open_samples=self.open_samples)
        outputs = gather_outputs(step_outputs(task, model, ({k: v for k, v in b.items() if k != SAMPLE_ID}
                                                            for b in batches), context, ctx.device))
        metrics = task.eval_reduce(outputs, self.facts)
        if not self.spec.get("tracking"):
            return metrics, {}, {}
        pictures: dict[str, Any] = {}
        picture = task.visualize(model, self._pictured(), self.facts)
        if isinstance(picture, dict):
            pictures.update({f"{name}/": image for name, image in picture.items()})
        elif picture is not None:
            pictures[""] = picture
        documents: dict[str, Any] = {}
        if ctx.rank == 0:
            pictures.update({f"{name}/": image for name, image in task.eval_pictures(outputs, self.facts).items()})
            documents = task.eval_documents(outputs, self.facts)
        return metrics, pictures, documents

    def _pictured(self) -> list[dict[str, bytes]]:
        """The first held-out samples, the same at every evaluation (read once)."""
        if self._picture_samples is None:
            samples: list[dict[str, bytes]] = []
            for ref in self.eval_refs:
                for sample in self.open_samples(ref.url, self.task.eval_columns):
                    samples.append(sample)
                    if len(samples) == PICTURE_SAMPLES:
                        break
                if len(samples) == PICTURE_SAMPLES:
                    break
            self._picture_samples = samples
        return self._picture_samples

    # -- checkpoints ------------------------------------------------------------------------------------------
    def save(self, metrics: dict[str, Any], evaluated: dict[str, float] | None = None) -> None:
        """Report ``metrics`` (and an evaluation's) with a checkpoint of the current position (a collective)."""
        with self._evaluated_weights():
            weights = full_state_dict(self.model)  # collectives under FSDP: every rank takes part
            if self.ema:  # on CPU the state dict shares the model's storage, which gets the live weights back
                weights = {k: v.clone() for k, v in weights.items()}
        state = capture_train_state(self.model, self.step_fn, self.position)
        if self.ema:
            state["live_weights"] = full_state_dict(self.model)
            state["ema_updates"] = self.ema.updates
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint_dir = None
            if self.ctx.rank == 0:
                save_checkpoint_state(tmp, weights, self.task.name, self.task.config_dict(), self.task.files,
                                      position=self.position)
                save_train_state(tmp, state)
                checkpoint_dir = tmp
            self.ctx.report({**self.policy.report_metrics(metrics, evaluated or {}), **self.position}, checkpoint_dir)
        self.policy.checkpointed()

    @property
    def plain_model(self) -> torch.nn.Module:
        return unwrap(self.model)
