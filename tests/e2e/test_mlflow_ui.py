"""The MLflow UI, seen: ``tvp ui`` on the demo's store, its pages loaded in headless Chromium.

The demo's store (the session's ``demo_run``) is copied, and its version given
the alias ``champion``, as a promotion would; ``tvp ui`` serves the copy on
loopback and prints the links it opens with. Chromium is Debian's
(``.ci/run`` installs it), driven by Playwright, whose own browser download
cannot work here. The pages must show the run in the model-training view,
with its source (entry point and commit), its metrics, its logged model, a
logged evaluation picture, and the registered version with its alias, linked
to the logged model. Screenshots go to ``$TVP_TEST_ARTIFACTS/mlflow_ui``
(default ``tests/artifacts/mlflow_ui``). About 40 s besides the demo.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from playwright.sync_api import Page, expect, sync_playwright

from tests.conftest import REPO, TVP

ARTIFACTS = Path(os.environ.get("TVP_TEST_ARTIFACTS", REPO / "tests" / "artifacts")) / "mlflow_ui"
CHROMIUM = "/usr/bin/chromium"
# As root in a container, with a closed network: no sandbox, no GPU, no calls home (Playwright adds a fresh profile).
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]
WAIT_MS = 90_000  # a page of the UI takes seconds on a loaded 2-core machine
ALIAS = "champion"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def promoted_store(demo_run, tmp_path_factory):
    """A work directory holding a copy of the demo's store, its version holding ``champion``."""
    work = tmp_path_factory.mktemp("ui")
    shutil.copyfile(demo_run["workdir"] / "mlflow.db", work / "mlflow.db")  # the demo's own store stays as it is
    uri = f"sqlite:///{work / 'mlflow.db'}"
    summary = demo_run["summary"]
    MlflowClient(uri, registry_uri=uri).set_registered_model_alias(summary["registered_model"], ALIAS,
                                                                   summary["model_version"])
    return work, uri, summary


class TvpUi:
    """``tvp ui`` in a subprocess; ``lines`` collects what it prints."""

    def __init__(self, workdir: Path, port: int) -> None:
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        self.process = subprocess.Popen([*TVP, "ui", "--workdir", str(workdir), "--port", str(port)], cwd=REPO,
                                        env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True).start()

    def link(self, label: str, timeout: float = 180) -> str:
        """The address printed after ``label:``, once it is printed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if line.strip().startswith(f"{label}:"):
                    return line.split(": ", 1)[1].strip()
            assert self.process.poll() is None, f"tvp ui ended early:\n{''.join(self.lines)}"
            time.sleep(0.2)
        raise AssertionError(f"tvp ui printed no {label!r} line:\n{''.join(self.lines)}")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


def shoot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def in_model_training_view(page: Page) -> None:
    """MLflow's model-training navigation, not its GenAI one (where tvp's runs were listed as evaluation runs)."""
    expect(page.get_by_text("Model registry").first).to_be_visible(timeout=WAIT_MS)
    expect(page.get_by_text("Evaluation runs")).to_have_count(0)


def test_the_ui_shows_the_demo_run_its_metrics_picture_and_champion_version(promoted_store):
    work, uri, summary = promoted_store
    client = MlflowClient(uri, registry_uri=uri)
    run = client.get_run(summary["run_id"])
    pictures = sorted(a.path for a in client.list_artifacts(summary["run_id"], "evaluation"))
    model, version = summary["registered_model"], summary["model_version"]
    model_id = run.outputs.model_outputs[0].model_id  # the run's logged model, which the version came from
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # marked a model-training one
    port = free_port()
    ui = TvpUi(work, port)
    try:
        experiment_page = ui.link(f"experiment {summary['experiment']}")
        registry_page = ui.link("registered models")
        base = f"http://127.0.0.1:{port}"
        assert experiment_page == f"{base}/#/experiments/{run.info.experiment_id}?workflowType=machine_learning"
        view = "?workflowType=machine_learning"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            try:
                # MLflow's news about its registry, shown over the page once per browser: dismissed when it comes.
                page.add_locator_handler(page.get_by_role("dialog").filter(has_text="Model Registry UI"),
                                         lambda dialog: page.keyboard.press("Escape"))

                # The experiment: the run, started by `tvp demo`, with its registered model.
                page.goto(experiment_page)
                expect(page.get_by_role("link", name=run.info.run_name)).to_be_visible(timeout=WAIT_MS)
                in_model_training_view(page)
                expect(page.get_by_text("tvp demo").first).to_be_visible()
                page.get_by_role("button", name="Close", exact=True).click()  # the chat panel, to see the page
                shoot(page, "1-experiment")

                # The run: source (entry point, commit), its logged model, its metrics.
                page.goto(f"{base}/#/experiments/{run.info.experiment_id}/runs/{summary['run_id']}{view}")
                expect(page.get_by_text("Logged models (1)")).to_be_visible(timeout=WAIT_MS)
                in_model_training_view(page)
                expect(page.get_by_text(run.data.tags["mlflow.source.git.commit"][:7]).first).to_be_visible()
                logged_model = page.locator(f"a[href*='/models/{model_id}']")
                expect(logged_model.first).to_be_visible()
                shoot(page, "2-run")
                metric = page.get_by_role("row").filter(has_text="zero_shot_top1")
                metric.first.scroll_into_view_if_needed()
                expect(metric.get_by_text(str(summary["zero_shot_top1"])).first).to_be_visible()
                shoot(page, "3-run-metrics")

                # The last evaluation picture, drawn from the artifact store.
                page.goto(f"{base}/#/experiments/{run.info.experiment_id}/runs/{summary['run_id']}/artifacts/"
                          f"{pictures[-1]}{view}")
                page.wait_for_function("() => [...document.images].some(i => i.src.startsWith('blob:') "
                                       "&& i.complete && i.naturalWidth > 0)", timeout=WAIT_MS)
                shoot(page, "4-picture")

                # The registered model: the version with its alias; the version links to the run's logged model.
                page.goto(registry_page)
                expect(page.get_by_role("link", name=model, exact=True)).to_be_visible(timeout=WAIT_MS)
                page.goto(f"{base}/#/models/{model}{view}")
                row = page.get_by_role("row").filter(has=page.get_by_role("link", name=f"Version {version}"))
                expect(row).to_be_visible(timeout=WAIT_MS)
                expect(row.get_by_text(ALIAS)).to_be_visible()
                shoot(page, "5-registered-model")
                version_link = row.get_by_role("link", name=f"Version {version}").get_attribute("href")
                assert version_link.endswith(f"/models/{model}/versions/{version}"), version_link
                page.goto(f"{base}/{version_link}{view}")  # followed as is, it would leave the model-training view
                expect(page.get_by_text("Source model").first).to_be_visible(timeout=WAIT_MS)
                expect(page.get_by_text(ALIAS).first).to_be_visible()
                expect(page.locator(f"a[href*='/models/{model_id}']").first).to_be_visible()
                shoot(page, "6-version")
            except BaseException:
                shoot(page, "failure")
                raise
            finally:
                browser.close()
    finally:
        code = ui.stop()
    assert code == 0, "".join(ui.lines)
    with socket.socket() as s:  # the server went with tvp ui: nothing answers on its port
        assert s.connect_ex(("127.0.0.1", port)) != 0
    assert re.search(r"MLflow UI: http://127\.0\.0\.1:\d+", "".join(ui.lines))
