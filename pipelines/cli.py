"""The ``tvp`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from components.errors import TvpError
from pipelines.console import Console
from pipelines.step_outputs import write_step_outputs

EXAMPLES = """\
examples:
  tvp demo                                  run the whole demo in ./tvp-demo
  tvp demo --workdir /tmp/d --set train.epochs=3
  tvp ingest image-text pairs.parquet --output shards/ --image-size 224
  tvp train clip --data tvp-demo/shards/train --eval tvp-demo/shards/heldout --name nightly --promote-if zero_shot_top1
  tvp finetune clip --from models:/tvp-demo-clip@latest --data tvp-demo/shards/train --eval tvp-demo/shards/heldout
  tvp evaluate models:/tvp-demo-clip@latest --data tvp-demo/shards/heldout
  tvp promote models:/tvp-demo-clip@latest --metric zero_shot_top1
  tvp filter clip-score tvp-demo/shards/train --model models:/tvp-demo-clip@latest --keep-fraction 0.3 --output top30
  RAY_ADDRESS=127.0.0.1:6379 tvp demo       use a running Ray cluster
  MLFLOW_TRACKING_URI=http://127.0.0.1:5000 tvp demo   log to an MLflow server
"""


def _add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=None,
                        help="Ray cluster address (default: $RAY_ADDRESS, else a new local instance on 127.0.0.1)")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tvp",
        description="Data-to-model pipelines for transformer models of vision and language, on Ray and MLflow.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show library output (Ray, Ray Train's workers, MLflow) live on stderr as well as in the "
                             "log file that each command names (also accepted after the command)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="the main job, end to end, on embedded data",
        description=(
            "Build an image-text table from scikit-learn's digits, shard it with Ray Data, train a small CLIP "
            "with Ray Train, track and register it in MLflow, and report zero-shot accuracy on held-out images "
            "with prompts unseen in training. Runs against an in-process Ray and a SQLite MLflow store in the "
            "work directory unless RAY_ADDRESS/--address and MLFLOW_TRACKING_URI name real services."
        ),
    )
    demo.add_argument("--workdir", default="tvp-demo", help="where tables, shards, runs and checkpoints go (default: ./tvp-demo)")
    _add_config(demo)
    _add_address(demo)

    demo_data = commands.add_parser(
        "demo-data",
        help="write the demo's embedded image-text tables (scikit-learn's digits), for pipelines to ingest",
        description=("Write the digits as PNG files with train.parquet and heldout.parquet tables (columns url, "
                     "caption, label) into --output: the demo's own data, for pipelines that start with "
                     "tvp ingest image-text. The same arguments always give the same files."),
    )
    demo_data.add_argument("--output", required=True, help="folder for the images and tables")
    demo_data.add_argument("--source-size", type=int, default=64, help="side of the PNGs (default: %(default)s)")
    demo_data.add_argument("--heldout-fraction", type=float, default=0.2,
                           help="share of images in the held-out table (default: %(default)s)")
    demo_data.add_argument("--seed", type=int, default=0, help="split and caption choice (default: %(default)s)")

    ingest = commands.add_parser("ingest", help="turn raw sources into WebDataset shard sets")
    sources = ingest.add_subparsers(dest="source", required=True, metavar="SOURCE")
    image_text = sources.add_parser(
        "image-text",
        help="an image-text table (image URL or path + caption) → shards, downloading as needed",
        description=(
            "Read a table of image locations (http(s):// URLs; file:// URLs and paths, read only inside the table's "
            "own folder and any --allow-local-root) and captions: Parquet, CSV, TSV or JSON Lines, each optionally gzipped, a file or a folder "
            "of files. Download (many requests per task, with timeouts, retries and X-Robots-Tag opt-outs "
            "honoured; never to private, loopback, link-local or metadata addresses unless --allow-address names "
            "them), decode, filter, resize and re-encode every image with Ray Data; drop later copies of the same "
            "image; write NNNNN.tar, NNNNN.parquet (every row with its status) and NNNNN_stats.json per shard, then "
            "sizes.json and manifest.json. Rerunning with the same arguments completes missing shards only."
        ),
    )
    image_text.add_argument("table", help="a table file or a folder of them (local path, file:// or s3:// URI)")
    image_text.add_argument("--output", required=True, help="folder for the shard set")
    table = image_text.add_argument_group("input table")
    table.add_argument("--format", default="auto", choices=["auto", "parquet", "csv", "tsv", "jsonl"],
                       help="table format (default: from each file's extension)")
    table.add_argument("--url-column", default="url", help="column with the image location (default: url; LAION: URL)")
    table.add_argument("--caption-column", default="caption",
                       help="column with the caption (default: caption; LAION: TEXT)")
    table.add_argument("--no-header", action="store_true", help="csv/tsv files have no header line (CC3M)")
    table.add_argument("--column-names", default=None,
                       help="comma-separated column names for csv/tsv files (CC3M: caption,url)")
    from typing import get_args

    from components.data.ingest import ingest_defaults as defaults  # imports nothing: the parser stays fast

    images = image_text.add_argument_group("images and filters")
    images.add_argument("--image-size", type=int, default=defaults.IMAGE_SIZE,
                        help="output side in pixels (default: %(default)s)")
    images.add_argument("--resize-mode", default=defaults.RESIZE_MODE, choices=get_args(defaults.ResizeMode),
                        help="border: fit and pad; keep_ratio: shorter side to size; keep_ratio_largest: longer side "
                             "to size; center_crop: fill and crop; no: keep (default: %(default)s)")
    images.add_argument("--jpeg-quality", type=int, default=defaults.JPEG_QUALITY,
                        help="JPEG quality of stored images (default: %(default)s)")
    images.add_argument("--min-image-size", type=int, default=defaults.MIN_IMAGE_SIZE,
                        help="refuse images with a shorter side (default: %(default)s)")
    images.add_argument("--max-aspect-ratio", type=float, default=defaults.MAX_ASPECT_RATIO,
                        help="refuse images longer than this many times their width or height (default: %(default)s, "
                             "off)")
    images.add_argument("--max-pixels", type=int, default=defaults.MAX_PIXELS,
                        help="refuse images with more pixels, before decoding them (default: %(default)s)")
    images.add_argument("--min-caption-length", type=int, default=defaults.MIN_CAPTION_LENGTH,
                        help="characters (default: %(default)s)")
    images.add_argument("--max-caption-length", type=int, default=defaults.MAX_CAPTION_LENGTH,
                        help="characters (default: no limit)")
    images.add_argument("--no-dedup", action="store_true",
                        help="keep later copies of the same image (by default the first in input order is kept)")
    download = image_text.add_argument_group("downloading")
    download.add_argument("--timeout", type=float, default=defaults.FETCH_TIMEOUT_S,
                          help="seconds per request, body included (default: %(default)s)")
    download.add_argument("--retries", type=int, default=defaults.FETCH_RETRIES,
                          help="retries of timeouts, resets and 5xx (default: %(default)s)")
    download.add_argument("--user-agent", default=None, help="User-Agent header (default: tvp's)")
    download.add_argument("--ignore-opt-out", action="store_true",
                          help="download even where X-Robots-Tag says noai, noimageai, noindex or noimageindex")
    download.add_argument("--allow-address", action="append", default=[], metavar="IP_OR_CIDR",
                          help="let downloads reach this private/loopback address or network (repeatable)")
    download.add_argument("--allow-local-root", action="append", default=[], metavar="DIR",
                          help="let image locations name files inside this folder, besides the table's own folder "
                               "(repeatable; on a cluster, a folder every node sees; a table in object storage reads "
                               "no local file without one)")
    download.add_argument("--max-bytes", type=int, default=defaults.MAX_BYTES,
                          help="largest image accepted, downloaded or local, in bytes (default: %(default)s)")
    work = image_text.add_argument_group("work")
    work.add_argument("--rows-per-shard", type=int, default=defaults.ROWS_PER_SHARD,
                      help="input rows per shard (default: %(default)s)")
    work.add_argument("--processes", type=int, default=None,
                      help="shards processed at once (default: the Ray cluster's CPUs)")
    work.add_argument("--threads", type=int, default=defaults.THREADS,
                      help="rows fetched and processed at once per shard (default: %(default)s)")
    work.add_argument("--decode-budget-mb", type=int, default=defaults.DECODE_BUDGET_MB,
                      help="memory for decoded pixels per shard task, in MB; images wait for room, so a task's "
                           "peak stays near it (default: %(default)s)")
    _add_address(image_text)
    _add_text_table_parser(sources)
    _add_wikipedia_parser(sources)
    _add_imagefolder_parser(sources)
    _add_coco_parser(sources)

    export = commands.add_parser(
        "export",
        help="write a registered model (or a checkpoint) in Hugging Face's layout",
        description=("Write MODEL_URI's weights and assets in the layout other libraries load: for BERT, "
                     "model.safetensors + config.json + vocab.txt + tokenizer_config.json, which transformers' "
                     "from_pretrained reads. The other way in is tvp finetune bert --from HF_FOLDER."),
    )
    export.add_argument("model_uri", metavar="MODEL_URI",
                        help="models:/NAME@ALIAS, models:/NAME/VERSION or a checkpoint folder")
    export.add_argument("--output", required=True, help="a new (or empty) folder for the exported files")
    _add_workdir(export)

    split = commands.add_parser(
        "split-articles",
        help="split a document shard set by article, and label its sentences by category (small sets)",
        description=("Read the articles of a document shard set (tvp ingest wikipedia) and write OUTPUT/train and "
                     "OUTPUT/heldout (documents split by a stable hash of the page id) and "
                     "OUTPUT/categories-{train,heldout}.csv (text, label): each sentence of an article labelled by "
                     "one of its categories, the most common first, the same article split. For tvp train bert "
                     "--eval and tvp finetune bert. Reads everything in one process: for sample-sized sets."),
    )
    split.add_argument("docs", metavar="DOCS", help="the document shard set")
    split.add_argument("--output", required=True, help="folder for the splits and tables")
    split.add_argument("--heldout-fraction", type=float, default=0.15,
                       help="share of articles held out (default: %(default)s)")
    split.add_argument("--classes", type=int, default=4, help="categories in the labelled tables (default: %(default)s)")
    split.add_argument("--seed", type=int, default=0, help="which articles are held out (default: %(default)s)")

    inspect = commands.add_parser(
        "inspect",
        help="counts, sizes and failures of a shard set, and a contact sheet of its pictures",
        description=("Print a shard set's counts, sizes and failures by category (from its stats files, so an "
                     "unfinished set can be inspected too) and write a contact sheet: a grid of sample pictures "
                     "with their captions. A set made by another tool (img2dataset's layout, no manifest.json) "
                     "is summarized from its index, made with --index."),
    )
    inspect.add_argument("shards", help="the shard set: a folder or an s3:// or gs:// URI")
    inspect.add_argument("--contact-sheet", default=None,
                         help="where to write the contact sheet (default: SHARDS/contact_sheet.jpg)")
    inspect.add_argument("--samples", type=int, default=24, help="pictures on the contact sheet (default: 24)")
    inspect.add_argument("--index", action="store_true",
                         help="index a set made by another tool now (sample counts, content hash): written beside "
                              "its shards, or under WORKDIR/shard_index where that location is read-only")
    inspect.add_argument("--workdir", default="tvp-demo",
                         help="work directory whose shard_index/ holds indexes of read-only sets (default: ./tvp-demo)")

    from components.tasks.registry import task_names  # names only: no task module is imported

    train = commands.add_parser(
        "train",
        help="train a model on shard sets with Ray Train, track it and register it",
        description=(
            "Train TASK on one or more shard sets (folders or s3:// / gs:// URIs, tvp's or another tool's such as "
            "img2dataset's) with the shared Ray Train loop, log one MLflow run, evaluate on --eval in the workers "
            "after every epoch, and register the final checkpoint as a new version. Run again with the same "
            "--name to resume an interrupted run from its latest checkpoint, in the same MLflow run. Settings come "
            "from a preset (default: TASK-tiny; sections task, train, tracking) and --set."
        ),
        epilog=f"tasks: {', '.join(task_names())}",
    )
    train.add_argument("task", metavar="TASK", choices=task_names(), help=f"the model family: {', '.join(task_names())}")
    _add_training_inputs(train, resume_help="run name; the same name resumes (default: TASK-<time>)")
    _add_config(train, default=None, default_help="TASK-tiny")
    _add_workdir(train)
    _add_address(train)

    finetune = commands.add_parser(
        "finetune",
        help="continue training a registered model (or a checkpoint folder) on shard sets",
        description=(
            "Start from MODEL_URI (models:/NAME@ALIAS, models:/NAME/VERSION or a checkpoint folder): its weights, "
            "task settings and assets (CLIP's tokenizer) are the starting point, adapted where the config differs. "
            "Then train as tvp train does; the run and the registered version record the parent (model, version, "
            "run) as tvp.parent_* tags. Settings come from a preset (default: TASK-finetune) and --set."
        ),
        epilog=f"tasks: {', '.join(task_names())}",
    )
    finetune.add_argument("task", metavar="TASK", choices=task_names(), help=f"the model family: {', '.join(task_names())}")
    finetune.add_argument("--from", dest="parent", required=True, metavar="MODEL_URI",
                          help="models:/NAME@ALIAS, models:/NAME/VERSION or a checkpoint folder")
    finetune.add_argument("--or-from", dest="fallback", metavar="MODEL_URI|scratch",
                          help="where to start when --from names no registered version yet (no champion so far): "
                               "another model URI, or scratch")
    _add_training_inputs(finetune, resume_help="run name; the same name resumes (default: TASK-finetune-<time>)")
    _add_config(finetune, default=None, default_help="TASK-finetune")
    _add_workdir(finetune)
    _add_address(finetune)

    evaluate = commands.add_parser(
        "evaluate",
        help="evaluate a registered model version on a shard set and record the metrics on the version",
        description=(
            "Download the checkpoint behind MODEL_URI, run its task's own evaluation (for CLIP, what its "
            "task.evaluation names: zero-shot, retrieval, linear probe) "
            "on the shard set, print the metrics and store them as eval.* tags on the version, with the shard "
            "set's content hash."
        ),
    )
    evaluate.add_argument("model_uri", metavar="MODEL_URI", help="models:/NAME@ALIAS or models:/NAME/VERSION")
    evaluate.add_argument("--data", required=True, metavar="SHARDS",
                          help="a labelled shard set: folder, s3:// or gs://, tvp's or another tool's")
    evaluate.add_argument("--actors", type=int, default=None,
                          help="Ray Data actors that each hold the model (default: half the cluster's CPUs)")
    _add_workdir(evaluate)
    _add_address(evaluate)

    promote = commands.add_parser(
        "promote",
        help="move the champion alias to a version if its evaluation beats the champion's",
        description=(
            "Compare MODEL_URI's recorded evaluation of --metric with the current champion's (measured on the "
            "same data) and move the alias only if it is strictly better. The decision and its reason are "
            "written on the version's 'promotion' tag either way."
        ),
    )
    promote.add_argument("model_uri", metavar="MODEL_URI", help="models:/NAME@ALIAS or models:/NAME/VERSION")
    promote.add_argument("--metric", required=True, help="an evaluated metric, e.g. zero_shot_top1")
    promote.add_argument("--mode", choices=["max", "min"], default="max", help="higher or lower is better (default: max)")
    promote.add_argument("--alias", default="champion", help="the alias to move (default: champion)")
    _add_workdir(promote)

    _add_filter_parser(commands)

    select = commands.add_parser(
        "select-shards",
        help="list the shard sets under a data root that a lineage of runs has not trained on yet",
        description=("Look at the shard sets directly under ROOT (a folder, s3:// or gs://) and print those whose "
                     "content hash no finished run tagged tvp.lineage=NAME recorded: what continued pretraining "
                     "should train on next. Sets without a manifest (still being written) are skipped. As a "
                     "pipeline step it hands on locations (a list), content_hashes and count."),
    )
    select.add_argument("root", metavar="ROOT", help="the folder whose sub-folders are shard sets")
    select.add_argument("--lineage", required=True, metavar="NAME", help="the runs' tvp.lineage tag (see tvp train)")
    _add_workdir(select)

    run = commands.add_parser(
        "run",
        help="run a pipeline (a YAML file of tvp steps), or resume it by its run name",
        description=(
            "Run PIPELINE's steps in order, each a tvp command whose arguments may refer to parameters "
            "(${params.NAME}, set with --param) and to earlier steps' outputs (${steps.STEP.OUTPUT}). Every step's "
            "status, outputs, timing and MLflow run are recorded in one MLflow run (experiment tvp-pipelines) "
            "named --name. Run again with the same --name to resume: finished steps are skipped, the first "
            "unfinished one runs again (a training step continues from its checkpoint, in its own MLflow run)."
        ),
        epilog=f"examples shipped with tvp (give the name): {', '.join(_example_pipelines())}",
    )
    run.add_argument("pipeline", metavar="PIPELINE", help="a pipeline YAML file, or the name of a shipped example")
    run.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                     help="a value for one of the pipeline's parameters (repeatable)")
    run.add_argument("--name", help="the pipeline run's name; the same name resumes (default: PIPELINE-<time>)")
    run.add_argument("--workdir", default="tvp-demo",
                     help="work folder of the run and its steps, whose MLflow store is used unless "
                          "MLFLOW_TRACKING_URI is set (default: ./tvp-demo)")
    _add_address(run)

    submit = commands.add_parser(
        "submit",
        help="send a tvp command or pipeline to a Ray cluster as a job",
        description=(
            "Submit COMMAND (any tvp command, e.g. tvp run PIPELINE) to the Ray cluster whose Jobs API is at "
            "--address (the dashboard, http://HEAD:8265; default $RAY_ADDRESS). The job carries the project's code "
            "and the config and pipeline files the command names, never a virtual environment, work folders or "
            "data, and MLFLOW_TRACKING_URI as its only environment variable: secrets come from the cluster's own "
            "environment. A cluster with nodes on other machines needs a tracking server and data in object "
            "storage; a local store or folder is refused before anything is sent."
        ),
        epilog="example: tvp submit --address http://127.0.0.1:8265 --wait -- tvp run clip-demo --param epochs=2",
    )
    submit.add_argument("--address", default=None, help="the cluster's Jobs API (default: $RAY_ADDRESS)")
    submit.add_argument("--wait", action="store_true", help="show the job's log as it runs and exit with its outcome")
    submit.add_argument("--submission-id", default=None,
                        help="the job's id; submitting an id that exists does nothing (default: one Ray makes)")
    submit.add_argument("job", nargs="*", metavar="-- COMMAND", help="the tvp command to run, after --")

    jobs = commands.add_parser("jobs", help="list, show, follow and stop jobs on a Ray cluster",
                               description="Manage the jobs of the Ray cluster at --address (default: $RAY_ADDRESS).")
    jobs_actions = jobs.add_subparsers(dest="action", required=True, metavar="ACTION")
    jobs_list = jobs_actions.add_parser("list", help="every job, newest last")
    _add_jobs_address(jobs_list)
    for action, text in (("show", "one job's status, entrypoint and timing"), ("logs", "one job's log"),
                         ("stop", "stop a job: its command gets SIGTERM (training checkpoints first)")):
        sub = jobs_actions.add_parser(action, help=text)
        sub.add_argument("job_id", metavar="JOB_ID", help="the submission id tvp submit printed")
        if action == "logs":
            sub.add_argument("--follow", action="store_true", help="keep showing the log until the job ends")
        _add_jobs_address(sub)

    schedule = commands.add_parser(
        "schedule", help="run tvp commands or pipelines as Ray jobs on a cron schedule",
        description=("Schedules live in a database (default: WORKDIR/schedules.db, or $TVP_SCHEDULE_STORE, any "
                     "SQLAlchemy URL) as plain JSON rows; tvp schedule serve is the process that submits each "
                     "tick as a job, with an id made of the schedule and the tick's time, so a tick is "
                     "submitted once even across scheduler restarts."),
        epilog=('example: tvp schedule add nightly --cron "0 2 * * *" --address http://127.0.0.1:8265 -- '
                "tvp run clip-continue --param data_root=s3://b/new"),
    )
    schedule_actions = schedule.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = schedule_actions.add_parser("add", help="add a schedule: a cron expression and the tvp command it runs")
    add.add_argument("name", metavar="NAME", help="the schedule's name (letters, digits, - and _)")
    add.add_argument("--cron", required=True,
                     help="minute hour day month weekday (crontab's meaning), or six fields with seconds first")
    add.add_argument("--timezone", default="UTC", help="time zone of the cron fields (default: UTC)")
    add.add_argument("--overlap", choices=["skip", "allow"], default="skip",
                     help="a tick while the previous tick's job runs: skip it, or allow both (default: skip)")
    add.add_argument("--address", default=None,
                     help="the Jobs API the ticks submit to, http://HEAD:8265 (default: $RAY_ADDRESS now)")
    add.add_argument("job", nargs="*", metavar="-- COMMAND", help="the tvp command each tick runs, after --")
    for action, text in (("list", "every schedule, its next tick and its latest outcome"),
                         ("pause", "stop ticking (a running scheduler notices within seconds)"),
                         ("resume", "tick again"), ("remove", "delete a schedule (its history stays)"),
                         ("history", "a schedule's ticks: due time, job id, outcome and MLflow run"),
                         ("serve", "the scheduler: submits due ticks as jobs until stopped")):
        sub = schedule_actions.add_parser(action, help=text)
        if action in ("pause", "resume", "remove", "history"):
            sub.add_argument("name", metavar="NAME")
        sub.add_argument("--store", default=None,
                         help="the schedule database, a SQLAlchemy URL (default: $TVP_SCHEDULE_STORE, else "
                              "sqlite:///WORKDIR/schedules.db)")
        sub.add_argument("--workdir", default="tvp-demo", help="where the default store lives (default: ./tvp-demo)")
    from pipelines.ui import add_ui_parser

    add_ui_parser(commands)
    add.add_argument("--store", default=None, help="the schedule database (see tvp schedule list --help)")
    add.add_argument("--workdir", default="tvp-demo", help="where the default store lives (default: ./tvp-demo)")
    return parser


def _add_filter_parser(commands: argparse._SubParsersAction) -> None:
    filters = commands.add_parser("filter", help="keep the samples of a shard set that pass a filter")
    kinds = filters.add_subparsers(dest="filter", required=True, metavar="FILTER")
    clip = kinds.add_parser(
        "clip-score",
        help="keep the image-text pairs a registered CLIP scores highly (LAION / DataComp curation)",
        description=(
            "Score every image-text pair (.jpg + .txt) of SHARDS with the registered CLIP behind MODEL_URI, in a "
            "pool of Ray Data actors that each hold the model, and write the pairs that pass to --output as a "
            "new shard set: same sample keys, every member kept, the score added to each sample's .json as "
            "clip_score. The score is the cosine similarity of the unit-norm image and text embeddings "
            "(DataComp's CLIP score). --keep-fraction F keeps the top F of the set: the threshold is the "
            "(1 - F) quantile of the scores, the k-th highest with k = ceil(F x N), and pairs tied with it are "
            "all kept. The manifest records the threshold, the kept fraction (kept / scored), the input set's "
            "content hash and the model's URI and version. Run the same command again to resume."
        ),
    )
    clip.add_argument("shards", metavar="SHARDS", help="an image-text shard set: folder, s3:// or gs://")
    clip.add_argument("--model", required=True, metavar="MODEL_URI",
                      help="a registered CLIP: models:/NAME@ALIAS or models:/NAME/VERSION")
    rule = clip.add_mutually_exclusive_group(required=True)
    rule.add_argument("--min-score", type=float, metavar="S", help="keep pairs scoring at least S")
    rule.add_argument("--keep-fraction", type=float, metavar="F",
                      help="keep the top F of the pairs, 0 < F <= 1 (DataComp keeps 0.3)")
    clip.add_argument("--output", required=True, metavar="DIR", help="where the filtered set goes (folder, s3://, gs://)")
    clip.add_argument("--actors", type=int, default=None,
                      help="Ray Data actors that each hold the model (default: half the cluster's CPUs)")
    clip.add_argument("--batch-size", type=int, default=256, help="pairs scored per batch (default: 256)")
    clip.add_argument("--gpus-per-actor", type=float, default=0.0,
                      help="accelerators per actor; 0 (the default) scores on CPUs")
    _add_workdir(clip)
    _add_address(clip)


def _add_text_table_parser(sources: argparse._SubParsersAction) -> None:
    text_table = sources.add_parser(
        "text-table",
        help="a labelled text table (text + label) → classification shards, for tvp finetune bert",
        description=("Read a table with a text column and a label column (Parquet, CSV, TSV or JSON Lines, "
                     "optionally gzipped; a file or a folder of files) and write shards of .txt (the text) and "
                     ".json (label id and label_name) samples, the classes listed in manifest.json. Integer labels "
                     "keep their values as ids; other labels are names, numbered in sorted order. Empty texts and "
                     "unlabelled rows are counted and skipped. tvp train/finetune also take such a table directly "
                     "as --data or --eval and shard it into the work directory first."),
    )
    text_table.add_argument("table", help="a table file or a folder of them (local path, file:// or s3:// URI)")
    text_table.add_argument("--output", required=True, help="folder for the shard set")
    text_table.add_argument("--text-column", default="text", help="column with the text (default: %(default)s)")
    text_table.add_argument("--label-column", default="label", help="column with the label (default: %(default)s)")
    text_table.add_argument("--format", default="auto", choices=["auto", "parquet", "csv", "tsv", "jsonl"],
                            help="table format (default: from each file's extension)")
    text_table.add_argument("--rows-per-shard", type=int, default=10_000,
                            help="input rows per shard (default: %(default)s)")
    _add_address(text_table)



def _add_wikipedia_parser(sources: argparse._SubParsersAction) -> None:
    wikipedia = sources.add_parser(
        "wikipedia",
        help="a MediaWiki pages-articles dump (.xml, .xml.bz2, multistream) → document shards, one per article",
        description=("Stream a MediaWiki export (.xml, .xml.bz2, or the multistream .xml.bz2 with its index, whose "
                     "bz2 streams the shard tasks then decompress in parallel) and write one sample per article "
                     "(namespace 0): .txt, its prose one sentence per line (templates, tables, references, files, "
                     "categories, math and markup removed; link text kept), and .json (id, revision_id, title, "
                     "url_title, url, categories). Redirects, empty pages and other namespaces are skipped and "
                     "counted. Rerunning with the same arguments completes missing shards only; a folder made from "
                     "another dump is refused. --sample ingests the embedded dump sample (gensim's test data: 106 "
                     "articles, 100 redirects)."),
    )
    wikipedia.add_argument("dump", nargs="?", metavar="DUMP", help="the dump file (omit with --sample)")
    wikipedia.add_argument("--sample", action="store_true",
                           help="ingest the embedded English dump sample instead of a DUMP")
    wikipedia.add_argument("--output", required=True, help="folder for the shard set")
    wikipedia.add_argument("--index", default=None,
                           help="the multistream index (OFFSET:ID:TITLE lines, .txt or .txt.bz2; default: the "
                                "...-multistream-index.txt.bz2 beside a ...-multistream.xml.bz2 DUMP, if there)")
    wikipedia.add_argument("--pages-per-shard", type=int, default=2000,
                           help="pages per shard, rounded to whole bz2 streams of a multistream dump "
                                "(default: %(default)s)")
    wikipedia.add_argument("--processes", type=int, default=None,
                           help="shards processed at once (default: the Ray cluster's CPUs)")
    _add_address(wikipedia)


def _add_imagefolder_parser(sources: argparse._SubParsersAction) -> None:
    from typing import get_args

    from components.data.ingest import ingest_defaults as defaults  # imports nothing: the parser stays fast

    imagefolder = sources.add_parser(
        "imagefolder",
        help="a class-per-folder image tree (ImageFolder layout) → classification shards, with a held-out set",
        description=("Read ROOT/CLASS/.../IMAGE files (torchvision's ImageFolder layout; a local folder or an s3:// "
                     "or gs:// URI): every file under a class folder, at any depth, belongs to that class; classes "
                     "are numbered in sorted order of their folder names (which may hold spaces); hidden files "
                     "and folders are ignored, files directly in ROOT are reported and not ingested. Write "
                     "OUTPUT/train (and OUTPUT/heldout with --heldout-fraction or --heldout-root): samples of "
                     ".jpg (resized as tvp ingest image-text does), .cls (the class index) and .json (path, label, "
                     "class, original width and height), keyed by the zero-padded file position; the class map "
                     "in each manifest.json as classes. Corrupt and non-image files are counted by reason and "
                     "skipped. Rerunning with the same arguments completes missing shards only. --sample "
                     "ingests the embedded digits (scikit-learn's 1,797 handwritten digits as 64-px PNGs in ten "
                     "class folders, written to OUTPUT/images), a fifth of each class held out."),
        epilog="example: tvp ingest imagefolder --sample --output digits --image-size 32 --images-per-shard 200",
    )
    imagefolder.add_argument("root", nargs="?", metavar="ROOT",
                             help="the folder whose sub-folders are the classes (omit with --sample)")
    imagefolder.add_argument("--sample", action="store_true",
                             help="ingest the embedded digits tree instead of a ROOT")
    imagefolder.add_argument("--output", required=True, help="folder (or s3:// URI) for OUTPUT/train and OUTPUT/heldout")
    split = imagefolder.add_argument_group("held-out set (at most one of these)")
    split.add_argument("--heldout-fraction", type=float, default=None, metavar="F",
                       help="hold out this share of each class's files, chosen by a hash of --seed and the file's "
                            "path (default: none; 0.2 with --sample)")
    split.add_argument("--heldout-root", default=None, metavar="ROOT2",
                       help="a separate tree for the held-out set; its classes must be among ROOT's and take "
                            "ROOT's indices")
    split.add_argument("--seed", type=int, default=0, help="which files --heldout-fraction holds out, and the order of files in the shards (default: 0)")
    images = imagefolder.add_argument_group("images")
    images.add_argument("--image-size", type=int, default=defaults.IMAGE_SIZE,
                        help="output side in pixels (default: %(default)s, as tvp ingest image-text)")
    images.add_argument("--resize-mode", default=defaults.RESIZE_MODE, choices=get_args(defaults.ResizeMode),
                        help="border: fit and pad; keep_ratio: shorter side to size; keep_ratio_largest: longer side "
                             "to size; center_crop: fill and crop; no: keep (default: %(default)s)")
    images.add_argument("--jpeg-quality", type=int, default=defaults.JPEG_QUALITY,
                        help="JPEG quality of stored images (default: %(default)s)")
    work = imagefolder.add_argument_group("work")
    work.add_argument("--images-per-shard", type=int, default=1000,
                      help="files per shard (default: %(default)s)")
    work.add_argument("--processes", type=int, default=None,
                      help="shards processed at once (default: the Ray cluster's CPUs)")
    _add_address(imagefolder)


def _add_coco_parser(sources: argparse._SubParsersAction) -> None:
    from components.data.ingest import ingest_defaults as defaults  # imports nothing: the parser stays fast

    coco = sources.add_parser(
        "coco",
        help="a COCO instances file + its image folder → detection shards (.jpg + .json of boxes)",
        description=("Read a COCO instances file (instances_*.json: images, categories, annotations; local or s3:// "
                     "/ gs://) and the images its file_names name, relative to --images. Write SHARDS: samples of "
                     ".jpg (scaled down, boxes alike, only when the longer side exceeds --max-size) and .json "
                     "(image_id, file_name, stored width and height, original_width and original_height, and per "
                     "box: boxes as COCO [x, y, w, h] in stored-image pixels, category_ids as the file gives them, "
                     "iscrowd, areas, annotation_ids); categories and classes ({id: name}) in manifest.json. "
                     "Crowd annotations are kept and flagged; images without annotations are kept. Boxes partly "
                     "outside their image are clipped; degenerate boxes, boxes wholly outside, and annotations of "
                     "unknown images or categories are dropped; missing, corrupt and mis-sized image files are "
                     "skipped: each counted by category in the manifest, never silently. Rerunning with the same "
                     "arguments completes missing shards only. --sample writes the embedded digit scenes (1 to 4 "
                     "of scikit-learn's digits on each 96-px canvas, 1,000 training and 200 held-out scenes) to "
                     "OUTPUT/scenes and ingests them into OUTPUT/train and OUTPUT/heldout."),
        epilog="example: tvp ingest coco annotations/instances_val2017.json --images val2017 --output coco-val",
    )
    coco.add_argument("annotations", nargs="?", metavar="ANNOTATIONS",
                      help="the instances JSON file (omit with --sample)")
    coco.add_argument("--images", default=None, metavar="DIR",
                      help="the folder (or s3:// URI) the file_names are relative to (omit with --sample)")
    coco.add_argument("--sample", action="store_true", help="ingest the embedded digit scenes instead")
    coco.add_argument("--output", required=True,
                      help="folder (or s3:// URI) for the shard set (with --sample: for OUTPUT/train and "
                           "OUTPUT/heldout)")
    images = coco.add_argument_group("images")
    images.add_argument("--max-size", type=int, default=1333,  # coco_shard.MAX_SIZE (importing it here is slow)
                        help="scale an image whose longer side is above this down to it, boxes alike; never "
                             "enlarged; 0 keeps every size (default: %(default)s, DETR's largest input side)")
    images.add_argument("--jpeg-quality", type=int, default=defaults.JPEG_QUALITY,
                        help="JPEG quality of stored images (default: %(default)s)")
    work = coco.add_argument_group("work")
    work.add_argument("--images-per-shard", type=int, default=None,
                      help="images per shard (default: 1000; 200 with --sample, so that its 1,000 training scenes "
                           "make 5 shards for training's workers to share)")
    work.add_argument("--processes", type=int, default=None,
                      help="shards processed at once (default: the Ray cluster's CPUs)")
    _add_address(coco)


def _add_jobs_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=None, help="the cluster's Jobs API, http://HEAD:8265 (default: $RAY_ADDRESS)")


def _example_pipelines() -> list[str]:
    from pipelines.workflow_spec import EXAMPLES_DIR

    return sorted(p.stem for p in EXAMPLES_DIR.glob("*.yaml"))


def _add_training_inputs(parser: argparse.ArgumentParser, resume_help: str) -> None:
    parser.add_argument("--data", action="append", required=True, metavar="SHARDS",
                        help="a shard set to train on: folder, s3:// or gs:// (repeatable; with --weight, mixed); "
                             "or a labelled text table file (text, label), sharded into WORKDIR/tables first")
    parser.add_argument("--weight", action="append", type=float, metavar="W",
                        help="sampling weight of each --data, in order (needs train.samples_per_epoch)")
    parser.add_argument("--eval", metavar="SHARDS",
                        help="a labelled shard set the workers evaluate on (or a labelled text table file)")
    parser.add_argument("--name", help=resume_help)
    parser.add_argument("--promote-if", metavar="METRIC",
                        help="after evaluation, move champion to the new version if METRIC beats the champion's")
    parser.add_argument("--lineage", metavar="NAME",
                        help="tag the run tvp.lineage=NAME: tvp select-shards --lineage NAME then skips the shard "
                             "sets it trained on")


def _add_config(parser: argparse.ArgumentParser, default: str | None = "tiny", default_help: str = "tiny") -> None:
    parser.add_argument("--config", default=default,
                        help=f"preset name in pipelines/configs or a YAML file (default: {default_help})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=3 (repeatable)")


def _add_workdir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="tvp-demo",
                        help="work directory whose MLflow store to use unless MLFLOW_TRACKING_URI is set (default: ./tvp-demo)")


def _tracking_uri(workdir: str, must_exist: bool = True) -> str:
    from components.tracking.tracking_store import check_tracking_server, configure_fast_failure, resolve_tracking_uri

    uri = resolve_tracking_uri(workdir)
    configure_fast_failure()
    check_tracking_server(uri)
    if must_exist and uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise _usage_error(f"no MLflow store at {uri}: run tvp demo first, or set MLFLOW_TRACKING_URI")
    return uri


def _training_sources(args: argparse.Namespace) -> list:
    from components.data.loading.shard_plan import ShardSource

    weights = args.weight or [1.0] * len(args.data)
    if len(weights) != len(args.data):
        raise _usage_error(f"{len(args.weight)} --weight values for {len(args.data)} --data sets")
    if args.promote_if and not args.eval:
        raise _usage_error(f"--promote-if {args.promote_if} needs evaluation data (--eval)")
    return [ShardSource(d, w) for d, w in zip(args.data, weights)]


def _train(args: argparse.Namespace, parent_uri: str | None = None) -> dict:
    import tempfile
    import time

    from pipelines.run_config import default_preset, load_run_config

    purpose = "finetune" if parent_uri else "tiny"
    preset = args.config or default_preset(args.task, purpose)
    checked = load_run_config(args.task, preset, args.overrides)  # a wrong key fails here, before Ray and MLflow start
    sources = _training_sources(args)

    from components.data.ingest.text_table import read_classes, table_spec
    from components.data.shards.shard_set import ShardSet, work_index_dir
    from pipelines.run_steps import prepare_services
    from pipelines.text_tables import is_table_file, shard_tables_in_place
    from pipelines.training_run import run_training

    workdir = Path(args.workdir).resolve()
    tables = [loc for loc in [*args.data, *([args.eval] if args.eval else [])] if is_table_file(loc)]
    for location in [*args.data, *([args.eval] if args.eval else [])]:
        if location not in tables:
            ShardSet.open(location, work_index_dir(workdir))  # every input is a usable shard set, before anything starts
    for table in tables:
        read_classes(table_spec(table))  # a table without text, labels or classes fails before anything starts
    tracking_uri = prepare_services(workdir, args.address)
    if tables:  # labelled text tables become shard sets in the work directory first (once)
        workers = checked.train.num_workers
        args.data = shard_tables_in_place(args.data, workdir, workers)
        args.eval = shard_tables_in_place([args.eval], workdir, workers)[0] if args.eval else None
        sources = _training_sources(args)
    if parent_uri and getattr(args, "fallback", None) and not _registered(parent_uri, tracking_uri):
        print(f"{parent_uri} names no registered version yet: starting from {args.fallback}")
        parent_uri = None if args.fallback == "scratch" else args.fallback
    with tempfile.TemporaryDirectory() as tmp:
        parent = None
        if parent_uri:
            from pipelines.finetune import resolve_parent

            parent = resolve_parent(parent_uri, args.task, tracking_uri, Path(tmp))
        cfg = load_run_config(args.task, preset, args.overrides, base_task=parent.task_config if parent else None)
        if parent and parent.registered_model and not cfg.tracking.registered_model:
            cfg.tracking.registered_model = parent.registered_model  # versions of the same model: comparable
        default_name = f"{args.task}-{purpose + '-' if parent_uri else ''}{time.strftime('%Y%m%d-%H%M%S')}"
        result = run_training(args.task, cfg, sources, args.eval, workdir, args.name or default_name, tracking_uri,
                              args.promote_if, parent, tags={"tvp.lineage": args.lineage} if args.lineage else None)
    print(f"run {result.run_name} ({result.run_id}): registered {result.registered_model} "
          f"version {result.model_version}")
    for name, value in sorted(result.metrics.items()):
        print(f"  {name}: {value:.4f}")
    outputs = result.as_dict()
    outputs["model_uri"] = f"models:/{result.registered_model}/{result.model_version}"  # this version, not @latest
    return outputs


def _registered(model_uri: str, tracking_uri: str) -> bool:
    """Whether a models:/ URI names a registered version now (a checkpoint folder counts if it exists)."""
    if not model_uri.startswith("models:/"):
        return Path(model_uri).exists()
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from components.tracking.registry import resolve_model_version

    try:
        resolve_model_version(MlflowClient(tracking_uri, registry_uri=tracking_uri), model_uri)
    except MlflowException:
        return False
    return True


def _select_shards(args: argparse.Namespace) -> dict:
    from components.data.shards.shard_set import work_index_dir
    from pipelines.select_shards import select_new_shard_sets

    tracking_uri = _tracking_uri(args.workdir, must_exist=False)
    selection = select_new_shard_sets(args.root, args.lineage, tracking_uri,
                                      work_index_dir(Path(args.workdir).resolve()))
    for location, digest in selection.new:
        print(f"new: {location} ({digest[:12]})")
    for location in selection.unfinished[:5]:
        print(f"skipped: {location} has no manifest (unfinished, or another tool's set never indexed)")
    if len(selection.unfinished) > 5:
        print(f"skipped: {len(selection.unfinished) - 5} more folders without a manifest")
    print(f"{len(selection.new)} new shard sets under {args.root}; {selection.trained} trained on already by "
          f"lineage {args.lineage}")
    return {"locations": [loc for loc, _ in selection.new], "content_hashes": [h for _, h in selection.new],
            "count": len(selection.new), "trained": selection.trained}


def _finetune(args: argparse.Namespace) -> dict:
    return _train(args, parent_uri=args.parent)


def _evaluate(args: argparse.Namespace) -> dict:
    from pipelines.evaluate import evaluate_registered

    from cluster.ray_cluster import connect

    tracking_uri = _tracking_uri(args.workdir)
    connect(args.address, dashboard=False)
    metrics = evaluate_registered(args.model_uri, args.data, tracking_uri, args.workdir, args.actors)
    for name, value in sorted(metrics.items()):
        print(f"{name}: {value:.4f}")
    return {"model_uri": args.model_uri, "metrics": metrics}


def _promote(args: argparse.Namespace) -> dict:
    from pipelines.evaluate import promote_registered

    promoted, reason = promote_registered(args.model_uri, args.metric, args.mode, args.alias, _tracking_uri(args.workdir))
    print(("promoted: " if promoted else "not promoted: ") + reason)
    return {"model_uri": args.model_uri, "promoted": promoted, "reason": reason}


def _filter(args: argparse.Namespace) -> dict:
    from components.data.filtering.clip_score import ScoreRule
    from components.data.shards.shard_set import work_index_dir
    from pipelines.filter_clip_score import filter_clip_score

    from cluster.ray_cluster import connect

    rule = ScoreRule(args.min_score, args.keep_fraction)  # F outside (0, 1] fails here, before anything starts
    for flag in ("actors", "batch_size"):
        if getattr(args, flag) is not None and getattr(args, flag) <= 0:
            raise _usage_error(f"--{flag.replace('_', '-')} must be positive")
    if args.gpus_per_actor < 0:
        raise _usage_error("--gpus-per-actor must not be negative")
    manifest = filter_clip_score(args.shards, args.model, args.output, rule, _tracking_uri(args.workdir),
                                 args.actors, args.batch_size, args.gpus_per_actor,
                                 work_index_dir(Path(args.workdir).resolve()),
                                 connect=lambda: connect(args.address, dashboard=False))
    facts = manifest["clip_score"]
    return {"output": args.output, "content_hash": manifest["content_hash"], "num_samples": manifest["num_samples"],
            "threshold": facts["threshold"], "kept_fraction": facts["kept_fraction"]}


def _print_summary(summary: dict) -> None:
    print()
    print("tvp demo finished in {duration_s:.0f} s".format(**summary))
    print(f"  shards:          {summary['shards_dir']} ({summary['num_train_samples']} training samples)")
    print(f"  MLflow run:      {summary['run_id']} in experiment {summary['experiment']!r}")
    print(f"  registered:      {summary['registered_model']} version {summary['model_version']} ({summary['model_uri']})")
    print(f"  zero-shot top-1: {summary['zero_shot_top1']:.3f} on held-out digits (chance {summary['chance_top1']:.3f})")
    print(f"  browse it:       {summary['mlflow_ui']}")
    print(f"  summary:         {Path(summary['workdir']) / 'summary.json'}")


def _demo(args: argparse.Namespace) -> dict:
    from pipelines.config import load_config
    from pipelines.demo_config import DemoConfig

    cfg = load_config(DemoConfig, args.config, args.overrides)  # a wrong key fails here, before heavy imports

    from pipelines.demo import run_demo

    summary = run_demo(cfg, args.workdir, args.address)
    _print_summary(summary)
    return summary


def _demo_data(args: argparse.Namespace) -> dict:
    from components.data.ingest.digits_demo_data import build_digits_tables

    if not 0 < args.heldout_fraction < 1:
        raise _usage_error("--heldout-fraction must lie between 0 and 1")
    tables = build_digits_tables(args.output, args.source_size, args.heldout_fraction, args.seed)
    print(f"{tables.num_train} training rows in {tables.train}, {tables.num_heldout} held-out rows in {tables.heldout}")
    return {"train_table": str(tables.train), "heldout_table": str(tables.heldout),
            "num_train": tables.num_train, "num_heldout": tables.num_heldout}


def _ingest(args: argparse.Namespace) -> dict:
    if args.source == "text-table":
        return _ingest_text_table(args)
    if args.source == "wikipedia":
        return _ingest_wikipedia(args)
    if args.source == "imagefolder":
        return _ingest_imagefolder(args)
    if args.source == "coco":
        return _ingest_coco(args)
    from pydantic import ValidationError

    from components.data.ingest.address_guard import AddressGuard
    from components.data.ingest.image_processing import ImageConfig
    from components.data.ingest.image_text_shard import IngestConfig
    from components.data.ingest.url_fetcher import DEFAULT_USER_AGENT, FetchConfig
    from components.data.ingest.url_table import TableSpec, iter_row_batches

    for flag in ("rows_per_shard", "image_size", "threads", "timeout", "max_pixels", "max_bytes", "decode_budget_mb"):
        if getattr(args, flag) <= 0:
            raise _usage_error(f"--{flag.replace('_', '-')} must be positive")
    names = tuple(n.strip() for n in args.column_names.split(",")) if args.column_names else None
    spec = TableSpec(args.table, args.format, args.url_column, args.caption_column, not args.no_header, names)
    next(iter_row_batches(spec, 1), None)  # fail on a bad table (files, format, columns) before Ray starts
    try:
        fetch = FetchConfig(timeout_s=args.timeout, retries=args.retries, honour_opt_out=not args.ignore_opt_out,
                            user_agent=args.user_agent or DEFAULT_USER_AGENT,
                            allowed_addresses=tuple(args.allow_address), max_bytes=args.max_bytes)
        image = ImageConfig(image_size=args.image_size, resize_mode=args.resize_mode, jpeg_quality=args.jpeg_quality,
                            max_pixels=args.max_pixels, min_size=args.min_image_size,
                            max_aspect_ratio=args.max_aspect_ratio)
        roots = tuple(str(Path(r).resolve()) for r in args.allow_local_root)
        missing = [r for r in roots if not Path(r).is_dir()]
        if missing:
            raise _usage_error(f"--allow-local-root {missing[0]} is not a folder")
        cfg = IngestConfig(image, fetch, args.threads, args.min_caption_length, args.max_caption_length, roots,
                           args.decode_budget_mb)
        AddressGuard(fetch.allowed_addresses)  # a malformed --allow-address fails here, not in every task
    except (ValueError, ValidationError) as exc:
        raise _usage_error(str(exc).splitlines()[0]) from exc

    from cluster.ray_cluster import connect
    from pipelines.ingest_image_text import ingest_image_text

    # A local Ray for ingestion alone gets one logical CPU per core (training's oversubscription is for its
    # data readers): the default --processes is then one shard task per core, and fewer idle workers start.
    connect(args.address, num_cpus=os.cpu_count() or 1, dashboard=False)
    manifest = ingest_image_text(spec, args.output, cfg, args.rows_per_shard, args.processes, not args.no_dedup)
    return {"output": args.output, "content_hash": manifest["content_hash"],
            "num_samples": manifest["num_samples"], "num_shards": manifest["num_shards"]}


def _export(args: argparse.Namespace) -> dict:
    from pipelines.export_model import export_model

    tracking_uri = _tracking_uri(args.workdir) if args.model_uri.startswith("models:/") else None
    folder = export_model(args.model_uri, args.output, tracking_uri)
    print(f"exported {args.model_uri} to {folder}: {', '.join(sorted(p.name for p in folder.iterdir()))}")
    return {"output": str(folder)}


def _split_articles(args: argparse.Namespace) -> dict:
    from pipelines.article_splits import split_articles

    splits = split_articles(args.docs, args.output, args.heldout_fraction, args.classes, args.seed)
    print(f"{splits.num_train} training and {splits.num_heldout} held-out articles in {splits.train} and "
          f"{splits.heldout}")
    print(f"{splits.labelled_sentences[0]} + {splits.labelled_sentences[1]} labelled sentences in "
          f"{splits.categories_train} and {splits.categories_heldout}; classes: {', '.join(splits.classes)}")
    return {"train": str(splits.train), "heldout": str(splits.heldout),
            "categories_train": str(splits.categories_train), "categories_heldout": str(splits.categories_heldout)}


def _ingest_text_table(args: argparse.Namespace) -> dict:
    from cluster.ray_cluster import connect
    from pipelines.text_tables import ingest_text_table

    from components.data.ingest.text_table import read_classes, table_spec

    if args.rows_per_shard <= 0:
        raise _usage_error("--rows-per-shard must be positive")
    # A table without its columns, labels or texts fails here, before Ray starts.
    read_classes(table_spec(args.table, args.text_column, args.label_column, args.format))
    connect(args.address, num_cpus=os.cpu_count() or 1, dashboard=False)
    manifest = ingest_text_table(args.table, args.output, args.text_column, args.label_column, args.format,
                                 args.rows_per_shard)
    return {"output": args.output, "content_hash": manifest["content_hash"],
            "num_samples": manifest["num_samples"], "num_shards": manifest["num_shards"]}



def _ingest_wikipedia(args: argparse.Namespace) -> dict:
    from components.data.ingest.wikipedia_sample import sample_dump
    from pipelines.ingest_wikipedia import ingest_wikipedia, open_dump

    if args.sample == (args.dump is not None):
        raise _usage_error("give either a DUMP or --sample (the embedded dump sample)")
    if args.pages_per_shard <= 0 or (args.processes is not None and args.processes <= 0):
        raise _usage_error("--pages-per-shard and --processes must be positive")
    reader = open_dump(sample_dump() if args.sample else args.dump, args.index)  # a bad dump fails before Ray starts

    from cluster.ray_cluster import connect

    connect(args.address, num_cpus=os.cpu_count() or 1, dashboard=False)
    manifest = ingest_wikipedia(reader, args.output, args.pages_per_shard, args.processes)
    return {"output": args.output, "content_hash": manifest["content_hash"],
            "num_samples": manifest["num_samples"], "num_shards": manifest["num_shards"]}

def _ingest_imagefolder(args: argparse.Namespace) -> dict:
    from components.data.ingest.image_folder_shard import ImageFolderConfig
    from components.data.ingest.image_processing import ImageConfig
    from pipelines.ingest_imagefolder import SAMPLE_FOLDER, ingest_image_folder, open_image_folders, set_location

    if args.sample == (args.root is not None):
        raise _usage_error("give either a ROOT or --sample (the embedded digits)")
    if args.heldout_fraction is not None and args.heldout_root:
        raise _usage_error("give --heldout-fraction or --heldout-root, not both")
    fraction = args.heldout_fraction
    if fraction is None:
        fraction = 0.2 if args.sample and not args.heldout_root else 0.0
    if args.heldout_fraction is not None and not 0 < fraction < 1:
        raise _usage_error("--heldout-fraction must lie between 0 and 1")
    for flag in ("image_size", "images_per_shard", "processes"):
        if getattr(args, flag) is not None and getattr(args, flag) <= 0:
            raise _usage_error(f"--{flag.replace('_', '-')} must be positive")
    if not 1 <= args.jpeg_quality <= 100:
        raise _usage_error("--jpeg-quality must lie between 1 and 100")
    root = args.root
    if args.sample:
        from components.data.ingest.digits_image_folder import write_digits_folder

        root = write_digits_folder(set_location(args.output, SAMPLE_FOLDER))
    inputs = open_image_folders(root, args.heldout_root, fraction, args.seed)  # a bad tree fails before Ray starts
    cfg = ImageFolderConfig(ImageConfig(image_size=args.image_size, resize_mode=args.resize_mode,
                                        jpeg_quality=args.jpeg_quality))

    from cluster.ray_cluster import connect

    connect(args.address, num_cpus=os.cpu_count() or 1, dashboard=False)
    manifests = ingest_image_folder(inputs, args.output, cfg, args.images_per_shard, args.processes)
    train = manifests["train"]
    return {"output": args.output, "train": set_location(args.output, "train"),
            "heldout": set_location(args.output, "heldout") if "heldout" in manifests else None,
            "content_hash": train["content_hash"], "num_samples": train["num_samples"],
            "num_shards": train["num_shards"]}


def _ingest_coco(args: argparse.Namespace) -> dict:
    from components.data.ingest.coco_shard import CocoConfig
    from pipelines.ingest_coco import ingest_coco, open_coco, open_sample, set_location

    if args.sample == (args.annotations is not None):
        raise _usage_error("give either an ANNOTATIONS file or --sample (the embedded digit scenes)")
    if args.sample == (args.images is not None):
        raise _usage_error("--images names the folder of ANNOTATIONS' images: give it with ANNOTATIONS, not "
                           "with --sample" if args.sample else "give --images DIR, the folder of ANNOTATIONS' images")
    for flag in ("images_per_shard", "processes"):
        if getattr(args, flag) is not None and getattr(args, flag) <= 0:
            raise _usage_error(f"--{flag.replace('_', '-')} must be positive")
    if args.max_size < 0:
        raise _usage_error("--max-size must be 0 (keep every size) or positive")
    if not 1 <= args.jpeg_quality <= 100:
        raise _usage_error("--jpeg-quality must lie between 1 and 100")
    # A bad annotation file fails here, before Ray starts.
    if args.sample:
        readers = open_sample(args.output)
        locations = {name: set_location(args.output, name) for name in readers}
    else:
        readers, locations = {"coco": open_coco(args.annotations, args.images)}, {"coco": args.output}
    cfg = CocoConfig(max_size=args.max_size, jpeg_quality=args.jpeg_quality)
    images_per_shard = args.images_per_shard or (200 if args.sample else 1000)

    from cluster.ray_cluster import connect

    connect(args.address, num_cpus=os.cpu_count() or 1, dashboard=False)
    manifests = ingest_coco(readers, locations, cfg, images_per_shard, args.processes)
    first = next(iter(manifests))
    return {"output": args.output, "content_hash": manifests[first]["content_hash"],
            "num_samples": manifests[first]["num_samples"], "num_shards": manifests[first]["num_shards"],
            **({"train": locations["train"], "heldout": locations["heldout"]} if args.sample else {})}


def _run(args: argparse.Namespace) -> dict:
    import time

    from pipelines.workflow_spec import load_pipeline, resolve_params

    spec, file_hash = load_pipeline(args.pipeline)
    params = resolve_params(spec, args.param)  # a missing or unknown parameter fails before anything starts

    from pipelines.workflow_runner import run_pipeline

    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    tracking_uri = _tracking_uri(args.workdir, must_exist=False)
    name = args.name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    results = run_pipeline(spec, file_hash, params, name, workdir, tracking_uri, args.address)
    ran = [r for r in results if not r.skipped and r.status == "FINISHED"]
    earlier = [r for r in results if r.skipped]
    print(f"pipeline {spec.name} run {name} finished: {len(ran)} steps run, {len(earlier)} done in an earlier "
          f"attempt, {len(results) - len(ran) - len(earlier)} skipped by if:, {sum(r.duration_s for r in ran):.0f} s")
    return {"run_name": name, "steps": {r.name: r.outputs for r in results}}


def _submit(args: argparse.Namespace) -> dict:
    from cluster import job_submission as jobs

    command = jobs.job_command(args.job)  # a missing or wrong command fails before the cluster is asked
    address = jobs.dashboard_address(args.address)
    client = jobs.job_client(address)
    job = jobs.prepare_job(command, jobs.cluster_on_this_machine(address))
    for note in job.notes:
        print(f"  {note}")
    job_id = jobs.submit(client, job, args.submission_id)
    print(f"submitted job {job_id} to {address}")
    if not args.wait:
        print(f"  follow it: tvp jobs logs {job_id} --follow --address {address}")
        return {"job_id": job_id}
    status = jobs.follow(client, job_id, lambda text: print(text, end="", flush=True))
    code = jobs.exit_code(client, job_id)
    print(f"job {job_id} {status.lower()} (exit code {code})")
    if code:
        raise _JobOutcome(f"job {job_id} {status.lower()} with exit code {code}", code)
    return {"job_id": job_id}


def _jobs(args: argparse.Namespace) -> None:
    from cluster import job_submission as jobs

    client = jobs.job_client(args.address)
    if args.action == "list":
        for info in sorted(client.list_jobs(), key=lambda i: i.start_time or 0):
            if info.submission_id:  # drivers that connected on their own are not jobs
                print(next(jobs.describe(info)))
        return
    try:
        info = client.get_job_info(args.job_id)
    except RuntimeError as exc:
        raise _usage_error(f"no job {args.job_id} on the cluster: {str(exc).splitlines()[-1]}") from None
    if args.action == "show":
        print("\n".join(jobs.describe(info)))
    elif args.action == "logs":
        if args.follow:
            jobs.follow(client, args.job_id, lambda text: print(text, end="", flush=True))
        else:
            print(client.get_job_logs(args.job_id), end="")
    elif args.action == "stop":
        stopped = client.stop_job(args.job_id)
        print(f"job {args.job_id}: " + ("stop requested" if stopped else f"already {info.status.value.lower()}"))


def _schedule(args: argparse.Namespace) -> None:
    import re
    from datetime import datetime, timezone

    from cluster.schedule_store import Schedule, ScheduleStore

    url = args.store or os.environ.get("TVP_SCHEDULE_STORE")
    if not url:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{Path(args.workdir).resolve() / 'schedules.db'}"
    store = ScheduleStore(url)
    if args.action == "add":
        from cluster.cron import cron_trigger
        from cluster.job_submission import dashboard_address, job_command

        command = job_command(args.job)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", args.name):
            raise _usage_error(f"schedule name {args.name!r}: use letters, digits, - and _ (at most 64)")
        trigger = cron_trigger(args.cron, args.timezone)  # a wrong expression fails here, not in the scheduler
        store.add(Schedule(args.name, args.cron, args.timezone, command, dashboard_address(args.address),
                           os.getcwd(), args.overlap))
        first = trigger.get_next_fire_time(None, datetime.now(timezone.utc))
        print(f"schedule {args.name} added: first tick {first:%Y-%m-%d %H:%M:%S %Z}, runs tvp {' '.join(command)}")
        print(f"  it runs while a scheduler serves {url}: tvp schedule serve --store {url}")
    elif args.action == "list":
        for s in store.schedules():
            ticks = list(store.ticks(s.name))
            latest = f"latest {ticks[-1].fire_time} {ticks[-1].state}" if ticks else "no tick yet"
            print(f"{s.name}  {s.cron} ({s.timezone})  {'paused' if s.paused else 'active'}  {latest}  "
                  f"tvp {' '.join(s.command)}")
    elif args.action in ("pause", "resume"):
        store.set_paused(args.name, args.action == "pause")
        print(f"schedule {args.name} {'paused' if args.action == 'pause' else 'resumed'}")
    elif args.action == "remove":
        store.remove(args.name)
        print(f"schedule {args.name} removed")
    elif args.action == "history":
        from cluster.scheduler import Scheduler

        store.get(args.name)
        Scheduler(store, echo=lambda line: None).refresh(args.name)  # outcomes of jobs that ended since
        for tick in store.ticks(args.name):
            run = f"  MLflow run {tick.mlflow_run_id}" if tick.mlflow_run_id else ""
            print(f"{tick.fire_time}  {tick.state:<10}  {tick.submission_id}{run}  {tick.detail}".rstrip())
    elif args.action == "serve":
        from cluster.scheduler import Scheduler

        Scheduler(store).serve()


def _ui(args: argparse.Namespace) -> None:
    from pipelines.ui import run_ui

    run_ui(args)


def _inspect(args: argparse.Namespace) -> None:
    from components.data.shards.shard_set import work_index_dir
    from pipelines.inspect_shards import inspect_shards

    inspect_shards(args.shards, args.contact_sheet, args.samples, index=args.index,
                   index_dir=work_index_dir(Path(args.workdir).resolve()))


class _JobOutcome(TvpError):
    """A job that did not succeed: ``tvp submit --wait`` exits with its exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _usage_error(message: str) -> Exception:
    from pipelines.config import ConfigError

    return ConfigError(message)


# Errors whose message says it all: one line on stderr, the error's exit code (2; 143 for a stop on request).
# tvp's own come from one family (components.errors imports nothing). MLflow's (a model name or alias that does
# not exist) are matched by name, so that an early error is not delayed by importing MLflow to compare with.
_KNOWN_ERRORS = (TvpError,)
_MLFLOW_ERRORS = {"mlflow.exceptions.MlflowException"}
_VERBOSE_FLAGS = {"-v", "--verbose"}


def _is_one_of(exc: BaseException, names: set[str]) -> bool:
    return any(f"{cls.__module__}.{cls.__qualname__}" in names for cls in type(exc).__mro__)


def _one_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """The arguments; ``-v`` is accepted after the command too (``tvp demo -v``). What follows the first ``--``
    is the command of ``tvp submit`` and ``tvp schedule add``, taken whole (argparse would mix it with NAME)."""
    parser = _build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    job = argv[argv.index("--") + 1:] if "--" in argv else None
    args, unknown = parser.parse_known_args(argv[:argv.index("--")] if job is not None else argv)
    if any(arg not in _VERBOSE_FLAGS for arg in unknown):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if job is not None and not hasattr(args, "job"):
        parser.error(f"tvp {args.command} takes no command after --")
    if hasattr(args, "job"):
        args.job = job or []
    args.verbose = args.verbose or bool(unknown)
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep logs and pipes readable
    if not getattr(args, "address", None) and not os.environ.get("RAY_ADDRESS"):
        from cluster.loopback import use_loopback_only

        use_loopback_only()  # our own local Ray instance stays on 127.0.0.1
    console = Console(args.command, getattr(args, "workdir", None), args.verbose)
    try:
        with console:
            commands = {"demo": _demo, "demo-data": _demo_data, "ingest": _ingest, "inspect": _inspect, "split-articles": _split_articles, "export": _export, "train": _train, "finetune": _finetune, "evaluate": _evaluate,
                        "promote": _promote, "filter": _filter, "run": _run, "submit": _submit, "jobs": _jobs, "select-shards": _select_shards,
                        "schedule": _schedule, "ui": _ui}
            outputs = commands[args.command](args)
        write_step_outputs(outputs)
    except _KNOWN_ERRORS as exc:
        label = "" if exc.exit_code in (130, 143) else "error: "  # a stop on request is no error
        print(f"tvp: {label}{_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("tvp: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not _is_one_of(exc, _MLFLOW_ERRORS):
            if console.log_path:
                print(f"tvp: library output up to this error: {console.log_path}", file=sys.stderr)
            raise
        print(f"tvp: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    if console.log_path:
        print(f"  library output:  {console.log_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
