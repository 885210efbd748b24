"""The entrypoint of a job that ``tvp submit`` sends: ``python -m cluster.job_entry [--cwd DIR] VERSION -- ARGS``.

It runs on the cluster, in the job's working directory (the project code the
client shipped), and:
- warns when the tvp installed on the cluster (whose dependencies the job
  uses) is another version than the client's code;
- moves to ``--cwd`` when the client asked (a cluster on the client's own
  machine: relative paths and the default work folder mean what they meant
  where the command was typed), keeping the shipped code importable by this
  process and the steps and tasks it starts;
- runs ``tvp ARGS`` and exits with its status.
"""

from __future__ import annotations

import os
import sys
from importlib import metadata


def installed_version() -> str | None:
    try:
        return metadata.version("tvp")
    except metadata.PackageNotFoundError:
        return None


def main(argv: list[str]) -> int:
    cwd = None
    if argv[:1] == ["--cwd"]:
        cwd, argv = argv[1], argv[2:]
    client_version, separator, args = argv[0], argv[1], argv[2:]
    assert separator == "--", "usage: python -m cluster.job_entry [--cwd DIR] VERSION -- ARGS"
    cluster_version = installed_version()
    if cluster_version != client_version:
        print(f"tvp: warning: this cluster has tvp {cluster_version or 'not installed'}, the job's code is tvp "
              f"{client_version}: the cluster's dependencies may not fit the code", file=sys.stderr, flush=True)
    code = os.getcwd()
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (code, os.environ.get("PYTHONPATH")) if p)
    if cwd:
        os.chdir(cwd)
    from pipelines.cli import main as tvp

    return tvp(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
