from __future__ import annotations

import numpy as np
import pytest

from models.metrics import continual_metrics, roc_auc


def test_average_bwt_and_forgetting_by_hand():
    r = np.array([[0.80, np.nan, np.nan],
                  [0.78, 0.70, np.nan],
                  [0.75, 0.72, 0.90]])
    m = continual_metrics(r, ["en", "es", "fr"])
    assert m.average == pytest.approx((0.75 + 0.72 + 0.90) / 3)
    assert m.bwt == pytest.approx(((0.75 - 0.80) + (0.72 - 0.70)) / 2)
    # es improved after it was learned: negative forgetting, kept (not clipped) as in Chaudhry et al.
    assert m.forgetting == pytest.approx(((0.80 - 0.75) + (0.70 - 0.72)) / 2)
    assert m.as_dict()["matrix"][0] == [0.8, None, None]


def test_single_marketplace_has_no_transfer():
    m = continual_metrics(np.array([[0.9]]), ["en"])
    assert (m.average, m.bwt, m.forgetting) == (0.9, 0.0, 0.0)


def test_matrix_shape_is_checked():
    with pytest.raises(ValueError, match="square"):
        continual_metrics(np.zeros((2, 3)), ["a", "b"])


def test_roc_auc_needs_two_classes():
    assert roc_auc([0, 1, 1, 0], [0.1, 0.9, 0.8, 0.3]) == 1.0
    with pytest.raises(ValueError, match="one class"):
        roc_auc([1, 1], [0.2, 0.3])
