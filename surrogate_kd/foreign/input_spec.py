"""The input spec of an imported teacher from the options: size, channels, normalisation and class
names, each given explicitly, fixed by an ONNX file's shapes, or taken from a preset."""

import math
from pathlib import Path

from ..config import InputSpec
from ..data import DATASET_STATS
from ..errors import UserError, first_line

# Input specs by name: (size, channels, mean, std). --size, --channels, --mean and --std override them.
PRESETS = {
    "imagenet": (224, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": (32, 3, *DATASET_STATS["cifar10"]),
    "cifar100": (32, 3, *DATASET_STATS["cifar100"]),
    "mnist": (28, 1, *DATASET_STATS["mnist"]),
    "fashion-mnist": (28, 1, *DATASET_STATS["fashion-mnist"]),
}


def resolve_spec(classes=None, num_classes: int | None = None, size: int | None = None,
                 channels: int | None = None, mean=None, std=None, preset: str | None = None,
                 inferred: dict | None = None) -> InputSpec:
    """The input spec from the options: explicit values over what an ONNX file's shapes fix, over the preset's.

    `classes`: a text file (one name a line) or a list of names; `num_classes`: names "0".."N-1".
    `inferred`: size, channels or num_classes read from an ONNX model's input and output shapes.
    """
    inferred = inferred or {}
    if preset is not None and preset not in PRESETS:
        raise UserError(f"unknown preset '{preset}'; valid: {', '.join(PRESETS)}")
    p_size, p_channels, p_mean, p_std = PRESETS[preset] if preset else (None, None, None, None)
    size = _first(size, inferred.get("size"), p_size)
    channels = _first(channels, inferred.get("channels"), p_channels, 3)
    if size is None:
        raise UserError("give the input size (--size N, or --preset imagenet for 224)")
    if not (isinstance(size, int) and 1 <= size <= 4096):
        raise UserError(f"--size must be an integer in 1..4096 (pixels per side), got {size}")
    if channels not in (1, 3):
        raise UserError(f"--channels must be 1 (gray) or 3 (RGB), got {channels}")
    mean, std = _first(mean, p_mean), _first(std, p_std)
    if mean is None or std is None:
        raise UserError("give the normalisation the model was trained with (--mean and --std on the [0, 1] scale, "
                        f"or a preset: --preset {' | '.join(PRESETS)})")
    mean, std = _per_channel(mean, channels, "--mean"), _per_channel(std, channels, "--std")
    if not all(s > 0 for s in std):
        raise UserError(f"--std must be > 0 for every channel (inputs are divided by it), got {list(std)}")
    names = _class_names(classes, num_classes, inferred.get("num_classes"))
    return InputSpec(size, channels, mean, std, names)


def _first(*values):
    return next((v for v in values if v is not None), None)


def _per_channel(values, channels: int, flag: str) -> tuple[float, ...]:
    values = (values,) if isinstance(values, (int, float)) else tuple(values)
    if len(values) == 1 and channels > 1:
        values = values * channels  # one number for every channel
    if len(values) != channels or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        raise UserError(f"{flag} needs {channels} number{'s' if channels > 1 else ''} (one per channel), "
                        f"got {list(values)}")
    return tuple(float(v) for v in values)


def _class_names(classes, num_classes: int | None, inferred: int | None) -> tuple[str, ...]:
    if classes is not None and num_classes is not None:
        raise UserError("give the classes once: --classes FILE or --num-classes N, not both")
    if isinstance(classes, (str, Path)):
        path = Path(classes)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read class names from {path}: {first_line(e)}") from None
        names = [line.strip() for line in lines if line.strip()]
        where = str(path)
    elif classes is not None:
        names, where = [str(c) for c in classes], "the class list"
    else:
        count = _first(num_classes, inferred)
        if count is None:
            raise UserError("give the class names (--classes FILE, one name a line, in the order of the "
                            "model's outputs) or their number (--num-classes N)")
        if not (isinstance(count, int) and count >= 2):
            raise UserError(f"--num-classes must be an integer >= 2, got {count}")
        return tuple(str(i) for i in range(count))
    if len(names) < 2:
        raise UserError(f"{where} holds {len(names)} class name{'s' if len(names) != 1 else ''}; a teacher needs "
                        "at least 2")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"{where} names a class twice: {', '.join(repeated[:5])}")
    return tuple(names)
