"""The boundary attack's two loop strategies (boundary_attack.py): 'where', the accelerator's, dispatches
the same ops for any batch and no host sync inside its loop; 'gather', the CPU's, exits early. Both
give the same pairs. Planted linear teachers from test_boundary.py."""

import pytest
import torch

from surrogate_kd.boundary import boundary_pairs
from surrogate_kd.errors import UserError
from surrogate_kd.opcount import OpCounter
from test_boundary import grey_images, three_class_teacher, two_class_teacher

METHODS = ("gradient", "bisection")


def counted(method: str, count: int, max_steps: int, strategy: str = "where",
            batch_size: int | None = None) -> OpCounter:
    """Ops of one boundary pass over `count` images (in one batch unless `batch_size` says otherwise)."""
    teacher, images = three_class_teacher(), grey_images(0.5, count, spread=40)
    with OpCounter() as ops:
        result = boundary_pairs(teacher, images, max_steps=max_steps, batch_size=batch_size or count,
                                strategy=strategy, method=method, precision="fp32")
    assert result.summary["pairs"] > count // 2, "the bookkeeping after the loop ran with pairs to keep"
    return ops


@pytest.mark.parametrize("method", METHODS)
def test_where_dispatches_the_same_ops_for_any_batch_size(method):
    small, large = counted(method, 64, 8), counted(method, 512, 8)
    assert abs(small.total - large.total) <= 0.05 * large.total, (small.total, large.total)
    # One tensor from Python data per call, in the host's choice of targets; none per batch or step.
    assert small.python_tensors == large.python_tensors <= 1


@pytest.mark.parametrize("method", METHODS)
def test_where_loop_holds_no_host_sync(method):
    short, long = counted(method, 64, 4), counted(method, 64, 8)
    assert long.total > short.total, "the loop's steps are counted"
    assert long.host_syncs == short.host_syncs, "four more steps, not one more sync"
    assert long.python_tensors == short.python_tensors
    # Twice the images in the same batch: a sync for a second batch's bookkeeping (bisection) or for the
    # gradient slots' check at the end of each round of max_steps + 1 iterations; not one per image or step.
    two_batches = counted(method, 128, 4, batch_size=64)
    assert 1 <= sum(two_batches.host_syncs.values()) - sum(short.host_syncs.values()) <= 2, two_batches.host_syncs
    if method == "gradient":  # the counter sees the CPU strategy's per-step sync, so it could see one here
        gather = counted(method, 64, 8, strategy="gather")
        assert gather.host_syncs.get("aten.nonzero", 0) > short.host_syncs.get("aten.nonzero", 0)


@pytest.mark.parametrize("method", METHODS)
def test_where_and_gather_give_the_same_pairs_across_padded_batches(method):
    teacher, images = three_class_teacher(), grey_images(0.5, 91, spread=40, seed=4)
    # 91 images in batches of at most 40: three of 31, 31, 29 (the last padded to 31 by 'where').
    results = {strategy: boundary_pairs(teacher, images, max_steps=30, batch_size=40, strategy=strategy,
                                        method=method, precision="fp32") for strategy in ("gather", "where")}
    gather, where = results["gather"], results["where"]
    assert gather.summary["batch_size"] == where.summary["batch_size"] == 31
    assert gather.summary["pairs"] > 60
    for field in ("images", "labels", "targets", "source"):
        assert torch.equal(getattr(gather, field), getattr(where, field)), field
    for key in ("success_rate", "mean_steps", "within_threshold", "pairs"):
        assert gather.summary[key] == where.summary[key], key
    if method == "gradient":  # 'where' computes every step for every image: the cost it pays for fixed launches
        assert where.summary["gradients_per_image"] > gather.summary["gradients_per_image"]


def test_where_keeps_no_pair_when_none_meets_the_threshold():
    # Too steep for any pair within 0.9 (test_boundary.py's case), in slots refilled from a set 3x their number.
    result = boundary_pairs(two_class_teacher(slope=100.0), grey_images(0.3, 24, spread=0), max_steps=60,
                            epsilon=64 / 255, batch_size=8, strategy="where", precision="fp32")
    assert result.summary["success_rate"] == 1.0 and result.summary["pairs"] == 0
    assert result.images.shape == (0, 1, 4, 4) and result.labels.shape == (0,)


def test_cpu_defaults_are_gather_and_batches_of_at_most_256():
    result = boundary_pairs(three_class_teacher(), grey_images(0.5, 300, spread=40), max_steps=5, precision="fp32")
    assert result.summary["strategy"] == "gather"
    assert result.summary["batch_size"] == 150, "300 images: two equal batches of at most 256"
    with pytest.raises(UserError, match="valid: gather, where"):
        boundary_pairs(three_class_teacher(), grey_images(0.5, 8), strategy="masks")


@pytest.mark.gpu
@pytest.mark.parametrize("method", METHODS)
def test_captured_where_on_cuda_finds_the_cpu_pairs(method):
    teacher, images = three_class_teacher(), grey_images(0.5, 300, spread=40, seed=5)
    cpu = boundary_pairs(teacher, images, max_steps=30, method=method, precision="fp32")
    cuda = boundary_pairs(teacher.cuda(), images, max_steps=30, method=method, precision="fp32", batch_size=128)
    assert cuda.summary["strategy"] == "where" and cuda.summary["batch_size"] == 100, "300 images: 3 batches"
    # The same attack on another device's arithmetic: a rare near-tie may fall the other way.
    assert abs(cuda.summary["success_rate"] - cpu.summary["success_rate"]) <= 0.02
    assert abs(cuda.summary["pairs"] - cpu.summary["pairs"]) <= 0.02 * cpu.summary["pairs"]
