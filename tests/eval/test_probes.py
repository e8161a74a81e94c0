"""Linear and MLP probes: they learn, early-stop, standardise on train only, and are deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from musicembed.eval.probes import ProbeConfig, fit_probe, probe_evaluation


def _multiclass(n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).normal(size=(4, 16)) * 3
    y = rng.integers(0, 4, n)
    return (centers[y] + rng.normal(size=(n, 16)) + shift).astype(np.float32), y


def _multilabel(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = np.random.default_rng(98).normal(size=(16, 5))
    x = rng.normal(size=(n, 16)).astype(np.float32)
    return x * 10 + 5, (x @ w > 0.5).astype(np.int8)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_multiclass_probe_learns(kind: str) -> None:
    res = probe_evaluation({"train": _multiclass(300, 0), "val": _multiclass(100, 1), "test": _multiclass(200, 2)},
                           "multiclass", ProbeConfig(kind=kind, hidden=32, max_epochs=60, lr=1e-2))
    assert res["test"]["accuracy"] > 0.9
    assert set(res) >= {"val", "test", "probe", "best_epoch", "n"}
    assert res["n"] == {"train": 300, "val": 100, "test": 200}


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_multilabel_probe_learns(kind: str) -> None:
    res = probe_evaluation({"train": _multilabel(400, 0), "val": _multilabel(100, 1), "test": _multilabel(200, 2)},
                           "multilabel", ProbeConfig(kind=kind, hidden=32, max_epochs=60, lr=1e-2))
    assert res["test"]["roc_auc"] > 0.9
    assert 0 < res["test"]["pr_auc"] <= 1


def test_standardisation_uses_train_only_and_is_deterministic() -> None:
    xt, yt = _multiclass(200, 0, shift=100.0)
    xv, yv = _multiclass(80, 1, shift=-50.0)
    a = fit_probe(xt, yt, xv, yv, "multiclass", ProbeConfig(seed=3, max_epochs=20))
    b = fit_probe(xt, yt, xv, yv, "multiclass", ProbeConfig(seed=3, max_epochs=20))
    np.testing.assert_allclose(a.mean, xt.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(a.std, xt.std(axis=0), rtol=1e-5)
    np.testing.assert_array_equal(a.scores(xv), b.scores(xv))
    c = fit_probe(xt, yt, xv, yv, "multiclass", ProbeConfig(seed=4, max_epochs=20))
    assert not np.array_equal(a.scores(xv), c.scores(xv))


def test_early_stopping_keeps_best_epoch() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 50)).astype(np.float32)  # pure noise: the val loss soon rises
    y = rng.integers(0, 2, 60)
    p = fit_probe(x[:40], y[:40], x[40:], y[40:], "multiclass", ProbeConfig(patience=3, max_epochs=200, lr=1e-2))
    assert p.epochs < 50
    assert p.best_val_loss < float("inf")


def test_probe_rejects_bad_shapes() -> None:
    x, y = _multiclass(20, 0)
    with pytest.raises(ValueError, match="single-label"):
        fit_probe(x, np.eye(4)[y], x, y, "multiclass")
    with pytest.raises(ValueError, match="probe kind"):
        fit_probe(x, y, x, y, "multiclass", ProbeConfig(kind="svm"))
    with pytest.raises(ValueError, match="task"):
        fit_probe(x, y, x, y, "regression")  # type: ignore[arg-type]
