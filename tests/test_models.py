"""Models by name: every registered net builds and runs at 16x16, unknown names list the valid ones."""

import pytest
import torch

from surrogate_kd.config import InputSpec
from surrogate_kd.errors import UserError
from surrogate_kd.models import MODELS, build_model, count_parameters, create_network, model_names

OWN = ["convnet_24", "convnet_small", "convnet_tiny", "mobilenetv2", "resnet18", "resnet34", "resnet50",
       "resnet_mini", "toy_mnist", "wrn40_2"]  # fmt: skip
TINY = ["convnet_24", "convnet_small", "convnet_tiny", "resnet_mini", "toy_mnist"]  # the CPU-scale ones: fast


def test_registered_names():
    assert model_names() == sorted(OWN + ["timm:<name>", "torchvision:<name>"])


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("arch", TINY)
def test_tiny_models_build_and_run_at_16px(arch, channels):
    spec = InputSpec(16, channels, (0.5,) * channels, (0.25,) * channels, tuple(f"c{i}" for i in range(5)))
    model = build_model(arch, spec).eval()
    x = torch.rand(2, channels, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, features = model(x), model.features(x)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    assert features.shape[0] == 2 and features.dim() == 2


@pytest.mark.parametrize("arch", OWN)
def test_every_own_model_builds_with_the_documented_size(arch):
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        net = create_network(arch, 10, 3)
    assert count_parameters(net) > 0
    documented = {"resnet18": 11_173_962, "resnet_mini": 0.3e6, "convnet_small": 288e3, "convnet_24": 163e3,
                  "convnet_tiny": 73e3}  # fmt: skip
    if arch in documented:
        assert count_parameters(net) == pytest.approx(documented[arch], rel=0.05)


def test_torchvision_models_by_name_take_gray_images():
    net = create_network("torchvision:squeezenet1_1", 4, 1).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 1, 32, 32)).shape == (2, 4)


@pytest.mark.parametrize(
    "arch, message",
    [
        ("resnet19", "unknown model 'resnet19'; valid: convnet_24, convnet_small, convnet_tiny, mobilenetv2, "
                     "resnet18, resnet34, resnet50, resnet_mini, timm:<name>, torchvision:<name>, toy_mnist, wrn40_2"),
        ("keras:resnet18", "unknown model 'keras:<name>'; valid: convnet_24"),
        ("torchvision:resnet19", "unknown torchvision classification model 'resnet19'"),
    ],
)
def test_unknown_names_are_one_line_user_errors(arch, message):
    with pytest.raises(UserError) as error:
        create_network(arch, 10, 3)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_name_registers_once():
    with pytest.raises(ValueError, match="model 'resnet18' registered twice"):
        MODELS.register("resnet18", lambda num_classes, in_channels: None)
