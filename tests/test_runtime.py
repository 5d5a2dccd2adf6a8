"""The runtime under everything that runs a model (runtime.py): devices, precision, prediction,
frozen copies, evaluation, and the per-epoch seed."""

import pytest
import torch
from torch import nn

from surrogate_kd.errors import UserError
from surrogate_kd.models import build_model
from surrogate_kd.runtime import autocast_context, epoch_seed, evaluate_logits, inference_copy, predict, resolve_device


def one_line_user_error(call, *args) -> str:
    with pytest.raises(UserError) as error:
        call(*args)
    message = str(error.value)
    assert message and "\n" not in message, f"not one line: {message!r}"
    return message


def test_resolve_device_accepts_auto_and_cpu_and_rejects_a_typo_in_one_line():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    message = one_line_user_error(resolve_device, "bogus")
    assert "unknown device 'bogus'" in message and "valid: auto, cpu, cuda" in message
    assert "unsupported device 'meta'" in one_line_user_error(resolve_device, "meta")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_resolve_device_refuses_cuda_on_a_machine_without_it_in_one_line():
    assert "CUDA is not available" in one_line_user_error(resolve_device, "cuda:0")
    assert "CUDA is not available" in one_line_user_error(resolve_device, "cuda")


def test_epoch_seed_differs_across_epochs_and_seeds():
    seeds = {epoch_seed(seed, epoch) for seed in range(5) for epoch in range(200)}
    assert len(seeds) == 5 * 200, "no two (seed, epoch) pairs share a seed"
    assert epoch_seed(3, 7) == epoch_seed(3, 7), "a pure function: a resumed run redraws its epoch"


def test_autocast_is_off_for_fp32_and_an_unknown_precision_is_refused():
    with autocast_context(torch.device("cpu"), "fp32"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with autocast_context(torch.device("cpu"), "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert "valid: auto, bf16, fp32" in one_line_user_error(autocast_context, torch.device("cpu"), "fp16")


def test_predict_scales_uint8_batches_keeps_order_and_restores_training_mode():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    model.train()
    images = torch.randint(0, 256, (10, 1, 2, 2), dtype=torch.uint8)
    logits = predict(model, images, batch_size=3, precision="fp32")
    with torch.no_grad():
        expected = model(images.float() / 255)
    assert logits.dtype == torch.float32 and logits.device.type == "cpu" and logits.shape == (10, 3)
    torch.testing.assert_close(logits, expected)
    assert model.training, "the caller's mode is restored"


def test_evaluate_logits_gives_accuracy_per_class_and_teacher_agreement():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 2.0]])  # predicts 0 1 0 2
    labels = torch.tensor([0, 1, 1, 1])
    teacher = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])  # predicts 0 1 1 1
    result = evaluate_logits(logits, labels, 3, reference_logits=teacher)
    assert result["accuracy"] == pytest.approx(0.5)
    assert result["per_class_accuracy"] == [1.0, pytest.approx(1 / 3, abs=1e-4), 0.0], "an absent class scores 0"
    assert result["teacher_agreement"] == pytest.approx(0.5)
    assert "teacher_agreement" not in evaluate_logits(logits, labels, 3)


def test_inference_copy_folds_batchnorm_without_changing_outputs_or_the_original(tiny_spec):
    teacher = build_model("convnet_tiny", tiny_spec)
    with torch.no_grad():  # non-trivial running statistics, as a trained teacher has
        for bn in (m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
    teacher.train()
    x = torch.rand(8, tiny_spec.channels, tiny_spec.size, tiny_spec.size)
    frozen = inference_copy(teacher)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules()), "BatchNorm folded into the convs"
    assert not any(p.requires_grad for p in frozen.parameters())
    assert teacher.training and all(p.requires_grad for p in teacher.parameters()), "the caller's module is untouched"
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), teacher.eval()(x), rtol=1e-4, atol=1e-4)
    scripted = torch.jit.script(nn.Linear(2, 2))
    assert inference_copy(scripted) is scripted  # cannot be copied or traced: used as it is
