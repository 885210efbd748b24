"""What a run records about where it came from: code version, the command that started it, library versions."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from mlflow.entities import SourceType
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE

ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=5,
                          check=True).stdout.strip()


def git_commit() -> str | None:
    """The commit of the tvp checkout, or None when tvp is not run from a git checkout."""
    try:
        commit = _git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit if re.fullmatch(r"[0-9a-f]{40}", commit) else None


def code_version() -> str:
    """The git commit of the tvp checkout (with ``-dirty`` for local changes), else the package version."""
    commit = git_commit()
    if commit is None:
        return "tvp " + metadata.version("tvp")
    try:
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return commit
    return commit + ("-dirty" if dirty else "")


def entry_point(argv: list[str] | None = None) -> str:
    """The command this process was started as: ``tvp demo`` for the console script (or ``python -m
    pipelines.cli demo``), else the script's file name (a test runner, a job's own driver)."""
    argv = sys.argv if argv is None else argv
    program = Path(argv[0]) if argv and argv[0] else Path("python")
    is_tvp = program.name == "tvp" or program.resolve() == ROOT / "pipelines" / "cli.py"
    commands = [a for a in argv[1:] if not a.startswith("-")][:1]
    return " ".join(["tvp", *commands]) if is_tvp else program.name


def source_tags() -> dict[str, str]:
    """MLflow's standard source tags, which its UI shows as a run's source: entry point, and commit when known."""
    tags = {MLFLOW_SOURCE_NAME: entry_point(), MLFLOW_SOURCE_TYPE: SourceType.to_string(SourceType.LOCAL)}
    commit = git_commit()
    if commit:
        tags[MLFLOW_GIT_COMMIT] = commit
    return tags


def library_versions() -> dict[str, str]:
    versions = {}
    for package in ("torch", "ray", "mlflow"):
        try:
            versions[f"{package}_version"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions
