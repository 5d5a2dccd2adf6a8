"""The step that a CUDA graph replays, checked on a CPU: what it dispatches, and what it computes."""

from dataclasses import replace

import pytest
import torch

from surrogate_kd import distill
from surrogate_kd.capture import capture_possible, sgd_update
from surrogate_kd.config import InputSpec, TrainConfig
from surrogate_kd.distill import make_step
from surrogate_kd.models import build_model
from surrogate_kd.opcount import OpCounter
from surrogate_kd.runtime import inference_copy

SPEC = InputSpec(16, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), tuple(f"c{i}" for i in range(10)))


@pytest.mark.parametrize("momentum, weight_decay, nesterov", [(0.9, 1e-4, False), (0.9, 5e-4, True), (0.0, 0.0, False)])
def test_tensor_lr_update_matches_torch_sgd(momentum, weight_decay, nesterov):
    torch.manual_seed(0)
    ours, reference = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    reference.load_state_dict(ours.state_dict())
    make = lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay,
                                     nesterov=nesterov)
    ours_opt, reference_opt = make(ours), make(reference)
    lr = torch.tensor(0.1)
    for step in range(4):
        x = torch.randn(16, 8)
        for model, opt in ((ours, ours_opt), (reference, reference_opt)):
            opt.zero_grad()
            model(x).square().mean().backward()
        lr.fill_(0.1 / (step + 1))
        for group in reference_opt.param_groups:
            group["lr"] = 0.1 / (step + 1)
        reference_opt.step()
        if step == 0 and momentum:  # the first step makes SGD's momentum buffers; ours reuses them
            ours_opt.param_groups[0]["lr"] = 0.1
            ours_opt.step()
        else:
            sgd_update(ours_opt, lr)
    for a, b in zip(ours.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def _step_ops(batch: int, targets: str = "soft") -> OpCounter:
    torch.manual_seed(0)
    teacher = inference_copy(build_model("convnet_tiny", SPEC))
    student = build_model("convnet_tiny", SPEC)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    cfg = TrainConfig(tau=4.0, precision="fp32", targets=targets)
    make_step(student, optimizer, cfg, teacher)(torch.rand(batch, 3, 16, 16))  # SGD's buffers exist from here on
    lr = torch.tensor(0.05)
    step = make_step(student, optimizer, cfg, teacher, update=lambda: sgd_update(optimizer, lr))
    x = torch.rand(batch, 3, 16, 16)
    mix = (torch.rand(1), torch.randperm(batch))
    with OpCounter() as ops:
        step(x, None, mix)
    return ops


@pytest.mark.parametrize("targets", ["soft", "per-image"])
def test_the_captured_step_body_is_graph_safe(targets):
    """Teacher forward, student forward/backward and the tensor-lr SGD update: the same ops at any
    batch size, no host sync, no tensor from Python data (all three would break a CUDA graph)."""
    small, large = _step_ops(8, targets), _step_ops(256, targets)
    assert small.host_syncs == {} and small.python_tensors == 0, (small.host_syncs, small.python_tensors)
    assert small.total == large.total and small.ops == large.ops


@pytest.mark.parametrize("regime", ["standard", "high"])
def test_the_whole_step_on_the_accelerator_path_is_graph_safe(regime):
    """augment + mixup (their CUDA strategy, forced on the CPU) + the step body: what issue 10 asks
    of the step a CUDA graph replays."""
    from surrogate_kd.augment import augment, default_strategy, get_regime, mixup

    def ops(batch: int) -> OpCounter:
        torch.manual_seed(0)
        teacher = inference_copy(build_model("convnet_tiny", SPEC))
        student = build_model("convnet_tiny", SPEC)
        optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
        cfg = TrainConfig(tau=4.0, precision="fp32")
        make_step(student, optimizer, cfg, teacher)(torch.rand(batch, 3, 16, 16))
        lr = torch.tensor(0.05)
        step = make_step(student, optimizer, cfg, teacher, update=lambda: sgd_update(optimizer, lr))
        images = torch.randint(0, 256, (batch, 3, 16, 16), dtype=torch.uint8)
        generator = torch.Generator().manual_seed(1)

        def whole_step():
            x = augment(images, get_regime(regime), generator, strategy=default_strategy(torch.device("cuda")))
            x, lam, perm = mixup(x, generator)
            return step(x.contiguous(memory_format=torch.channels_last), None, (lam, perm))

        whole_step()  # the first call caches augmentation constants (warm-up, as before a capture)
        with OpCounter() as counter:
            whole_step()
        return counter

    small, large = ops(8), ops(128)
    assert small.host_syncs == {} and small.python_tensors == 0, (small.host_syncs, small.python_tensors)
    assert small.total == large.total


def test_capture_is_attempted_only_where_it_can_work():
    assert capture_possible(torch.device("cpu"), False, 1) == "not on CUDA"
    assert "compile" in capture_possible(torch.device("cuda"), True, 1)
    assert "processes" in capture_possible(torch.device("cuda"), False, 2)
    assert capture_possible(torch.device("cuda"), False, 1) is None


def test_checkpoints_follow_the_clock_not_the_epoch(tiny_dataset, tmp_path, monkeypatch):
    """A small set's epoch can last two seconds on a GPU: state is saved every checkpoint_minutes
    (and at the end), every epoch only when checkpoint_every asks for it."""
    from surrogate_kd.batches import ArrayBatches
    from surrogate_kd.data import open_images

    images = open_images(str(tiny_dataset))
    saved = []
    monkeypatch.setattr(distill, "save_state", lambda path, state: saved.append(state["step"]))
    cfg = TrainConfig(epochs=3, batch_size=128, regime="none", mixup=False, precision="fp32", device="cpu")
    for name, settings, expected in (("clock", {}, [12]), ("often", {"checkpoint_minutes": 1e-9}, list(range(1, 13))),
                                     ("epochs", {"checkpoint_every": 1.0}, [4, 8, 12])):
        saved.clear()
        model = build_model("convnet_tiny", InputSpec(16, 1, (0.5,), (0.25,), ("a", "b", "c", "d")))
        distill.train(model, ArrayBatches(images, 128, 0, torch.device("cpu")), replace(cfg, **settings),
                      run_dir=tmp_path / name)
        assert saved == expected, name
