"""Keeping a local Ray instance on loopback.

Ray's single-machine mode makes every Ray process bind to and advertise
127.0.0.1 instead of the machine's network address, so a local instance
cannot be reached from other hosts. Ray names the switch after the
platforms where it is the default, and reads it once, when ray is imported:
entry points call ``use_loopback_only()`` before anything imports ray, and
only when they will start their own instance (a driver in this mode cannot
join a cluster on other machines).
"""

from __future__ import annotations

import os
import sys

SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def use_loopback_only() -> None:
    if "ray" in sys.modules:
        raise RuntimeError("use_loopback_only() must run before ray is imported")
    os.environ[SINGLE_MACHINE_ENV] = "0"  # inherited by every Ray process started from here
