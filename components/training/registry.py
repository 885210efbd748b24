"""Where ``load_task_and_model`` lived before tasks had their own package.

Versions registered before then carry a copy of the pyfunc loader that
imports it from here; they must keep loading, so this name stays.
"""

from components.tasks.registry import load_task_and_model

__all__ = ["load_task_and_model"]
