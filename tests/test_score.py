"""Teacher-guided sets and the distillability score, on a planted teacher whose answers are known.

The planted teacher predicts the brightest quadrant of a 16x16 image, so a test chooses every
prediction by drawing images; its penultimate features are the four quadrant means.
"""

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from surrogate_kd.cli import main
from surrogate_kd.config import InputSpec
from surrogate_kd.errors import UserError
from surrogate_kd.models import ImageClassifier
from surrogate_kd.pool import Pool, write_pool
from surrogate_kd.score import dispersion, score
from surrogate_kd.select import (OnlineBalancedBatches, class_histogram, relative_entropy, select, split_by_class_map,
                                 teacher_logits)

SPEC = InputSpec(16, 1, (0.5,), (0.25,), ("c0", "c1", "c2", "c3"))


class Quadrants(nn.Module):
    """Logits = 10 x (mean of each quadrant): the brightest quadrant wins."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 4)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(4) * 10)
            self.head.bias.zero_()
        self.calls = 0  # images seen, to tell a cache hit from a recomputation

    def features(self, x):  # (B, 1, 16, 16) -> (B, 4): quadrants in row order = class ids
        return F.adaptive_avg_pool2d(x, 2).flatten(1)

    def forward(self, x):
        self.calls += x.shape[0]
        return self.head(self.features(x))


def planted_teacher() -> ImageClassifier:
    return ImageClassifier(Quadrants(), "quadrants", SPEC)


def planted_images(classes, seed=0) -> np.ndarray:
    """uint8 (N, 16, 16): image i is dim noise with quadrant classes[i] brightened (varying amounts)."""
    g = np.random.default_rng(seed)
    images = g.integers(0, 100, (len(classes), 16, 16))
    for i, c in enumerate(classes):
        r, col = divmod(int(c), 2)
        images[i, r * 8:(r + 1) * 8, col * 8:(col + 1) * 8] += 120 + g.integers(0, 35, (8, 8))
    return images.astype(np.uint8)


def planted_npz(path, classes, seed=0):
    np.savez(path, images=planted_images(classes, seed))
    return str(path)


def test_select_writes_long_tail_pool_with_teacher_labels_and_logits(tmp_path):
    # 40 x class 0, 25 x class 1, 3 x class 2 (replicated), class 3 never predicted (skipped).
    data = planted_npz(tmp_path / "planted.npz", [0] * 40 + [1] * 25 + [2] * 3)
    teacher = planted_teacher()
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


def test_select_caps_total_and_is_fixed_by_seed(tmp_path):
    data = planted_npz(tmp_path / "planted.npz", [0, 1, 2, 3] * 30)
    teacher = planted_teacher()
    result = select(teacher, data, tmp_path / "a", per_class=20, cap=48, candidates=0, device="cpu")
    assert result["capped"] and len(Pool(tmp_path / "a")) == 48
    select(teacher, data, tmp_path / "b", per_class=20, cap=48, candidates=0, device="cpu")
    select(teacher, data, tmp_path / "c", per_class=20, cap=48, candidates=0, seed=1, device="cpu")
    a, b, c = (Pool(tmp_path / n).images(0, 48) for n in "abc")
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_selected_pool_logits_are_reused_not_recomputed(tmp_path):
    data = planted_npz(tmp_path / "planted.npz", [0, 1, 2, 3] * 8)
    teacher = planted_teacher()
    select(teacher, data, tmp_path / "sel", per_class=4, candidates=0, device="cpu")
    teacher.net.calls = 0
    logits = teacher_logits(teacher, Pool(tmp_path / "sel").images(0, 16), str(tmp_path / "sel"))
    assert teacher.net.calls == 0 and torch.equal(logits, Pool(tmp_path / "sel").logits)


def test_stale_logits_cache_is_detected_and_recomputed(tmp_path):
    teacher = planted_teacher()
    pool_dir = tmp_path / "pool"
    write_pool(pool_dir, [torch.from_numpy(planted_images([0, 1, 2, 3] * 4)).unsqueeze(1)], {"source": "test"})

    def logits():
        return teacher_logits(teacher, Pool(pool_dir).images(0, 16), str(pool_dir))

    first = logits()
    assert teacher.net.calls == 16 and len(list(pool_dir.glob("teacher-logits-*.npy"))) == 1
    assert torch.equal(logits(), first) and teacher.net.calls == 16, "a fresh cache is reused"

    # The pool changes in place (same shape, same manifest): the cache must not be reused.
    shard = pool_dir / "images-00000.npy"
    np.save(shard, planted_images([3, 2, 1, 0] * 4, seed=1)[..., None])
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    second = logits()
    assert teacher.net.calls == 32, "recomputed after the pool changed"
    assert torch.equal(second.argmax(1), torch.tensor([3, 2, 1, 0] * 4))

    # Another teacher (weights changed) gets its own logits, not the first teacher's.
    with torch.no_grad():
        teacher.net.head.weight.copy_(torch.eye(4).flip(0) * 10)
    third = logits()
    assert teacher.net.calls == 48 and torch.equal(third.argmax(1), torch.tensor([0, 1, 2, 3] * 4))


def test_score_ranks_balanced_above_collapsed_and_reports_replication(tmp_path):
    teacher = planted_teacher()
    balanced = planted_npz(tmp_path / "balanced.npz", [0, 1, 2, 3] * 50)
    collapsed = planted_npz(tmp_path / "collapsed.npz", [2] * 200)
    # Every class equally often (relative entropy 1, like `balanced`) but 2 distinct images per class.
    np.savez(tmp_path / "replicated.npz", images=np.repeat(planted_images([0, 1, 2, 3] * 2), 25, axis=0))
    replicated = str(tmp_path / "replicated.npz")
    rows = score(teacher, [collapsed, replicated, balanced], tmp_path / "report", device="cpu")
    assert [r["data"] for r in rows][2] == collapsed
    by_name = {r["data"]: r for r in rows}
    # The score cannot tell 8 images replicated from 200 distinct ones (docs/selection.md); the
    # row says so: 192 of the 200 repeat another, and each class's region is covered less.
    assert by_name[replicated]["duplicates"] == pytest.approx(192 / 200)
    assert by_name[balanced]["duplicates"] == 0.0
    assert by_name[collapsed]["relative_entropy"] == pytest.approx(0.0) and by_name[collapsed]["classes_missing"] == 3
    assert by_name[replicated]["relative_entropy"] == pytest.approx(1.0) == by_name[balanced]["relative_entropy"]
    assert by_name[replicated]["class_coverage"] < by_name[balanced]["class_coverage"]
    assert by_name[balanced]["class_histogram"] == [50, 50, 50, 50]
    assert by_name[replicated]["relative_entropy_distinct"] == pytest.approx(1.0), "2 distinct images per class"
    assert json.loads((tmp_path / "report" / "score.json").read_text())[2]["data"] == collapsed
    assert (tmp_path / "report" / "class_histograms.png").stat().st_size > 0


def test_score_sees_balance_made_by_copies(tmp_path):
    # 60 distinct images of class 0; classes 1-3 one image each, copied 60 times: a flat histogram
    # that only replication made flat, ranked below 240 distinct images of the same classes.
    images = np.concatenate([planted_images([0] * 60), np.repeat(planted_images([1, 2, 3], seed=1), 60, axis=0)])
    np.savez(tmp_path / "copies.npz", images=images)
    distinct = planted_npz(tmp_path / "distinct.npz", [0, 1, 2, 3] * 60, seed=2)
    copies = str(tmp_path / "copies.npz")
    rows = score(planted_teacher(), [copies, distinct], device="cpu")
    assert [r["data"] for r in rows] == [distinct, copies]
    row = rows[1]
    assert row["relative_entropy"] == pytest.approx(1.0)
    assert row["relative_entropy_distinct"] == pytest.approx(relative_entropy(torch.tensor([60, 1, 1, 1])))
    assert row["duplicates"] == pytest.approx(177 / 240)


def test_dispersion_is_mean_pairwise_cosine_distance():
    f = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    unit = F.normalize(f, dim=1)
    pairs = [(i, j) for i in range(3) for j in range(3) if i != j]
    expected = sum(1 - float(unit[i] @ unit[j]) for i, j in pairs) / len(pairs)
    assert dispersion(f) == pytest.approx(expected)
    assert dispersion(torch.ones(5, 3)) == pytest.approx(0.0, abs=1e-9)
    assert dispersion(f[:1]) == 0.0


def test_class_map_splits_in_and_out_of_domain_and_rejects_a_mismatched_teacher(tmp_path):
    from surrogate_kd.data import ImageSet

    labels = torch.arange(6).repeat(3)  # dataset classes a..f, 3 images each
    dataset = ImageSet(torch.zeros(18, 1, 16, 16, dtype=torch.uint8), labels, tuple("abcdef"), "real")
    class_map = tmp_path / "map.yaml"
    class_map.write_text(yaml.safe_dump({"c0": ["a"], "c1": ["b", "c"], "c2": [3], "c3": ["e"]}))
    id_set, ood = split_by_class_map(dataset, class_map, planted_teacher())
    assert id_set.labels.tolist() == [0, 1, 1, 2, 3] * 3 and id_set.classes == SPEC.classes
    assert ood.labels.tolist() == [5, 5, 5]

    incomplete = tmp_path / "incomplete.json"
    incomplete.write_text(json.dumps({"c0": ["a"], "c1": [], "c2": ["d"], "c3": ["e"]}))
    id_set, ood = split_by_class_map(dataset, incomplete, planted_teacher())
    assert id_set is None and sorted(set(ood.labels.tolist())) == [1, 2, 5], "paper: no ID subset when incomplete"

    three = tmp_path / "three.json"
    three.write_text(json.dumps({"c0": ["a"], "c1": ["b"], "c2": ["c"]}))
    with pytest.raises(UserError, match="3 teacher classes but the teacher has 4"):
        split_by_class_map(dataset, three, planted_teacher())
    with pytest.raises(UserError, match="not a class of"):
        split_by_class_map(dataset, {"c0": ["z"], "c1": [], "c2": [], "c3": []}, planted_teacher())


def test_online_balancing_keeps_quotas_and_is_a_function_of_step():
    teacher = planted_teacher()
    batches = OnlineBalancedBatches(teacher, "noise", batch_size=16, seed=0, device="cpu", epoch_size=64, chunk=64)
    epoch = [batches.batch(step) for step in range(batches.steps_per_epoch)]
    drawn = teacher.net.calls
    images, labels = torch.cat([b[0] for b in epoch]), torch.cat([b[1] for b in epoch])
    assert class_histogram(labels, 4).tolist() == [16, 16, 16, 16]
    assert torch.equal(teacher(images.float() / 255).argmax(1), labels), "labels are the teacher's answers"
    assert images.unique(dim=0).shape[0] == 64, "quotas filled with fresh images, no replication needed"
    # Drawing stops once every quota is full (4 classes, 16 each: a few chunks of 64), far below the budget.
    assert 64 < drawn <= 64 * 8 < batches.max_draws

    resumed = OnlineBalancedBatches(teacher, "noise", batch_size=16, seed=0, device="cpu", epoch_size=64, chunk=64)
    assert torch.equal(resumed.batch(5)[0], batches.batch(5)[0]), "batch(step) depends on the step only"
    assert not torch.equal(batches.batch(4)[0], batches.batch(0)[0]), "each epoch draws fresh images"

    # A draw budget too small to fill the quotas: short classes are replicated, the total is kept.
    short = OnlineBalancedBatches(teacher, "noise", batch_size=16, seed=0, device="cpu", epoch_size=64, chunk=32,
                                  max_draws=32)
    counts = class_histogram(torch.cat([short.batch(s)[1] for s in range(4)]), 4)
    assert counts.sum() == 64 and counts.max() - counts[counts > 0].min() <= 1


def test_select_and_score_commands(tmp_path, capsys):
    from surrogate_kd.checkpoint import save_model
    from surrogate_kd.models import build_model

    teacher = save_model(build_model("convnet_tiny", SPEC), tmp_path / "teacher.safetensors")
    data = planted_npz(tmp_path / "planted.npz", [0, 1, 2, 3] * 16)
    assert main(["select", "--teacher", str(teacher), "--data", data, "--per-class", "8", "--candidates", "0",
                 "--out", str(tmp_path / "sel"), "--device", "cpu"]) == 0
    assert len(Pool(tmp_path / "sel")) == 32
    capsys.readouterr()
    assert main(["score", "--teacher", str(teacher), "--data", data, "--data", str(tmp_path / "sel"), "--data", "noise",
                 "--candidates", "64", "--out", str(tmp_path / "score"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "| image set |" in out and "noise" in out
    assert len(json.loads((tmp_path / "score" / "score.json").read_text())) == 3
    assert main(["select", "--teacher", str(teacher), "--data", data, "--per-class", "8",
                 "--long-tail", "0.5", "--out", str(tmp_path / "bad")]) == 2
