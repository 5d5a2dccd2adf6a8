"""The KD loss against hand-computed values, and the one loop on tiny models and data."""

import math
from dataclasses import replace

import pytest
import torch

from surrogate_kd.batches import ArrayBatches
from surrogate_kd.config import TrainConfig
from surrogate_kd.data import ImageSet, open_images
from surrogate_kd.distill import kd_loss, kd_loss_per_image, learning_rate, logit_loss, per_image_tau, train
from surrogate_kd.errors import UserError


def test_kd_loss_matches_hand_computation():
    s = torch.tensor([[1.0, 2.0, 0.5]])
    t = torch.tensor([[0.0, 3.0, 1.0]])
    tau = 2.0
    ps = [math.exp(v / tau) for v in s[0].tolist()]
    pt = [math.exp(v / tau) for v in t[0].tolist()]
    ps = [v / sum(ps) for v in ps]
    pt = [v / sum(pt) for v in pt]
    expected = sum(a * (math.log(a) - math.log(b)) for a, b in zip(pt, ps)) * tau**2
    assert kd_loss(s, t, tau).item() == pytest.approx(expected, rel=1e-5)


def test_kd_loss_is_zero_for_identical_logits_and_averages_over_batch():
    t = torch.randn(5, 10)
    assert kd_loss(t.clone(), t, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    s = torch.randn(5, 10)
    per_row = torch.stack([kd_loss(s[i:i + 1], t[i:i + 1], 3.0) for i in range(5)])
    assert kd_loss(s, t, 3.0).item() == pytest.approx(per_row.mean().item(), rel=1e-5)


def test_per_image_temperature_follows_the_teachers_spread_on_each_image():
    """An image whose teacher logits are k times as spread out as the batch's median is tempered at
    k * tau, so its target is the median image's; at equal spreads the loss is plain `kd_loss`."""
    base = torch.randn(7, 10)
    base = base / base.std(1, keepdim=True)  # every image's spread 1
    scales = torch.tensor([1.0, 1.0, 1.0, 1.0, 2.0, 8.0, 0.5])
    taus = per_image_tau(base * scales[:, None], 3.0)
    assert taus.tolist() == pytest.approx((3.0 * scales).tolist(), rel=1e-5)
    s = torch.randn(7, 10)
    assert kd_loss_per_image(s, base, 3.0).item() == pytest.approx(kd_loss(s, base, 3.0).item(), rel=1e-5)
    # each image is plain KD at its own temperature
    t = base * scales[:, None]
    per_row = torch.stack([kd_loss(s[i:i + 1], t[i:i + 1], taus[i].item()) for i in range(7)])
    assert kd_loss_per_image(s, t, 3.0).item() == pytest.approx(per_row.mean().item(), rel=1e-5)
    assert torch.isfinite(kd_loss_per_image(s, torch.zeros(7, 10), 3.0))  # a teacher with flat logits


def test_logit_matching_is_soft_kd_at_high_temperature_and_ignores_a_shift():
    s, t = torch.randn(6, 10), torch.randn(6, 10)
    tau = 1000.0  # KL * tau^2 in float64: at this tau float32 rounding is larger than the limit's error
    log_ps, log_pt = (torch.log_softmax(x.double() / tau, 1) for x in (s, t))
    soft_at_high_tau = ((log_pt.exp() * (log_pt - log_ps)).sum(1).mean() * tau**2).item()
    assert logit_loss(s, t).item() == pytest.approx(soft_at_high_tau, rel=1e-2)
    assert logit_loss(s + 3.0, t).item() == pytest.approx(logit_loss(s, t).item(), rel=1e-5)
    assert logit_loss(t + 1.5, t).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("targets,loss", [("logits", logit_loss),
                                          ("per-image", lambda s, t: kd_loss_per_image(s, t, 3.0))])
def test_the_step_trains_on_the_loss_its_targets_name(tiny_spec, tiny_model, fast_config, targets, loss):
    """`--targets` reaches the loop: the step's loss is the one its targets name, and it falls."""
    from surrogate_kd.distill import make_step

    torch.manual_seed(0)
    teacher, student = tiny_model(tiny_spec).eval(), tiny_model(tiny_spec)
    x = torch.rand(32, tiny_spec.channels, tiny_spec.size, tiny_spec.size)
    cfg = replace(fast_config, targets=targets, tau=3.0)
    step = make_step(student, torch.optim.SGD(student.parameters(), lr=cfg.lr), cfg, teacher)
    with torch.no_grad():
        expected = loss(student(x), teacher(x)).item()
    losses = [step(x).item() for _ in range(20)]
    assert losses[0] == pytest.approx(expected, rel=1e-5)
    assert losses[-1] < 0.5 * losses[0]


def test_learning_rate_is_half_period_cosine():
    cfg = TrainConfig(lr=0.1)
    assert learning_rate(cfg, 0, 100, 10) == pytest.approx(0.1)
    assert learning_rate(cfg, 50, 100, 10) == pytest.approx(0.05)
    assert learning_rate(cfg, 100, 100, 10) == pytest.approx(0.0, abs=1e-12)


def test_teacher_training_then_distillation_learn_the_task(tiny_dataset, tiny_spec, tiny_model, fast_config):
    data = open_images(str(tiny_dataset))
    teacher = tiny_model(tiny_spec)
    torch.manual_seed(0)
    run = train(teacher, ArrayBatches(data, 64, 0, torch.device("cpu")), fast_config, eval_set=data)
    assert run.eval_accuracy > 0.95

    # Distil through the same images without their labels: the student matches the teacher.
    unlabelled = ImageSet(data.images, None, None, "unlabelled")
    student = tiny_model(tiny_spec)
    teacher.zero_grad(set_to_none=True)
    weights_before = [p.clone() for p in teacher.parameters()]
    run = train(student, ArrayBatches(unlabelled, 64, 0, torch.device("cpu")), fast_config, teacher=teacher, eval_set=data)
    assert run.eval_accuracy > 0.95
    assert all(torch.equal(a, b) for a, b in zip(weights_before, teacher.parameters())), "teacher must stay frozen"
    assert all(p.grad is None for p in teacher.parameters())


def test_mixup_and_augmentation_path_runs_and_learns(tiny_dataset, tiny_spec, tiny_model):
    data = open_images(str(tiny_dataset))
    model = tiny_model(tiny_spec)
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=8, batch_size=64, lr=0.2, regime="standard", mixup=True, precision="fp32",
                      channels_last=False, regime_overrides=(("randaugment_n", 0),))
    run = train(model, ArrayBatches(data, 64, 0, torch.device("cpu")), cfg, eval_set=data)
    assert run.eval_accuracy > 0.9


def test_interrupted_run_resumes_to_identical_weights(tiny_dataset, tiny_spec, tiny_model, interrupt_at, tmp_path):
    data = open_images(str(tiny_dataset))
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.2, regime="standard", mixup=True, precision="fp32",
                      channels_last=False, checkpoint_every=1, regime_overrides=(("randaugment_n", 0),))
    batches = ArrayBatches(data, 64, 0, torch.device("cpu"))

    torch.manual_seed(0)
    reference = tiny_model(tiny_spec)
    train(reference, batches, cfg)

    torch.manual_seed(0)
    interrupted = tiny_model(tiny_spec)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, interrupt_at(batches, 13), cfg, run_dir=tmp_path / "run")  # state saved at step 8
    assert (tmp_path / "run" / "state.pt").exists()
    torch.manual_seed(123)  # a different init: everything must come from the saved state
    resumed = tiny_model(tiny_spec)
    run = train(resumed, batches, cfg, run_dir=tmp_path / "run")
    assert run.steps == 24
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)
    # Resuming with a different config is refused rather than silently mixing two runs.
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_model(tiny_spec), interrupt_at(batches, 13), cfg, run_dir=tmp_path / "other")
    with pytest.raises(UserError, match="different config"):
        train(tiny_model(tiny_spec), batches, replace(cfg, lr=0.3), run_dir=tmp_path / "other")
    # ...and so is resuming a run that was defined by another teacher (same training config).
    with pytest.raises(KeyboardInterrupt):
        train(tiny_model(tiny_spec), interrupt_at(batches, 13), cfg, run_dir=tmp_path / "third",
              run_identity={"teacher_fingerprint": "aaaa"})
    with pytest.raises(UserError, match="different config"):
        train(tiny_model(tiny_spec), batches, cfg, run_dir=tmp_path / "third", run_identity={"teacher_fingerprint": "bbbb"})


def test_tensorboard_without_the_package_is_a_clear_error(tiny_dataset, tiny_spec, tiny_model, fast_config, tmp_path):
    try:
        import tensorboard  # noqa: F401
        pytest.skip("tensorboard is installed here")
    except ImportError:
        pass
    data = open_images(str(tiny_dataset))
    with pytest.raises(UserError, match="pip install tensorboard"):
        train(tiny_model(tiny_spec), ArrayBatches(data, 64, 0, torch.device("cpu")), replace(fast_config, tensorboard=True),
              run_dir=tmp_path / "run")
