"""Relative entropy and the paper's balanced selection D_K (Sect. 3.2, Eq. 1)."""

import pytest
import torch

from surrogate_kd.errors import UserError
from surrogate_kd.select import balanced_indices, class_histogram, relative_entropy


def test_relative_entropy_of_known_histograms():
    assert relative_entropy(torch.tensor([5, 5, 5, 5])) == pytest.approx(1.0)
    assert relative_entropy(torch.tensor([0, 9, 0, 0])) == pytest.approx(0.0)
    # Two of four classes equally: H = log 2, relative = log 2 / log 4 = 0.5.
    assert relative_entropy(torch.tensor([3, 0, 3, 0])) == pytest.approx(0.5)
    with pytest.raises(UserError):
        relative_entropy(torch.tensor([0, 0, 0]))


def test_balanced_selection_reproduces_quota_with_replication_and_skipping():
    # Class 0: plenty, class 1: only 3 (replicated), class 2: never predicted (skipped), class 3: plenty.
    predictions = torch.tensor([0] * 50 + [1] * 3 + [3] * 40)
    index = balanced_indices(predictions, num_classes=4, per_class=10)
    assert index.numel() == 40, "the total is kept although class 2 is missing"
    counts = class_histogram(predictions[index], 4)
    assert counts[2] == 0
    assert sorted(counts[[0, 1, 3]].tolist()) == [13, 13, 14]  # 40 split over three present classes
    ones = index[predictions[index] == 1]
    assert set(ones.tolist()) == {50, 51, 52}, "a rare class is replicated, not padded with others"
    assert torch.bincount(ones).max() - torch.bincount(ones)[50:].min() <= 1, "replicated as evenly as possible"
    zeros = index[predictions[index] == 0]
    assert zeros.unique().numel() == zeros.numel(), "a plentiful class is sampled without replacement"


def test_selection_is_fixed_by_seed():
    predictions = torch.randint(0, 5, (1000,), generator=torch.Generator().manual_seed(1))
    a = balanced_indices(predictions, 5, 20, seed=3)
    assert torch.equal(a, balanced_indices(predictions, 5, 20, seed=3))
    assert not torch.equal(a, balanced_indices(predictions, 5, 20, seed=4))


def test_selection_rejects_bad_counts():
    with pytest.raises(UserError):
        balanced_indices(torch.tensor([0, 1]), 2, per_class=0)


def test_long_tail_quotas_decay_geometrically_from_the_most_predicted_class():
    from surrogate_kd.select import long_tail_quotas

    # Most predicted first: class 3 (40), class 0 (30), class 1 (3); class 2 never predicted.
    quotas = long_tail_quotas(torch.tensor([30, 3, 0, 40]), total=70, ratio=4.0)
    assert quotas.tolist() == [20, 10, 0, 40]  # 1 : 1/2 : 1/4 of 70
    uneven = long_tail_quotas(torch.tensor([5, 5, 5, 5, 5]), total=101, ratio=10.0)
    # 101 x (1, 10^-1/4, 10^-1/2, 10^-3/4, 1/10) / 2.156 = 46.8 26.3 14.8 8.3 4.7: rounded, sum kept.
    assert uneven.tolist() == [47, 26, 15, 8, 5]
    assert long_tail_quotas(torch.tensor([9, 9]), total=10, ratio=1.0).tolist() == [5, 5]
    with pytest.raises(UserError):
        long_tail_quotas(torch.tensor([9, 9]), total=10, ratio=0.5)
