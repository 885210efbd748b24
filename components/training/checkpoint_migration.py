"""Checkpoint format versions and the migrations between them: old checkpoints keep loading.

A checkpoint records the format version of the code that wrote it
(``config.json``: ``format_version``). When a model's parameter names change,
the version goes up by one and ``MIGRATIONS[old_version][task]`` says how
that task's names move: a small function from one parameter name (a
fully-qualified name, as in ``state_dict`` and in the optimizer state) to its
name in the next version. Loading applies the steps in order, from the
checkpoint's version up to this code's, to the weights and, on resume, to the
optimizer state. Tasks without an entry for a step kept their names.

Versions:
1. the first format.
2. the encoder stack became ``Encoder`` with ``layers`` (the name ``Transformer``
   went to the encoder-decoder model): ViT's and CLIP's ``….transformer.blocks.N.…``
   became ``….encoder.layers.N.…``.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

CHECKPOINT_FORMAT_VERSION = 2

Rename = Callable[[str], str]
T = TypeVar("T")


def _encoder_stacks(towers: tuple[str, ...]) -> Rename:
    def rename(key: str) -> str:
        for tower in towers:
            old = f"{tower}.transformer.blocks."
            if key.startswith(old):
                return f"{tower}.encoder.layers.{key[len(old):]}"
        return key

    rename.__doc__ = f"``T.transformer.blocks.N.…`` → ``T.encoder.layers.N.…`` for T in {towers}"
    return rename


# version N → N + 1, by task name
MIGRATIONS: dict[int, dict[str, Rename]] = {
    1: {"clip": _encoder_stacks(("visual", "text"))},
}


def renames(task: str, version: int) -> list[Rename]:
    """The renaming steps that bring ``task``'s names from ``version`` to this code's."""
    return [MIGRATIONS[v][task] for v in range(version, CHECKPOINT_FORMAT_VERSION) if task in MIGRATIONS.get(v, {})]


def migrate_name(name: str, task: str, version: int) -> str:
    for rename in renames(task, version):
        name = rename(name)
    return name


def migrate_weights(weights: dict[str, T], task: str, version: int) -> dict[str, T]:
    """A state dict (or any dict keyed by parameter name) with ``version``'s names brought up to date."""
    steps = renames(task, version)
    if not steps:
        return weights
    out: dict[str, T] = {}
    for key, value in weights.items():
        for rename in steps:
            key = rename(key)
        out[key] = value
    return out


def migrate_optimizer_state(state: dict[str, Any], task: str, version: int) -> dict[str, Any]:
    """A full optimizer state dict (names as keys of ``state`` and in each group's ``params``) brought up to date."""
    if not renames(task, version):
        return state
    groups = [{**group, "params": [migrate_name(p, task, version) if isinstance(p, str) else p
                                   for p in group["params"]]}
              for group in state.get("param_groups", [])]
    return {**state, "state": migrate_weights(state.get("state", {}), task, version), "param_groups": groups}
