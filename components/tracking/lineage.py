"""What a run records about where it came from: code version and library versions."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path


def code_version() -> str:
    """The git commit of the tvp checkout (with ``-dirty`` for local changes), else the package version."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "tvp " + metadata.version("tvp")


def library_versions() -> dict[str, str]:
    versions = {}
    for package in ("torch", "ray", "mlflow"):
        try:
            versions[f"{package}_version"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions
