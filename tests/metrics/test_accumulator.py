"""MetricAccumulator: per-image rows, mean (macro) vs pooled (micro), AUC, inputs, errors."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import jaccard_score, roc_auc_score

from tcnet.metrics import Aggregation, MetricAccumulator, batch_dice_jaccard

KEYS = ["id", "AC", "SE", "SP", "JA", "DI", "TJA"]


def test_pooled_differs_from_mean_by_hand():
    acc = MetricAccumulator()
    # image A (1 x 4): truth 1 px, found -> TP 1, TN 3: JA = DI = 1
    acc.update("A", np.array([[1.0, 0, 0, 0]]), np.array([[1, 0, 0, 0]]))
    # image B (1 x 8, another size): truth 8 px, 1 found -> TP 1, FN 7: JA = 1/8, DI = 2/9
    acc.update("B", np.array([[0.9] + [0.1] * 7]), np.ones((1, 8)))
    rows = acc.per_image()
    assert [r["id"] for r in rows] == ["A", "B"] and list(rows[0]) == KEYS
    assert rows[1]["JA"] == pytest.approx(1 / 8) and rows[1]["DI"] == pytest.approx(2 / 9)
    mean, pooled = acc.mean(), acc.pooled()
    # mean JA = (1 + 1/8) / 2 = 0.5625; mean DI = (1 + 2/9) / 2 = 11/18; TJA = (1 + 0) / 2
    assert mean["JA"] == pytest.approx(0.5625) and mean["DI"] == pytest.approx(11 / 18)
    assert mean["TJA"] == pytest.approx(0.5)
    # pooled: TP 2, FP 0, FN 7, TN 3 -> JA = 2/9, DI = 4/11, AC = 5/12, SE = 2/9, SP = 1
    assert pooled == pytest.approx({"AC": 5 / 12, "SE": 2 / 9, "SP": 1.0, "JA": 2 / 9, "DI": 4 / 11})
    assert acc.aggregate("mean") == mean and acc.aggregate(Aggregation.POOLED) == pooled


def test_threshold_is_inclusive_and_pred_overrides():
    acc = MetricAccumulator(threshold=0.5)
    acc.update("x", np.array([[0.5, 0.4999]]), np.array([[1, 0]]))  # 0.5 counts as foreground
    assert acc.per_image()[0]["JA"] == 1.0
    acc.update("y", np.array([[0.9, 0.9]]), np.array([[1, 0]]), pred=np.array([[True, False]]))
    assert acc.per_image()[1]["JA"] == 1.0
    acc.update("z", None, np.array([[1, 0]]), pred=np.array([[0, 255]], np.uint8))  # no probs needed
    assert acc.per_image()[2]["JA"] == 0.0


def test_valid_mask_and_scikit_learn_on_random_images():
    rng = np.random.default_rng(3)
    acc = MetricAccumulator()
    all_t, all_p = [], []
    for k, shape in enumerate([(20, 30), (25, 25), (31, 17)]):
        probs, t, v = rng.random(shape), rng.random(shape) < 0.3, rng.random(shape) < 0.75
        acc.update(f"im{k}", probs, t, valid=v)
        row = acc.per_image()[-1]
        assert row["JA"] == pytest.approx(jaccard_score(t[v], probs[v] >= 0.5))
        all_t.append(t[v])
        all_p.append(probs[v] >= 0.5)
    assert acc.pooled()["JA"] == pytest.approx(jaccard_score(np.concatenate(all_t), np.concatenate(all_p)))
    for row in [*acc.per_image(), acc.mean(), acc.pooled()]:
        assert all(0.0 <= row[k] <= 1.0 for k in row if k != "id")


def test_auc_per_image_pooled_and_roc():
    rng = np.random.default_rng(4)
    acc = MetricAccumulator(with_auc=True, roc_points=50)
    ps, ts = [], []
    for k in range(3):
        t = rng.random((30, 40)) < 0.2
        p = np.round(np.clip(0.3 * t + 0.7 * rng.random(t.shape), 0, 1) * 255) / 255  # 8-bit probs
        v = np.ones_like(t)
        v[:, :5] = False
        acc.update(f"i{k}", p, t, valid=v)
        assert acc.per_image()[-1]["AUC"] == pytest.approx(roc_auc_score(t[v], p[v]))
        ps.append(p[v])
        ts.append(t[v])
    acc.update("one_class", np.full((4, 4), 0.2), np.zeros((4, 4), bool))
    assert math.isnan(acc.per_image()[-1]["AUC"])
    aucs = [r["AUC"] for r in acc.per_image()[:3]]
    assert acc.mean()["AUC"] == pytest.approx(np.mean(aucs))  # NaN left out of the mean
    pooled_ref = roc_auc_score(np.concatenate(ts + [np.zeros(16, bool)]), np.concatenate(ps + [np.full(16, 0.2)]))
    assert acc.pooled()["AUC"] == pytest.approx(pooled_ref, abs=1e-12)
    fpr, tpr = acc.roc()
    assert fpr.size <= 50 and (fpr[0], tpr[-1]) == (0.0, 1.0)


def test_batched_torch_input_equals_numpy_input():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(3, 1, 8, 9, generator=g)
    truth = (torch.rand(3, 1, 8, 9, generator=g) > 0.6).float()
    a, b = MetricAccumulator(), MetricAccumulator()
    a.update(["a", "b", "c"], probs, truth)
    for i, name in enumerate("abc"):
        b.update(name, probs[i, 0].numpy(), truth[i, 0].numpy().astype(bool))
    assert a.per_image() == b.per_image()


def test_batch_dice_jaccard_matches_the_accumulator():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 1, 10, 12, generator=g)
    target = (torch.rand(4, 10, 12, generator=g) > 0.7).long()
    valid = torch.rand(4, 1, 10, 12, generator=g) > 0.2
    target[3] = 0
    logits[3] = -5.0  # empty truth, empty prediction -> DI = JA = 1
    di, ja = batch_dice_jaccard(logits, target, valid)
    acc = MetricAccumulator()
    acc.update([str(i) for i in range(4)], torch.sigmoid(logits), target, valid=valid)
    rows = acc.per_image()
    np.testing.assert_allclose(di.numpy(), [r["DI"] for r in rows])
    np.testing.assert_allclose(ja.numpy(), [r["JA"] for r in rows])
    assert di[3] == 1.0 and ja[3] == 1.0
    # two-channel logits: foreground = arg-max class 1
    two = torch.cat([torch.zeros_like(logits), logits], dim=1)
    torch.testing.assert_close(batch_dice_jaccard(two, target, valid)[1], ja)


def test_drive_sized_set_with_auc_is_quick_and_bounded():
    rng = np.random.default_rng(5)
    acc = MetricAccumulator(with_auc=True)
    for k in range(4):  # 4 DRIVE-size images (584 x 565) with FOV and float probabilities
        t = rng.random((584, 565)) < 0.12
        acc.update(f"{k:02d}", rng.random(t.shape).astype(np.float32), t, valid=rng.random(t.shape) < 0.8)
    state = [v.nbytes for v in (acc._hist.pos, acc._hist.neg)]
    assert sum(state) == 2 * acc._hist.size * 8 < 2 * 100_000 * 8  # fixed, whatever the number of pixels
    assert 0.45 < acc.pooled()["AUC"] < 0.55


def test_errors():
    acc = MetricAccumulator()
    with pytest.raises(ValueError, match="no images"):
        acc.mean()
    acc.update("a", np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="already added"):
        acc.update("a", np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="2x3"):
        acc.update("b", np.zeros((3, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        acc.update("c", np.full((2, 2), 3.0), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="2 ids but 3 images"):
        acc.update(["d", "e"], np.zeros((3, 2, 2)), np.zeros((3, 2, 2)))
    with pytest.raises(ValueError, match="with_auc"):
        acc.roc()
    with pytest.raises(ValueError, match="probabilities"):
        MetricAccumulator(with_auc=True).update("a", np.zeros((2, 2), bool), np.zeros((2, 2)))
