"""Model families from other libraries, by name: `torchvision:<name>` and `timm:<name>`.

Each family is one registry entry, `fn(num_classes, in_channels, name=...)`; `create_network`
splits `family:name` and passes the name on.
"""

from torch import nn

from ..errors import UserError
from ..registry import MODELS


class _RepeatChannels(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, x):
        return x.expand(-1, self.channels, -1, -1)


@MODELS.register("torchvision:<name>")
def torchvision_network(num_classes: int, in_channels: int, name: str) -> nn.Module:
    """Any torchvision classification model, e.g. `torchvision:resnet18`, freshly initialised."""
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise UserError(f"unknown torchvision classification model '{name}'")
    net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if in_channels != 3:
        # torchvision nets expect RGB; repeating gray is exact and keeps the stem unchanged.
        net = nn.Sequential(_RepeatChannels(3), net)
    return net


@MODELS.register("timm:<name>")
def timm_network(num_classes: int, in_channels: int, name: str) -> nn.Module:
    """Any timm model, e.g. `timm:resnet18`, freshly initialised (needs timm installed)."""
    try:
        import timm
    except ImportError:
        raise UserError("model 'timm:...' needs timm: pip install 'surrogate-kd[timm]'") from None
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)
