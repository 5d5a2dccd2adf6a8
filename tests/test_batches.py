"""The batch streams (batches.py): `batch(step)` a pure function of the step, and `make_batches`
choosing the stream a description of the data asks for; on conftest's planted teacher."""

import pytest
import torch

from surrogate_kd.batches import ArrayBatches, OnlineBalancedBatches, SourceBatches, make_batches
from surrogate_kd.config import DataConfig
from surrogate_kd.data import ImageSet
from surrogate_kd.errors import UserError
from surrogate_kd.teacher import class_histogram

CPU = torch.device("cpu")


def test_array_batches_shuffle_each_epoch_and_serve_a_step_the_same_way_twice():
    images = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1)  # image i holds the value i
    batches = ArrayBatches(ImageSet(images, torch.arange(40), None, "counted"), 16, 0, CPU)
    assert batches.steps_per_epoch == 2, "the last partial batch is dropped"
    first = torch.cat([batches.batch(step)[0] for step in range(2)]).flatten()
    assert first.unique().numel() == 32, "an epoch serves each image at most once"
    x, y = batches.batch(3)
    assert torch.equal(x.flatten().long(), y), "labels travel with their images"
    assert not torch.equal(torch.cat([batches.batch(step)[0] for step in range(2, 4)]).flatten(), first)
    assert torch.equal(ArrayBatches(ImageSet(images, None, None, "again"), 16, 0, CPU).batch(1)[0], batches.batch(1)[0])


def test_fewer_images_than_a_batch_is_a_clear_error():
    tiny = ImageSet(torch.zeros(10, 1, 16, 16, dtype=torch.uint8), None, None, "ten")
    with pytest.raises(UserError, match="fewer than one batch"):
        ArrayBatches(tiny, 64, 0, CPU)


def test_source_batches_are_fresh_every_step_and_a_function_of_it():
    batches = SourceBatches("noise", 16, 1, 8, seed=0, device=CPU, epoch_size=20)
    x, y = batches.batch(1)
    assert x.shape == (8, 1, 16, 16) and x.dtype == torch.uint8 and y is None
    assert batches.steps_per_epoch == 2
    assert torch.equal(SourceBatches("noise", 16, 1, 8, seed=0, device=CPU, epoch_size=20).batch(1)[0], x)
    assert not torch.equal(batches.batch(0)[0], x)


def test_online_balancing_keeps_quotas_and_is_a_function_of_step(planted):
    teacher = planted.teacher()
    batches = OnlineBalancedBatches(teacher, "noise", batch_size=16, seed=0, device="cpu", epoch_size=64, chunk=64)
    epoch = [batches.batch(step) for step in range(batches.steps_per_epoch)]
    drawn = teacher.net.calls
    images, labels = torch.cat([b[0] for b in epoch]), torch.cat([b[1] for b in epoch])
    assert class_histogram(labels, 4).tolist() == [16, 16, 16, 16]
    assert torch.equal(teacher(images.float() / 255).argmax(1), labels), "labels are the teacher's answers"
    assert images.unique(dim=0).shape[0] == 64, "quotas filled with fresh images, no replication needed"
    # Drawing stops once every quota is full (4 classes, 16 each: a few chunks of 64), far below the budget.
    assert 64 < drawn <= 64 * 8 < batches.max_draws
    report = batches.report()  # what the teacher made of the draws, before the quotas (like a fixed set's candidates)
    assert report["stream"]["draws"] == sum(report["class_histogram"]) == drawn
    assert report["stream"]["epochs_drawn"] == 1 and report["stream"]["draws_per_kept_image"] == drawn / 64
    assert 0 < report["relative_entropy"] <= 1 and isinstance(report["rare_classes"], str)

    resumed = OnlineBalancedBatches(teacher, "noise", batch_size=16, seed=0, device="cpu", epoch_size=64, chunk=64)
    assert torch.equal(resumed.batch(5)[0], batches.batch(5)[0]), "batch(step) depends on the step only"
    assert not torch.equal(batches.batch(4)[0], batches.batch(0)[0]), "each epoch draws fresh images"

    # A draw budget too small to fill the quotas: short classes are replicated, the total is kept.
    short = OnlineBalancedBatches(teacher, "noise", batch_size=16, seed=0, device="cpu", epoch_size=64, chunk=32,
                                  max_draws=32)
    counts = class_histogram(torch.cat([short.batch(s)[1] for s in range(4)]), 4)
    assert counts.sum() == 64 and counts.max() - counts[counts > 0].min() <= 1


def test_make_batches_picks_the_stream_the_data_description_asks_for(planted, tmp_path):
    teacher = planted.teacher()
    online, _ = make_batches(teacher, DataConfig("noise", 1000, per_class=8, stream=True), 16, 0, CPU)
    assert isinstance(online, OnlineBalancedBatches) and online.steps_per_epoch == 2  # 8 per class x 4 classes
    fresh, _ = make_batches(teacher, DataConfig("noise", candidates=64, per_class=None, stream=True), 16, 0, CPU)
    assert isinstance(fresh, SourceBatches) and fresh.steps_per_epoch == 4

    data = planted.npz(tmp_path / "planted.npz", [0] * 30 + [1] * 6 + [2] * 12)
    fixed, info = make_batches(teacher, DataConfig(data, candidates=0, per_class=8), 16, 0, CPU)
    # 8 per class x 4 classes = 32 kept although class 3 is never predicted (D_K keeps the total).
    assert isinstance(fixed, ArrayBatches) and info["candidates"] == 48 and info["selected"] == 32
    assert info["class_histogram"] == [30, 6, 12, 0]
    labels = torch.cat([fixed.batch(step)[1] for step in range(fixed.steps_per_epoch)])
    counts = class_histogram(labels, 4)
    assert counts[3] == 0 and sorted(counts[:3].tolist()) == [10, 11, 11], "balanced by the teacher's answers"
    with pytest.raises(UserError, match="needs an image source"):
        make_batches(teacher, DataConfig(data, 1000, None, stream=True), 16, 0, CPU)
