"""What a teacher makes of images (teacher.py): its fingerprint, its class histogram and relative
entropy, the logits cache beside pools, and candidate loading; on conftest's planted teacher."""

import os

import numpy as np
import pytest
import torch

from surrogate_kd.errors import UserError
from surrogate_kd.pool import Pool, write_pool
from surrogate_kd.select import select
from surrogate_kd.teacher import (class_histogram, is_source, load_candidates, relative_entropy, teacher_fingerprint,
                                  teacher_logits)


def test_relative_entropy_of_known_histograms():
    assert relative_entropy(torch.tensor([5, 5, 5, 5])) == pytest.approx(1.0)
    assert relative_entropy(torch.tensor([0, 9, 0, 0])) == pytest.approx(0.0)
    # Two of four classes equally: H = log 2, relative = log 2 / log 4 = 0.5.
    assert relative_entropy(torch.tensor([3, 0, 3, 0])) == pytest.approx(0.5)
    with pytest.raises(UserError):
        relative_entropy(torch.tensor([0, 0, 0]))


def test_class_histogram_counts_every_class_including_missing_ones():
    assert class_histogram(torch.tensor([3, 0, 3, 3]), 5).tolist() == [1, 0, 0, 3, 0]
    assert class_histogram(torch.tensor([[1], [1]]), 2).tolist() == [0, 2], "any shape of predictions"


def test_fingerprint_follows_the_weights_not_the_object(planted):
    teacher = planted.teacher()
    assert teacher_fingerprint(teacher) == teacher_fingerprint(planted.teacher()), "same weights, same teacher"
    with torch.no_grad():
        teacher.net.head.bias[0] += 1e-3
    assert teacher_fingerprint(teacher) != teacher_fingerprint(planted.teacher()), "any weight change is seen"


def test_selected_pool_logits_are_reused_not_recomputed(planted, tmp_path):
    data = planted.npz(tmp_path / "planted.npz", [0, 1, 2, 3] * 8)
    teacher = planted.teacher()
    select(teacher, data, tmp_path / "sel", per_class=4, candidates=0, device="cpu")
    teacher.net.calls = 0
    logits = teacher_logits(teacher, Pool(tmp_path / "sel").images(0, 16), str(tmp_path / "sel"))
    assert teacher.net.calls == 0 and torch.equal(logits, Pool(tmp_path / "sel").logits)


def test_stale_logits_cache_is_detected_and_recomputed(planted, tmp_path):
    teacher = planted.teacher()
    pool_dir = tmp_path / "pool"
    write_pool(pool_dir, [torch.from_numpy(planted.images([0, 1, 2, 3] * 4)).unsqueeze(1)], {"source": "test"})

    def logits():
        return teacher_logits(teacher, Pool(pool_dir).images(0, 16), str(pool_dir))

    first = logits()
    assert teacher.net.calls == 16 and len(list(pool_dir.glob("teacher-logits-*.npy"))) == 1
    assert torch.equal(logits(), first) and teacher.net.calls == 16, "a fresh cache is reused"

    # The pool changes in place (same shape, same manifest): the cache must not be reused.
    shard = pool_dir / "images-00000.npy"
    np.save(shard, planted.images([3, 2, 1, 0] * 4, seed=1)[..., None])
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    second = logits()
    assert teacher.net.calls == 32, "recomputed after the pool changed"
    assert torch.equal(second.argmax(1), torch.tensor([3, 2, 1, 0] * 4))

    # Another teacher (weights changed) gets its own logits, not the first teacher's.
    with torch.no_grad():
        teacher.net.head.weight.copy_(torch.eye(4).flip(0) * 10)
    third = logits()
    assert teacher.net.calls == 48 and torch.equal(third.argmax(1), torch.tensor([0, 1, 2, 3] * 4))


def test_candidates_come_from_a_source_or_a_seeded_subset_of_a_set(planted, tmp_path):
    teacher = planted.teacher()
    assert is_source("noise") and not is_source(str(tmp_path / "planted.npz"))
    images, logits = load_candidates(teacher, "noise", 24, seed=0)
    assert images.images.shape == (24, 1, 16, 16) and images.images.dtype == torch.uint8
    assert logits.shape == (24, 4) and torch.equal(logits, teacher_logits(teacher, images.images))
    with pytest.raises(UserError, match="positive candidate count"):
        load_candidates(teacher, "noise", 0, seed=0)

    classes = [0, 1, 2, 3] * 10
    data = planted.npz(tmp_path / "planted.npz", classes)
    subset, logits = load_candidates(teacher, data, 12, seed=0)
    assert len(subset) == 12 and logits.shape == (12, 4)
    assert torch.equal(load_candidates(teacher, data, 12, seed=0)[0].images, subset.images), "fixed by the seed"
    assert not torch.equal(load_candidates(teacher, data, 12, seed=1)[0].images, subset.images)
    assert len(load_candidates(teacher, data, 0, seed=0)[0]) == len(classes), "0 keeps every image"
