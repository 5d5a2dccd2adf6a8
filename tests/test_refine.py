"""Refinement towards the teacher's BatchNorm statistics, on teachers whose statistics are planted."""

import pytest
import torch
from torch import nn

from surrogate_kd.config import InputSpec, RefineConfig
from surrogate_kd.errors import UserError
from surrogate_kd.models import ImageClassifier
from surrogate_kd.refine import NOISE_GRAIN, REFINE_BATCH, can_refine, grain, refine, teacher_grain

SPEC = InputSpec(8, 1, (0.0,), (1.0,), ("a", "b"))


def planted_teacher(mean: float, var: float) -> ImageClassifier:
    """A BatchNorm layer sees the raw pixels (a centre-tap conv); its running statistics say the
    teacher's data had pixels of this mean and variance. The head is zero, so the cross-entropy
    is constant and only the statistics move the images."""
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    bn = nn.BatchNorm2d(1)
    head = nn.Linear(1, 2)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0
        bn.running_mean.fill_(mean)
        bn.running_var.fill_(var)
        head.weight.zero_()
        head.bias.zero_()
    net = nn.Sequential(conv, bn, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    return ImageClassifier(net, "planted-bn", SPEC).eval()


def dark_images(count: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(40, 80, (count, 1, 8, 8), generator=g).to(torch.uint8)


def test_refined_images_take_the_statistics_the_teacher_was_trained_on():
    teacher = planted_teacher(mean=0.7, var=0.04)
    images = dark_images(64)
    labels = torch.zeros(64, dtype=torch.int64)
    out = refine(teacher, images, labels, RefineConfig(steps=60, lr=0.02, bn_weight=1.0), seed=0,
                 device=torch.device("cpu"), precision="fp32")
    before, after = images.float() / 255, out.float() / 255
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert abs(before.mean() - 0.7) > 0.4  # dark: far from the planted mean
    assert abs(after.mean() - 0.7) < 0.1
    assert after.var() > before.var()  # towards the planted variance (0.04), from about 0.0025


def test_weight_zero_leaves_the_statistics_alone():
    # The planted head is zero: the class term has no gradient, so with the statistics term off
    # (--refine-bn-weight 0) nothing may move the images.
    teacher = planted_teacher(mean=0.7, var=0.04)
    images = dark_images(16)
    out = refine(teacher, images, torch.zeros(16, dtype=torch.int64), RefineConfig(steps=10, bn_weight=0.0), seed=0,
                 device=torch.device("cpu"), precision="fp32")
    assert torch.equal(out, images)
    with pytest.raises(UserError, match="bn_weight must be >= 0"):
        RefineConfig(bn_weight=-0.1)


def test_same_seed_same_images_and_chunks_of_whole_batches_change_nothing():
    teacher = planted_teacher(mean=0.7, var=0.04)
    with torch.no_grad():  # an off-centre kernel: its zero-padded borders make the moments depend on the jitter
        teacher.net[0].weight.copy_(torch.randn(1, 1, 3, 3, generator=torch.Generator().manual_seed(0)))
    images, labels = dark_images(2 * REFINE_BATCH + 10), torch.zeros(2 * REFINE_BATCH + 10, dtype=torch.int64)
    cfg, cpu = RefineConfig(steps=3), torch.device("cpu")
    whole = refine(teacher, images, labels, cfg, seed=1, device=cpu, precision="fp32")
    again = refine(teacher, images, labels, cfg, seed=1, device=cpu, precision="fp32")
    chunked = torch.cat([refine(teacher, images[:REFINE_BATCH], labels[:REFINE_BATCH], cfg, seed=1, device=cpu,
                                precision="fp32"),
                         refine(teacher, images[REFINE_BATCH:], labels[REFINE_BATCH:], cfg, seed=1, device=cpu,
                                first_batch=1, precision="fp32")])
    other_seed = refine(teacher, images, labels, cfg, seed=2, device=cpu, precision="fp32")
    assert torch.equal(whole, again) and torch.equal(whole, chunked)
    assert not torch.equal(whole, other_seed)  # the jitter differs


def test_a_teacher_in_training_mode_keeps_its_statistics_and_its_mode():
    teacher = planted_teacher(0.5, 0.1).train()
    refine(teacher, dark_images(8), torch.zeros(8, dtype=torch.int64), RefineConfig(steps=2), seed=0,
           device=torch.device("cpu"))
    bn = teacher.net[1]
    assert teacher.training and bn.running_mean.item() == 0.5 and bn.running_var.item() == pytest.approx(0.1)


def test_a_teacher_without_batchnorm_is_refused():
    no_bn = ImageClassifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 2)), "linear", SPEC).eval()
    assert not can_refine(no_bn)
    images, labels = dark_images(4), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(UserError, match="no BatchNorm"):
        refine(no_bn, images, labels, RefineConfig(), seed=0, device=torch.device("cpu"))
    with pytest.raises(UserError, match="steps must be positive"):
        RefineConfig(steps=0)


def test_a_refinement_step_dispatches_the_same_ops_at_any_batch_size_without_host_syncs():
    """GPU readiness, counted on the CPU: the launches of a batch's steps do not grow with the batch,
    and nothing waits for the device or copies Python data to it (opcount.py)."""
    from contextlib import nullcontext

    from surrogate_kd.opcount import OpCounter
    from surrogate_kd.refine import _moment_distances, _refine_batch, batch_norms

    teacher, counts = planted_teacher(0.7, 0.04), []
    for n in (8, 32):
        with _moment_distances(batch_norms(teacher)) as distances, OpCounter() as ops:
            _refine_batch(teacher, dark_images(n), torch.zeros(n, dtype=torch.int64), RefineConfig(steps=3, blur=1.0),
                          torch.Generator().manual_seed(0), distances, nullcontext())
        assert not ops.host_syncs and not ops.python_tensors, (n, ops.host_syncs, ops.python_tensors)
        counts.append(ops.total)
    assert counts[0] == counts[1]


def test_distill_asked_to_refine_for_a_teacher_without_batchnorm_fails_before_writing(tmp_path):
    from surrogate_kd import api

    no_bn = ImageClassifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 2)), "linear", SPEC).eval()
    with pytest.raises(UserError, match="no BatchNorm running statistics") as error:
        api.distill(no_bn, "noise", tmp_path / "run", refine_steps=2, candidates=16, per_class=2, epochs=1,
                    device="cpu")
    assert "\n" not in str(error.value) and not (tmp_path / "run").exists()


def test_blur_takes_the_checkerboard_out_of_a_gradient_and_keeps_its_smooth_part():
    from surrogate_kd.refine import _gaussian_blur

    rows, cols = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    checkerboard = ((rows + cols) % 2 * 2 - 1).float().expand(2, 3, 16, 16)
    ramp = (rows.float() / 15).expand(2, 3, 16, 16)
    blur = _gaussian_blur(1.0, 3, torch.device("cpu"))
    assert blur(checkerboard)[..., 4:-4, 4:-4].abs().max() < 0.05  # away from the replicated border
    assert torch.allclose(blur(ramp)[..., 4:-4, 4:-4], ramp[..., 4:-4, 4:-4], atol=1e-5)  # linear: unchanged
    assert torch.allclose(blur(torch.full((1, 3, 5, 5), 0.3)), torch.full((1, 3, 5, 5), 0.3))
    assert _gaussian_blur(0.0, 3, torch.device("cpu"))(checkerboard) is checkerboard
    with pytest.raises(UserError, match="blur must be >= 0"):
        RefineConfig(blur=-1.0)


def test_blurred_refinement_changes_images_smoothly():
    """The point of blur: a refinement that cannot add pixel-scale grain. A random 3x3 filter's
    gradient on flat grey images is grainy; the blurred refinement's change is far smoother."""
    teacher = planted_teacher(mean=0.5, var=0.01)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        teacher.net[0].weight.copy_(torch.randn(1, 1, 3, 3, generator=g))
        teacher.net[-1].weight.copy_(torch.tensor([[1.0], [-1.0]]))
    images = torch.randint(100, 140, (32, 1, 1, 1), generator=g).to(torch.uint8).expand(32, 1, 8, 8).contiguous()
    labels = torch.zeros(32, dtype=torch.int64)

    def roughness(blur: float) -> float:
        out = refine(teacher, images, labels, RefineConfig(steps=20, bn_weight=0.0, blur=blur), seed=0,
                     device=torch.device("cpu"), precision="fp32")
        change = out.float() - images.float()
        assert change.abs().mean() > 1  # it did move the images
        return ((change[..., 1:, :] - change[..., :-1, :]).abs().mean() / change.abs().mean()).item()

    assert roughness(1.0) < 0.5 * roughness(0.0)


def test_grain_ranks_a_ramp_below_noise_below_a_checkerboard():
    rows, cols = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    ramp = (rows + cols).float() - 31
    noise = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    checkerboard = ((rows + cols) % 2 * 2 - 1).float()
    assert grain(ramp) < 0.5 and abs(grain(noise) - NOISE_GRAIN) < 0.05 and grain(checkerboard) == 4.0


def test_teacher_grain_is_a_property_of_the_teacher():
    """The figure the default refinement decides by (recipe.refine_steps): the same for the same
    teacher whatever mode it is in, and it leaves the teacher's statistics and mode alone."""
    from surrogate_kd.config import InputSpec
    from surrogate_kd.models import build_model

    torch.manual_seed(0)
    teacher = build_model("convnet_tiny", InputSpec(16, 3, (0.5,) * 3, (0.25,) * 3, ("a", "b", "c"))).train()
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    first = teacher_grain(teacher, torch.device("cpu"), images=32)
    assert teacher.training and all(torch.equal(v, state[k]) for k, v in teacher.state_dict().items())
    assert first == teacher_grain(teacher.eval(), torch.device("cpu"), images=32) and 0 < first < 10


def test_running_out_of_memory_while_refining_is_one_line_that_says_how_to_skip_it(monkeypatch):
    # Refinement is on by default for most teachers; a 224 px teacher's batch of REFINE_BATCH may not
    # fit a small card. The user gets the way out, not a traceback.
    import surrogate_kd.refine as refine_module

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(refine_module, "_refine_batch", out_of_memory)
    with pytest.raises(UserError, match="ran out of memory.*--refine-steps 0") as error:
        refine(planted_teacher(0.7, 0.04), dark_images(4), torch.zeros(4, dtype=torch.int64), RefineConfig(steps=2),
               seed=0, device=torch.device("cpu"))
    assert "\n" not in str(error.value)
