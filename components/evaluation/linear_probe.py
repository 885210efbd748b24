"""A linear probe: logistic regression on frozen image features, as CLIP's paper measures representations.

CLIP's protocol is scikit-learn's L-BFGS logistic regression (at most 1,000
iterations) on the raw features, with the L2 strength chosen by a sweep on a
validation set; the paper sweeps 96 log-spaced values over 1e-6..1e6. Here the
sweep is a short log grid (``C_GRID``, C = 1/λ) on a seeded stratified split
of the training features (``VALIDATION_FRACTION`` held out), walked from the
strongest regularisation to the weakest with warm starts, which keeps it to a
few seconds on a few thousand 512-d features; the best C (the smallest one
among equal validation accuracies) is then refitted on all training features.

Everything is deterministic: the split is seeded and L-BFGS has no randomness.
``probe_split`` cuts a single labelled set into seeded, stratified
probe-train / probe-test halves when no separate training set exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

C_GRID = tuple(float(c) for c in np.logspace(-2, 4, 7))  # 0.01 … 10,000, one step per decade
VALIDATION_FRACTION = 0.2
MAX_ITER = 1000


@dataclass
class LinearProbeResult:
    top1: float  # accuracy on the test features
    mean_per_class_top1: float  # mean over the test set's classes of their accuracy
    per_class_top1: dict[int, float] = field(default_factory=dict)  # test label → accuracy
    C: float = 1.0  # the inverse L2 strength used for the final fit
    validation_top1: float | None = None  # the chosen C's validation accuracy (None when C was given)
    num_train: int = 0
    num_test: int = 0

    def metrics(self, prefix: str = "linear_probe") -> dict[str, float]:
        """Flat floats for tracking: ``{prefix}_top1``, ``{prefix}_mean_per_class_top1``, ``{prefix}_C``, ..."""
        out = {f"{prefix}_top1": self.top1, f"{prefix}_mean_per_class_top1": self.mean_per_class_top1,
               f"{prefix}_C": self.C, f"{prefix}_num_train": float(self.num_train),
               f"{prefix}_num_test": float(self.num_test)}
        if self.validation_top1 is not None:
            out[f"{prefix}_validation_top1"] = self.validation_top1
        return out


def _array(x: np.ndarray | torch.Tensor, dtype) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def stratified_split(labels: np.ndarray | torch.Tensor | Sequence[int], fraction: float, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Sorted index arrays (rest, held): per class, round(fraction · count) seeded-random samples go to ``held``,
    at least one and at most count - 1, so a class with two or more samples lands on both sides; a class with a
    single sample stays in ``rest``."""
    labels = _array(labels, np.int64)
    rng = np.random.default_rng(seed)
    held = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < 2:
            continue
        take = min(max(1, int(round(fraction * len(members)))), len(members) - 1)
        held.append(rng.permutation(members)[:take])
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    rest_idx = np.setdiff1d(np.arange(len(labels)), held_idx)
    return rest_idx, held_idx


def probe_split(features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, seed: int = 0,
                test_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One labelled set cut into (train_features, train_labels, test_features, test_labels): a seeded split,
    stratified per class, ``test_fraction`` of each class on the test side."""
    x, y = _array(features, np.float32), _array(labels, np.int64)
    train, test = stratified_split(y, test_fraction, seed)
    return x[train], y[train], x[test], y[test]


def _accuracy(model: LogisticRegression, x: np.ndarray, y: np.ndarray) -> float:
    return float((model.predict(x) == y).mean()) if len(y) else 0.0


def select_C(features: np.ndarray, labels: np.ndarray, grid: Sequence[float] = C_GRID,
             validation_fraction: float = VALIDATION_FRACTION, seed: int = 0, max_iter: int = MAX_ITER
             ) -> tuple[float, float]:
    """(best C, its validation accuracy) on a seeded stratified split of the given training features."""
    fit_idx, val_idx = stratified_split(labels, validation_fraction, seed)
    if len(val_idx) == 0 or len(np.unique(labels[fit_idx])) < 2:
        raise ValueError("too few samples per class to hold out a validation split: pass C")
    model = LogisticRegression(max_iter=max_iter, warm_start=True)
    best_c, best_acc = None, -1.0
    for c in sorted(float(c) for c in grid):  # strong → weak regularisation; each fit starts from the last
        model.set_params(C=c).fit(features[fit_idx], labels[fit_idx])
        acc = _accuracy(model, features[val_idx], labels[val_idx])
        if acc > best_acc:
            best_c, best_acc = c, acc
    return best_c, best_acc


def linear_probe(train_features: np.ndarray | torch.Tensor, train_labels: np.ndarray | torch.Tensor,
                 test_features: np.ndarray | torch.Tensor, test_labels: np.ndarray | torch.Tensor,
                 C: float | None = None, grid: Sequence[float] = C_GRID, seed: int = 0,
                 max_iter: int = MAX_ITER) -> LinearProbeResult:
    """Fit L2 logistic regression (L-BFGS) on (N, E) frozen ``train_features`` and integer labels, measure top-1
    on the test features. ``C`` None: chosen from ``grid`` on a seeded validation split of the training
    features, then refitted on all of them."""
    x_train, y_train = _array(train_features, np.float32), _array(train_labels, np.int64)
    x_test, y_test = _array(test_features, np.float32), _array(test_labels, np.int64)
    if len(np.unique(y_train)) < 2:
        raise ValueError("a linear probe needs at least two classes in the training labels")
    validation = None
    if C is None:
        C, validation = select_C(x_train, y_train, grid, seed=seed, max_iter=max_iter)
    model = LogisticRegression(C=C, max_iter=max_iter).fit(x_train, y_train)
    predicted = model.predict(x_test) if len(y_test) else np.zeros(0, np.int64)
    per_class = {int(label): float((predicted[y_test == label] == label).mean()) for label in np.unique(y_test)}
    return LinearProbeResult(
        top1=float((predicted == y_test).mean()) if len(y_test) else 0.0,
        mean_per_class_top1=float(np.mean(list(per_class.values()))) if per_class else 0.0,
        per_class_top1=per_class, C=float(C), validation_top1=validation,
        num_train=len(y_train), num_test=len(y_test),
    )
