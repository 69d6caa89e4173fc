"""The confusion core and the scores derived from it: by hand, against scikit-learn, edge cases."""

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, jaccard_score, recall_score

from tcnet.metrics import confusion, scores_from_counts, thresholded_jaccard

PRED = np.array([[1, 1, 0], [0, 0, 0]], bool)
TRUTH = np.array([[1, 0, 0], [1, 0, 0]], bool)


def test_by_hand():
    # TP: (0,0); FP: (0,1); FN: (1,0); TN: the other 3
    assert confusion(PRED, TRUTH) == (1, 1, 1, 3)
    s = scores_from_counts(*confusion(PRED, TRUTH))
    # AC = 4/6, SE = 1/2, SP = 3/4, JA = 1/3, DI = 2/4
    assert s == pytest.approx({"AC": 4 / 6, "SE": 0.5, "SP": 0.75, "JA": 1 / 3, "DI": 0.5})
    assert all(isinstance(v, float) for v in s.values())


def test_valid_mask_restricts_the_pixels():
    valid = np.array([[1, 0, 1], [1, 1, 0]], bool)  # drops the FP (0,1) and the TN (1,2)
    # TP 1, FP 0, FN 1, TN 2 -> AC 3/4, SE 1/2, SP 1, JA 1/2, DI 2/3
    assert confusion(PRED, TRUTH, valid) == (1, 0, 1, 2)
    assert scores_from_counts(*confusion(PRED, TRUTH, valid)) == pytest.approx(
        {"AC": 0.75, "SE": 0.5, "SP": 1.0, "JA": 0.5, "DI": 2 / 3}
    )


def test_undefined_ratios_score_one():
    empty = np.zeros((3, 3), bool)
    full = np.ones((3, 3), bool)
    # empty truth, empty prediction: everything undefined or perfect -> 1
    assert scores_from_counts(*confusion(empty, empty)) == {"AC": 1.0, "SE": 1.0, "SP": 1.0, "JA": 1.0, "DI": 1.0}
    # all-foreground truth and prediction: SP = 0/0 -> 1
    assert scores_from_counts(*confusion(full, full))["SP"] == 1.0
    # empty truth, some prediction: SE = 0/0 -> 1; JA = DI = 0
    s = scores_from_counts(*confusion(full, empty))
    assert (s["SE"], s["JA"], s["DI"], s["SP"], s["AC"]) == (1.0, 0.0, 0.0, 0.0, 0.0)
    # nothing valid: AC = 0/0 -> 1
    assert scores_from_counts(*confusion(full, empty, empty))["AC"] == 1.0


def test_thresholded_jaccard():
    assert thresholded_jaccard(0.65) == 0.65  # >= 0.65 counts
    assert thresholded_jaccard(0.6499) == 0.0
    np.testing.assert_array_equal(thresholded_jaccard(np.array([0.2, 0.7, 1.0])), [0.0, 0.7, 1.0])


def test_numpy_torch_and_batched_agree():
    rng = np.random.default_rng(0)
    p, t, v = (rng.random((4, 1, 6, 7)) > q for q in (0.5, 0.6, 0.2))
    per_image = np.array([confusion(p[i], t[i], v[i]) for i in range(4)])
    np.testing.assert_array_equal(np.stack(confusion(p, t, v, batch=True), 1), per_image)
    tp_, tt_, tv_ = (torch.from_numpy(x) for x in (p, t, v))
    np.testing.assert_array_equal(torch.stack(confusion(tp_, tt_, tv_, batch=True), 1).numpy(), per_image)
    assert tuple(int(c) for c in confusion(tp_, tt_)) == tuple(int(c) for c in confusion(p, t))
    np.testing.assert_array_equal(np.stack(confusion(p, t, batch=True), 1).sum(0), confusion(p, t))
    # scores of torch counts are tensors equal to the NumPy ones
    st = scores_from_counts(*confusion(tp_, tt_, tv_, batch=True))
    sn = scores_from_counts(*per_image.T)
    for k in sn:
        np.testing.assert_allclose(st[k].numpy(), sn[k])
    # integer 0/1 masks are accepted like bools
    assert confusion(p.astype(np.uint8), t.astype(np.int64)) == confusion(p, t)


def test_refuses_probabilities_and_shape_mismatch():
    with pytest.raises(ValueError, match="threshold probabilities first"):
        confusion(np.full((2, 2), 0.7), TRUTH[:, :2])
    with pytest.raises(ValueError, match="threshold probabilities first"):
        confusion(torch.rand(2, 2), torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="must match"):
        confusion(PRED, TRUTH.T)


@pytest.mark.parametrize("seed,fg", [(0, 0.1), (1, 0.5), (2, 0.9)])
def test_against_scikit_learn(seed, fg):
    rng = np.random.default_rng(seed)
    t = rng.random((30, 40)) < fg
    p = np.where(rng.random(t.shape) < 0.8, t, ~t)  # 80 % right
    v = rng.random(t.shape) < 0.7
    for valid in (None, v):
        yt, yp = (t.ravel(), p.ravel()) if valid is None else (t[valid], p[valid])
        s = scores_from_counts(*confusion(p, t, valid))
        assert s["AC"] == pytest.approx(accuracy_score(yt, yp))
        assert s["SE"] == pytest.approx(recall_score(yt, yp))
        assert s["SP"] == pytest.approx(recall_score(yt, yp, pos_label=0))
        assert s["JA"] == pytest.approx(jaccard_score(yt, yp))
        assert s["DI"] == pytest.approx(f1_score(yt, yp))
        assert 0.0 <= min(s.values()) <= max(s.values()) <= 1.0
