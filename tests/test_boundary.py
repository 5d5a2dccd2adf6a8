"""Decision-boundary samples against planted linear teachers, whose boundaries are known exactly."""

import json

import pytest
import torch
from torch import nn

from surrogate_kd.api import train_teacher
from surrogate_kd.batches import EpochBoundaryBatches
from surrogate_kd.boundary import (GREY_LEVEL, bold_driver, boundary_pairs, choose_partners, choose_targets,
                                   level_deficits)
from surrogate_kd.checkpoint import load_model
from surrogate_kd.cli import main
from surrogate_kd.config import InputSpec, TrainConfig
from surrogate_kd.data import ImageSet, open_images
from surrogate_kd.runtime import predict
from surrogate_kd.errors import UserError
from surrogate_kd.models import ImageClassifier


def linear_teacher(weight: torch.Tensor, bias: torch.Tensor) -> ImageClassifier:
    """logits = weight @ x.flatten() + bias on 4x4 gray images; mean 0 / std 1, so no rescaling."""
    num_classes = weight.shape[0]
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, num_classes))
    with torch.no_grad():
        net[1].weight.copy_(weight)
        net[1].bias.copy_(bias)
    return ImageClassifier(net, "planted-linear", InputSpec(4, 1, (0.0,), (1.0,), tuple(map(str, range(num_classes)))))


def two_class_teacher(slope: float = 1.0) -> ImageClassifier:
    """Class 1 iff the pixel sum exceeds 8 (mean grey 0.5): logit difference slope * (sum - 8)."""
    return linear_teacher(torch.stack([torch.zeros(16), torch.full((16,), slope)]), torch.tensor([0.0, -8 * slope]))


def three_class_teacher() -> ImageClassifier:
    """Random planted directions; all three logits meet at the uniform grey image."""
    weight = torch.randn(3, 16, generator=torch.Generator().manual_seed(0)) * 2
    return linear_teacher(weight, -weight.sum(1) * 0.5)


def grey_images(level: float, count: int, spread: int = 10, seed: int = 0) -> torch.Tensor:
    """(count, 1, 4, 4) uint8 around a grey level, +-spread grey levels of noise."""
    noise = torch.randint(-spread, spread + 1, (count, 1, 4, 4), generator=torch.Generator().manual_seed(seed))
    return (round(level * 255) + noise).clamp(0, 255).to(torch.uint8)


def exact_logits(teacher: ImageClassifier, images: torch.Tensor) -> torch.Tensor:
    """The planted teacher's logits in float64 from uint8 images: the analytic reference."""
    linear = teacher.net[1]
    return images.double().div(255).flatten(1) @ linear.weight.double().T + linear.bias.double()


def margin(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """logit of `classes` minus the best other logit: > 0 inside that class, 0 on its boundary."""
    own = logits.gather(1, classes[:, None]).squeeze(1)
    return own - logits.scatter(1, classes[:, None], -torch.inf).max(1).values


# --------------------------------------------------------------------------- pairs

def test_pairs_straddle_the_planted_boundary_within_the_threshold():
    teacher = three_class_teacher()
    images = grey_images(0.5, 96, spread=40)
    result = boundary_pairs(teacher, images, targets="random", threshold=0.9, max_steps=40, precision="fp32")
    k = len(result.targets)
    assert result.summary["success_rate"] > 0.9 and k > 80
    assert result.images.shape == (4 * k, 1, 4, 4) and result.labels.shape == (4 * k,)
    pre, pre_labels = result.part("pre")
    post, post_labels = result.part("post")
    pre_logits, post_logits = exact_logits(teacher, pre), exact_logits(teacher, post)
    assert (pre_logits.argmax(1) != result.targets).all(), "pre-success images are not yet the target"
    assert (post_logits.argmax(1) == result.targets).all(), "post-success images are the target"
    assert torch.equal(pre_logits.argmax(1), pre_labels) and torch.equal(post_labels, result.targets)
    for logits in (pre_logits, post_logits):
        assert (logits.softmax(1).max(1).values <= 0.9).all(), "both halves of a pair sit near the border"
    # Pre is the last iterate: never further from t than the original (equal when one step crossed).
    original_margin = margin(exact_logits(teacher, images[result.source]), result.targets)
    assert (margin(pre_logits, result.targets) >= original_margin).all()
    assert (margin(pre_logits, result.targets) > original_margin).float().mean() > 0.5


def test_deeper_copies_move_away_from_the_boundary_into_their_own_class():
    teacher = two_class_teacher()
    result = boundary_pairs(teacher, grey_images(0.3, 32), targets="random", max_steps=60, epsilon=96 / 255,
                            precision="fp32")
    assert len(result.targets) == 32
    for role in ("pre", "post"):
        images, labels = result.part(role)
        deeper, deeper_labels = result.part(f"{role}_deeper")
        assert torch.equal(deeper_labels, labels), "a deeper copy stays in its own class"
        before = margin(exact_logits(teacher, images), labels)
        after = margin(exact_logits(teacher, deeper), labels)
        assert (after > before).all(), f"{role}: the deeper copy is further from the boundary"


def test_the_pairs_or_their_deeper_copies_alone_are_the_full_attacks_blocks():
    teacher = two_class_teacher()
    options = dict(targets="random", max_steps=60, epsilon=96 / 255, precision="fp32")
    full = boundary_pairs(teacher, grey_images(0.3, 32), **options)
    pairs = boundary_pairs(teacher, grey_images(0.3, 32), deeper=False, **options)
    assert len(pairs.labels) == 2 * len(pairs.targets) == len(full.labels) // 2 == pairs.summary["samples"]
    assert torch.equal(pairs.images, full.images[:2 * len(full.targets)]), "the same pre and post images"
    assert torch.equal(pairs.part("post")[0], full.part("post")[0])
    assert pairs.summary["gradients_per_image"] < full.summary["gradients_per_image"], "the copies are not computed"
    copies = boundary_pairs(teacher, grey_images(0.3, 32), pairs=False, **options)
    assert copies.roles == ("pre_deeper", "post_deeper") and len(copies.labels) == 2 * len(copies.targets)
    assert torch.equal(copies.images, full.images[2 * len(full.targets):]), "the same deeper copies"
    assert torch.equal(copies.part("post_deeper")[1], full.part("post_deeper")[1])
    bisection = dict(targets="random", method="bisection", precision="fp32")
    full = boundary_pairs(three_class_teacher(), grey_images(0.5, 96, spread=40), **bisection)
    pairs = boundary_pairs(three_class_teacher(), grey_images(0.5, 96, spread=40), deeper=False, **bisection)
    assert len(pairs.labels) == 2 * len(pairs.targets) > 0 and torch.equal(pairs.images, full.images[:len(pairs.labels)])
    assert pairs.summary["forwards_per_image"] < full.summary["forwards_per_image"]
    copies = boundary_pairs(three_class_teacher(), grey_images(0.5, 96, spread=40), pairs=False, **bisection)
    assert torch.equal(copies.images, full.images[2 * len(full.targets):])


def test_samples_stay_uint8_inside_the_epsilon_ball_and_the_pixel_range():
    teacher = three_class_teacher()
    images = torch.cat([grey_images(0.02, 32, spread=8), grey_images(0.98, 32, spread=8, seed=1)])  # near 0 and 255
    epsilon = 12 / 255
    result = boundary_pairs(teacher, images, max_steps=30, epsilon=epsilon, step_size=6 / 255, precision="fp32")
    assert result.images.dtype == torch.uint8 and len(result.targets) > 0
    sources = images[result.source].repeat(4, 1, 1, 1).int()
    assert (result.images.int() - sources).abs().max() <= 12, "every sample lies within epsilon of its original"
    # Float input in [0, 1] is the same attack as its uint8 version.
    floats = boundary_pairs(teacher, images.float() / 255, max_steps=30, epsilon=epsilon, step_size=6 / 255,
                            precision="fp32")
    assert torch.equal(floats.images, result.images)
    with pytest.raises(UserError):
        boundary_pairs(teacher, images.float(), max_steps=30)  # 0..255 floats are not [0, 1] images


# --------------------------------------------------------------------------- Bold Driver

def test_bold_driver_grows_after_a_miss_halves_after_a_revert_and_clamps():
    step = torch.tensor([0.1, 0.1, 0.1, 2 * GREY_LEVEL, 0.5, 1.5 * GREY_LEVEL])
    advanced = torch.tensor([True, False, False, False, True, False])
    overshot = torch.tensor([False, True, False, True, False, True])
    new = bold_driver(step, advanced, overshot, GREY_LEVEL, 0.5)
    expected = torch.tensor([0.11, 0.05, 0.1, GREY_LEVEL, 0.5, GREY_LEVEL])  # clamped to [1/255, max]
    torch.testing.assert_close(new, expected)


def test_step_growth_reaches_a_distant_boundary():
    # 51 grey levels to go from a 1-level first step: ~19 growing steps, 51 without growth.
    result = boundary_pairs(two_class_teacher(), grey_images(0.3, 16, spread=0), max_steps=30, epsilon=64 / 255,
                            step_size=GREY_LEVEL, precision="fp32")
    assert result.summary["success_rate"] == 1.0
    assert 15 <= result.summary["mean_steps"] <= 30


def test_step_halving_lands_a_pair_inside_a_tight_threshold():
    # threshold 0.6: both images within ~6 grey levels of the boundary; first steps are 30 levels.
    teacher = two_class_teacher()
    result = boundary_pairs(teacher, grey_images(0.3, 16, spread=0), threshold=0.6, max_steps=40,
                            epsilon=64 / 255, step_size=30 / 255, precision="fp32")
    assert result.summary["success_rate"] == 1.0 and result.summary["within_threshold"] == 1.0
    for role in ("pre", "post"):
        assert (exact_logits(teacher, result.part(role)[0]).softmax(1).max(1).values <= 0.6).all()


def test_pairs_that_cannot_meet_the_threshold_are_dropped():
    # So steep that one grey level moves the logit difference by 6.3: no pair has both tops <= 0.9.
    result = boundary_pairs(two_class_teacher(slope=100.0), grey_images(0.3, 8, spread=0), max_steps=60,
                            epsilon=64 / 255, precision="fp32")
    assert result.summary["success_rate"] == 1.0, "the boundary is crossed..."
    assert result.summary["within_threshold"] == 0.0 and len(result.targets) == 0 and len(result.images) == 0


# --------------------------------------------------------------------------- gradient-free: bisection

def test_bisection_pairs_straddle_the_planted_boundary_a_grey_level_apart():
    teacher = three_class_teacher()
    images = grey_images(0.5, 96, spread=40)
    result = boundary_pairs(teacher, images, targets="random", method="bisection", precision="fp32")
    s = result.summary
    assert s["method"] == "bisection" and s["gradients_per_image"] == 0 and s["forwards_per_image"] < 15
    assert s["success_rate"] == 1.0 and s["pairs"] > 80 and s["unreachable"] == 0
    pre, pre_labels = result.part("pre")
    post, post_labels = result.part("post")
    pre_logits, post_logits = exact_logits(teacher, pre), exact_logits(teacher, post)
    assert (pre_logits.argmax(1) != result.targets).all(), "pre is not the target"
    assert (post_logits.argmax(1) == result.targets).all(), "post is the target"
    assert torch.equal(pre_logits.argmax(1), pre_labels) and torch.equal(post_labels, result.targets)
    assert (pre.int() - post.int()).abs().amax() <= 1, "ten halvings: the pair is one grey level apart at most"
    for logits in (pre_logits, post_logits):
        assert (logits.softmax(1).max(1).values <= 0.9).all()


def test_bisection_deeper_copies_step_back_into_their_own_class():
    teacher = two_class_teacher()
    images = torch.cat([grey_images(0.45, 16, seed=1), grey_images(0.55, 16, seed=2)])  # classes 0 and 1
    result = boundary_pairs(teacher, images, method="bisection", precision="fp32")
    assert len(result.targets) == 32
    for role in ("pre", "post"):
        samples, labels = result.part(role)
        deeper, deeper_labels = result.part(f"{role}_deeper")
        assert torch.equal(deeper_labels, labels), "a deeper copy stays in its own class"
        assert (margin(exact_logits(teacher, deeper), labels) > margin(exact_logits(teacher, samples), labels)).all()


def test_bisection_is_chosen_for_a_teacher_without_gradients_and_reaches_only_predicted_classes():
    teacher = two_class_teacher()
    teacher.differentiable = False  # as an ONNX teacher says of itself
    result = boundary_pairs(teacher, grey_images(0.3, 8), precision="fp32")
    s = result.summary
    assert s["method"] == "bisection", "auto: no gradients, no gradient attack"
    assert s["unreachable"] == 8 and s["success_rate"] == 0.0, "every image is class 0: no partner of class 1"
    partners = (grey_images(0.7, 4, seed=3), torch.ones(4, dtype=torch.int64))
    assert boundary_pairs(teacher, grey_images(0.3, 8), partners=partners).summary["success_rate"] == 1.0
    with pytest.raises(UserError, match="valid: auto, gradient, bisection"):
        boundary_pairs(teacher, grey_images(0.3, 8), method="random-walk")


def test_partners_carry_the_target_label_and_targets_keep_to_reachable_classes():
    labels = torch.tensor([2, 0, 2, 1, 2])
    targets = torch.tensor([2, 2, 1, 3, 0])
    index, found = choose_partners(targets, labels, torch.Generator().manual_seed(0))
    assert found.tolist() == [True, True, True, False, True]
    assert torch.equal(labels[index[found]], targets[found])
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]]).repeat(50, 1)
    reachable = torch.tensor([True, False, True, False])
    for mode in ("random", "nearest", "least-predicted"):
        chosen = choose_targets(logits, mode, torch.Generator().manual_seed(0), reachable=reachable)
        assert (chosen == 2).all(), mode


# --------------------------------------------------------------------------- the teacher

def test_teacher_is_left_unchanged_and_gets_no_gradients():
    teacher = three_class_teacher().train()
    weights = {k: v.clone() for k, v in teacher.state_dict().items()}
    result = boundary_pairs(teacher, grey_images(0.5, 16, spread=40), max_steps=10)
    assert len(result.targets) > 0
    assert teacher.training, "the caller's train/eval mode is restored"
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in weights.items())
    assert all(p.grad is None and p.requires_grad for p in teacher.parameters())


def test_attack_works_inside_a_callers_no_grad_or_inference_mode():
    teacher, images = three_class_teacher(), grey_images(0.5, 16, spread=40)
    reference = boundary_pairs(teacher, images, max_steps=10).images
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            assert torch.equal(boundary_pairs(teacher, images, max_steps=10).images, reference)


class NoGradForward(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        with torch.no_grad():
            return self.net(x)


class NumpyForward(nn.Module):
    """A teacher that runs outside autograd (as an exported runtime would)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return torch.from_numpy(self.net(x).float().numpy())


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_teachers_without_input_gradients_get_a_clear_error():
    images = grey_images(0.5, 8, spread=40)
    with torch.inference_mode():  # its weights become inference tensors: autograd cannot use them
        frozen_in_inference = three_class_teacher()
    teachers = {"scripted no_grad": torch.jit.script(NoGradForward(three_class_teacher().net)),
                "numpy forward": NumpyForward(three_class_teacher()),
                "inference-mode weights": frozen_in_inference}
    for name, teacher in teachers.items():
        with pytest.raises(UserError, match="gradient with respect to its input") as error:
            boundary_pairs(teacher, images, max_steps=5)
        assert "\n" not in str(error.value), name


# --------------------------------------------------------------------------- targets

def test_targets_are_never_the_prediction_and_follow_their_mode():
    logits = torch.tensor([[5.0, 4.0, 0.0, -1.0], [0.0, 1.0, 3.0, 2.5], [1.0, 0.0, 0.0, 0.9]])
    generator = torch.Generator().manual_seed(0)
    assert choose_targets(logits, "nearest", generator).tolist() == [1, 3, 3]
    many = logits.repeat(200, 1)
    drawn = choose_targets(many, "random", torch.Generator().manual_seed(0))
    assert (drawn != many.argmax(1)).all()
    assert set(drawn[0::3].tolist()) == {1, 2, 3}, "random: every other class is drawn"
    assert torch.equal(drawn, choose_targets(many, "random", torch.Generator().manual_seed(0)))
    with pytest.raises(UserError, match="valid: random, nearest, least-predicted"):
        choose_targets(logits, "farthest", generator)


def test_least_predicted_targets_fill_the_rarest_classes():
    assert level_deficits(torch.tensor([90, 10, 0]), 10).tolist() == [0, 0, 10]
    assert level_deficits(torch.tensor([50, 50, 0]), 100).tolist() == pytest.approx([50 / 3, 50 / 3, 200 / 3])
    assert level_deficits(torch.tensor([4, 4, 4]), 6).tolist() == [2, 2, 2]
    # 10 images predicted 0 in a set whose histogram is (90, 10, 0): all targets go to class 2.
    logits = torch.tensor([[1.0, 0.5, 0.0]]).repeat(10, 1)
    targets = choose_targets(logits, "least-predicted", torch.Generator().manual_seed(0), torch.tensor([90, 10, 0]))
    assert (targets == 2).all()
    # Default histogram: the images' own, (30, 10, 0); 40 targets level it at 25: deficits (0, 15, 25).
    logits = torch.cat([torch.tensor([[1.0, 0.0, 0.0]]).repeat(30, 1), torch.tensor([[0.0, 1.0, 0.0]]).repeat(10, 1)])
    counts = torch.zeros(3, dtype=torch.int64)
    for seed in range(20):
        targets = choose_targets(logits, "least-predicted", torch.Generator().manual_seed(seed))
        assert (targets[30:] == 2).all(), "class-1 images: class 2 is the only other class short of the level"
        counts += torch.bincount(targets, minlength=3)
    assert counts[0] == 0 and counts[2] > 1.5 * counts[1] > 0


def test_summary_reports_the_histogram_before_and_after():
    teacher = three_class_teacher()
    images = grey_images(0.5, 64, spread=40)
    result = boundary_pairs(teacher, images, targets="least-predicted", max_steps=30, precision="fp32")
    s = result.summary
    before = torch.bincount(exact_logits(teacher, images).argmax(1), minlength=3)
    assert s["class_histogram_before"] == before.tolist()
    assert s["class_histogram_after"] == (before + torch.bincount(result.labels, minlength=3)).tolist()
    assert s["samples"] == 4 * s["pairs"] and s["pairs"] == len(result.targets)
    assert s["relative_entropy_after"] > s["relative_entropy_before"]


# --------------------------------------------------------------------------- command line

def test_cli_writes_a_pool_of_originals_plus_samples_labelled_by_the_teacher(tmp_path, tiny_dataset, capsys):
    # A briefly trained teacher (an untrained one is near-constant, with no boundary within reach);
    # its training is not bit-reproducible on CPU, so the budget is wide enough for any of them.
    cfg = TrainConfig(epochs=1, batch_size=32, device="cpu", precision="fp32", mixup=False, regime="none")
    train_teacher(str(tiny_dataset), tmp_path / "teacher", "convnet_tiny", config=cfg)
    checkpoint = str(tmp_path / "teacher" / "model.safetensors")
    out = tmp_path / "boundary-pool"
    assert main(["boundary", "--teacher", checkpoint, "--data", str(tiny_dataset), "--out", str(out),
                 "--fraction", "0.05", "--max-steps", "40", "--epsilon", "0.5", "--targets", "nearest",
                 "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["attacked"] == 26 and summary["pairs"] > 0
    pool = open_images(str(out))
    assert len(pool) == 512 + summary["samples"] == summary["images_after"]
    teacher = load_model(checkpoint)
    assert torch.equal(pool.labels, predict(teacher, pool.images).argmax(1)), "labelled by the teacher"
    assert main(["boundary", "--teacher", checkpoint, "--data", str(tiny_dataset),
                 "--out", str(tmp_path / "other"), "--fraction", "0"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


# --------------------------------------------------------------------------- every epoch inside distill

def test_every_epoch_batches_bring_fresh_samples_each_epoch_and_resume_identically():
    teacher = two_class_teacher()
    images = torch.cat([grey_images(0.45, 32, seed=1), grey_images(0.55, 32, seed=2)])
    labels = predict(teacher, images).argmax(1)
    image_set = ImageSet(images, labels, teacher.spec.classes, "grey")
    attack = dict(targets="random", max_steps=40, epsilon=0.3)
    batches = EpochBoundaryBatches(teacher, image_set, 16, seed=0, device=torch.device("cpu"), fraction=0.5, **attack)
    assert batches.steps_per_epoch == 4, "an epoch is the set's length, samples or not"
    epochs = [torch.cat([batches.batch(e * 4 + k)[0] for k in range(4)]) for e in range(2)]
    assert all(batches.summaries[e]["pairs"] > 0 for e in (0, 1))
    originals = {bytes(x.numpy()) for x in images}
    fresh = [{bytes(x.numpy()) for x in epoch} - originals for epoch in epochs]
    assert fresh[0] and fresh[1] and fresh[0] != fresh[1], "each epoch attacks a new draw of the set"
    x, y = batches.batch(5)
    assert torch.equal(y, predict(teacher, x).argmax(1)), "every image labelled by the teacher's argmax"
    resumed = EpochBoundaryBatches(teacher, image_set, 16, seed=0, device=torch.device("cpu"), fraction=0.5, **attack)
    assert torch.equal(resumed.batch(6)[0], batches.batch(6)[0]), "a resumed run sees the same batches"


def test_distill_cli_recomputes_boundary_samples_every_epoch(tmp_path, tiny_dataset, capsys):
    cfg = TrainConfig(epochs=1, batch_size=32, device="cpu", precision="fp32", mixup=False, regime="none")
    train_teacher(str(tiny_dataset), tmp_path / "teacher", "convnet_tiny", config=cfg)
    checkpoint = str(tmp_path / "teacher" / "model.safetensors")
    common = ["distill", "--teacher", checkpoint, "--data", str(tiny_dataset), "--student", "convnet_tiny",
              "--per-class", "64", "--set", "batch_size=32", "--set", "epochs=2", "--set", "device=cpu"]
    assert main([*common, "--out", str(tmp_path / "student"), "--boundary-fraction", "0.1",
                 "--boundary-targets", "nearest", "--boundary-every-epoch"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert sorted(result["boundary_epochs"]) == ["0", "1"] and result["steps"] == 16
    assert main([*common, "--out", str(tmp_path / "other"), "--boundary-every-epoch"]) == 2
    assert "--boundary-fraction" in capsys.readouterr().err
