"""The paper's balanced selection D_K (Sect. 3.2, Eq. 1): quotas, indices, and `select` writing a pool.

The pool-writing tests use conftest's planted teacher, so every prediction is chosen by drawing images.
"""

import pytest
import torch

from surrogate_kd.checkpoint import save_model
from surrogate_kd.cli import main
from surrogate_kd.errors import UserError
from surrogate_kd.models import build_model
from surrogate_kd.pool import Pool
from surrogate_kd.select import balanced_indices, long_tail_quotas, select
from surrogate_kd.teacher import class_histogram


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
    # Most predicted first: class 3 (40), class 0 (30), class 1 (3); class 2 never predicted.
    quotas = long_tail_quotas(torch.tensor([30, 3, 0, 40]), total=70, ratio=4.0)
    assert quotas.tolist() == [20, 10, 0, 40]  # 1 : 1/2 : 1/4 of 70
    uneven = long_tail_quotas(torch.tensor([5, 5, 5, 5, 5]), total=101, ratio=10.0)
    # 101 x (1, 10^-1/4, 10^-1/2, 10^-3/4, 1/10) / 2.156 = 46.8 26.3 14.8 8.3 4.7: rounded, sum kept.
    assert uneven.tolist() == [47, 26, 15, 8, 5]
    assert long_tail_quotas(torch.tensor([9, 9]), total=10, ratio=1.0).tolist() == [5, 5]
    with pytest.raises(UserError):
        long_tail_quotas(torch.tensor([9, 9]), total=10, ratio=0.5)


def test_select_writes_long_tail_pool_with_teacher_labels_and_logits(planted, tmp_path):
    # 40 x class 0, 25 x class 1, 3 x class 2 (replicated), class 3 never predicted (skipped).
    data = planted.npz(tmp_path / "planted.npz", [0] * 40 + [1] * 25 + [2] * 3)
    teacher = planted.teacher()
    result = select(teacher, data, tmp_path / "lt", per_class=10, total=70, long_tail=4.0, candidates=0, device="cpu")
    pool = Pool(tmp_path / "lt")
    # Quotas 1 : 1/2 : 1/4 from the most to the least predicted class: 40, 20, 10 of 70.
    assert class_histogram(pool.labels, 4).tolist() == [40, 20, 10, 0]
    assert result["selected"] == 70 and result["replicated"] > 0
    images = pool.images(0, len(pool))
    assert torch.equal(pool.logits.argmax(1), pool.labels), "labels are the teacher's argmax"
    assert torch.equal(teacher(images.float() / 255).argmax(1), pool.labels), "images copied with their labels"
    balanced = select(teacher, data, tmp_path / "bal", per_class=10, candidates=0, device="cpu")
    assert class_histogram(Pool(tmp_path / "bal").labels, 4).tolist() in ([14, 13, 13, 0], [13, 14, 13, 0],
                                                                          [13, 13, 14, 0])
    assert balanced["relative_entropy_selected"] > balanced["relative_entropy_candidates"]


def test_select_caps_total_and_is_fixed_by_seed(planted, tmp_path):
    data = planted.npz(tmp_path / "planted.npz", [0, 1, 2, 3] * 30)
    teacher = planted.teacher()
    result = select(teacher, data, tmp_path / "a", per_class=20, cap=48, candidates=0, device="cpu")
    assert result["capped"] and len(Pool(tmp_path / "a")) == 48
    select(teacher, data, tmp_path / "b", per_class=20, cap=48, candidates=0, device="cpu")
    select(teacher, data, tmp_path / "c", per_class=20, cap=48, candidates=0, seed=1, device="cpu")
    a, b, c = (Pool(tmp_path / n).images(0, 48) for n in "abc")
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_select_command_writes_a_pool_and_refuses_a_bad_long_tail(planted, tmp_path):
    teacher = save_model(build_model("convnet_tiny", planted.spec), tmp_path / "teacher.safetensors")
    data = planted.npz(tmp_path / "planted.npz", [0, 1, 2, 3] * 16)
    assert main(["select", "--teacher", str(teacher), "--data", data, "--per-class", "8", "--candidates", "0",
                 "--out", str(tmp_path / "sel"), "--device", "cpu"]) == 0
    assert len(Pool(tmp_path / "sel")) == 32
    assert main(["select", "--teacher", str(teacher), "--data", data, "--per-class", "8",
                 "--long-tail", "0.5", "--out", str(tmp_path / "bad")]) == 2
