import pytest

from personalens.evaluation.metrics import roc_auc


def test_auc_by_hand():
    assert roc_auc([True, True, False, False], [0.9, 0.8, 0.3, 0.1]) == 1.0
    assert roc_auc([True, False], [0.1, 0.9]) == 0.0
    # pairs: (0.9>0.5) (0.9>0.2) (0.5=0.5 -> half) (0.5>0.2) = 3.5 of 4
    assert roc_auc([True, True, False, False], [0.9, 0.5, 0.5, 0.2]) == pytest.approx(3.5 / 4)


def test_auc_needs_both_classes():
    with pytest.raises(ValueError):
        roc_auc([True, True], [0.1, 0.2])
