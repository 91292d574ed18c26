"""Fold metrics and their summary over folds."""

from __future__ import annotations

import numpy as np
import pytest

from keras_mgc.metrics import classification_metrics, mean_std, plot_confusion, summarize_folds


def test_classification_metrics_on_a_known_confusion():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 2, 2]
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": pytest.approx(2 / 3), "f1": pytest.approx(0.8), "support": 3}
    assert m["per_class"]["b"]["precision"] == pytest.approx(0.5)
    assert m["per_class"]["c"]["precision"] == pytest.approx(0.5) and m["per_class"]["c"]["recall"] == 1.0
    assert m["macro_f1"] == pytest.approx(np.mean([0.8, 0.5, 2 / 3]))


def test_absent_class_does_not_count_in_macro_averages():
    m = classification_metrics([0, 0, 1], [0, 1, 1], ["a", "b", "never"])
    assert m["per_class"]["never"]["support"] == 0
    assert m["macro_recall"] == pytest.approx(np.mean([0.5, 1.0]))


def test_mean_std_is_the_sample_std_over_finite_values():
    s = mean_std([0.8, 0.9, 1.0, float("nan")])
    assert s["mean"] == pytest.approx(0.9) and s["std"] == pytest.approx(0.1) and s["n"] == 3
    assert mean_std([0.5]) == {"mean": 0.5, "std": 0.0, "n": 1}


def test_summary_sums_confusions(tmp_path):
    a = classification_metrics([0, 1], [0, 1], ["x", "y"])
    b = classification_metrics([0, 1], [1, 1], ["x", "y"])
    s = summarize_folds([a, b])
    assert s["accuracy"]["mean"] == pytest.approx(0.75)
    assert s["confusion_matrix"] == [[1, 1], [0, 2]]
    plot_confusion(s["confusion_matrix"], ["x", "y"], tmp_path / "c.png", "t")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
