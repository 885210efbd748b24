"""``tvp ui``: the MLflow UI on a work directory's runs and registered models.

It runs ``mlflow server`` on the store that ``tvp demo`` and ``tvp train``
write when MLFLOW_TRACKING_URI is unset (``WORKDIR/mlflow.db``; artifacts in
``WORKDIR/mlartifacts``), bound to loopback unless ``--host`` says otherwise,
and prints the address to open, with a link to each experiment. With
MLFLOW_TRACKING_URI naming a database, that store is shown; a tracking server
is its own UI. The server's output goes to a log in the work directory.
Ctrl-C (or SIGTERM) stops it.

MLflow 3.17's UI opens in its GenAI view unless the address asks for the
model-training one (``workflowType=machine_learning``; the experiment's
``mlflow.experimentKind`` tag is not consulted), so the links printed ask.
"""

from __future__ import annotations

import argparse
import signal
import time
from pathlib import Path
from types import FrameType

from cluster.mlflow_server import LOOPBACK, MlflowServer
from components.errors import TvpError
from components.tracking.tracking_store import default_artifact_location, resolve_tracking_uri

DEFAULT_PORT = 5000
MODEL_TRAINING_VIEW = "workflowType=machine_learning"


class NoTrackingStore(TvpError, FileNotFoundError):
    pass


def add_ui_parser(commands: argparse._SubParsersAction) -> None:
    ui = commands.add_parser(
        "ui",
        help="browse a work directory's runs and registered models in the MLflow UI",
        description=("Start the MLflow UI on the work directory's MLflow store (or the database that "
                     "MLFLOW_TRACKING_URI names) and print its address. It listens on 127.0.0.1 only unless "
                     "--host says otherwise. Ctrl-C stops it."),
    )
    ui.add_argument("--workdir", default="tvp-demo", help="the work directory whose runs to show (default: ./tvp-demo)")
    ui.add_argument("--host", default=LOOPBACK,
                    help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 shows the runs, "
                         "unauthenticated, to every machine that reaches this one)")
    ui.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on (default: %(default)s)")


def ui_store(workdir: str | Path) -> str:
    """The tracking store to show for ``workdir``; ``NoTrackingStore`` when there is nothing to show."""
    store = resolve_tracking_uri(Path(workdir).resolve())
    if store.startswith(("http://", "https://")):
        raise NoTrackingStore(f"MLFLOW_TRACKING_URI names the tracking server {store}: it serves the MLflow UI "
                              "itself, open it in a browser")
    database = Path(store.removeprefix("sqlite:///")) if store.startswith("sqlite:///") else None
    if database is not None and not database.is_file():  # mlflow would create an empty one and show nothing
        raise NoTrackingStore(f"no MLflow store at {database}: run tvp demo (or tvp train) with "
                              f"--workdir {workdir} first, or set MLFLOW_TRACKING_URI")
    return store


def ui_server(store: str, workdir: str | Path, host: str = LOOPBACK, port: int = DEFAULT_PORT) -> MlflowServer:
    """The (unstarted) server showing ``store``; its log goes to ``workdir``."""
    work = Path(workdir).resolve()
    options = ["--backend-store-uri", store,
               # where experiments created in the UI keep their artifacts: the folder tvp's own runs use
               "--artifacts-destination", default_artifact_location(work),
               "--workers", "1"]  # one person browsing: one worker spares the memory of three more
    log = work / "logs" / f"mlflow-ui-{time.strftime('%Y%m%d-%H%M%S')}.log"
    return MlflowServer(options, port, log, host=host)


def ui_links(store: str, url: str) -> list[str]:
    """Lines naming the page of each experiment in ``store`` (but an empty Default) and the model registry."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store, registry_uri=store)
    lines = []
    for experiment in client.search_experiments():
        if experiment.name == "Default" and not client.search_runs([experiment.experiment_id], max_results=1):
            continue
        lines.append(f"  experiment {experiment.name}: {url}/#/experiments/{experiment.experiment_id}"
                     f"?{MODEL_TRAINING_VIEW}")
    lines.append(f"  registered models: {url}/#/models?{MODEL_TRAINING_VIEW}")
    return lines


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # the same way out as Ctrl-C: the server is stopped on the way


def run_ui(args: argparse.Namespace) -> None:
    """Start the UI, print its address, and serve until Ctrl-C, SIGTERM, or the server ends."""
    store = ui_store(args.workdir)
    server = ui_server(store, args.workdir, args.host, args.port)
    print(f"starting the MLflow UI on {server.url} (server log: {server.log_path})")
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        server.start()
        print("\n".join([f"MLflow UI: {server.url}  (Ctrl-C stops it)", *ui_links(store, server.url)]),
              flush=True)
        code = server.wait()
        if code != 0:
            raise TvpError(f"the MLflow UI server stopped with code {code}: see {server.log_path}")
    except KeyboardInterrupt:
        print("stopping the MLflow UI")
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
