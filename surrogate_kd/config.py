"""Frozen dataclasses, one per concern, checked when made: a bad value is a one-line error at once.

The library's defaults per command and data kind live in recipe.py; a YAML file (--config) and
KEY=VALUE settings (--set) are layered over them there, never replacing them wholesale.
"""

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, fields, replace
from typing import Any

from .errors import UserError


# What a student learns from the teacher's logits on each image: `soft`, Hinton's tempered softmax
# (KL * tau^2); `logits`, the logits themselves (squared error of the centred logits, half the
# mean over classes: the high-temperature limit of `soft`, so the same lr fits); `onehot` and
# `smoothed`, its argmax as a hard or smoothed label (the paper's Table 4); `per-image`, `soft` at a
# temperature per image that follows the spread of the teacher's logits on it (distill.per_image_tau).
KD_TARGETS = ("soft", "logits", "onehot", "smoothed", "per-image")


@dataclass(frozen=True)
class InputSpec:
    """What a model expects: stored in every checkpoint so data can be converted on the way in."""

    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        return cls(int(d["size"]), int(d["channels"]), tuple(d["mean"]), tuple(d["std"]), tuple(d["classes"]))


@dataclass(frozen=True)
class TrainConfig:
    """One training run: teacher training (loss='ce') and distillation (loss='kd') alike.

    Defaults are the paper's recipe (Sect. 4): SGD momentum 0.9, wd 1e-4, half-period cosine
    from lr 0.1, batch 256, tau per data kind, mixup with lambda ~ U(0, 1).
    """

    epochs: float = 10
    # Total images to train on; when set it replaces `epochs`, so runs over sets of different
    # sizes get the same budget (the demo compares sources this way).
    budget_images: int | None = None
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0  # teacher training, or 'smoothed' KD targets
    # Distillation only.
    tau: float = 4.0
    targets: str = "soft"  # one of KD_TARGETS
    # Augmentation (see augment.py for the regimes) and mixup.
    regime: str = "standard"
    regime_overrides: tuple[tuple[str, Any], ...] = ()
    mixup: bool = True
    mixup_per_sample: bool = False
    # Machinery.
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 where fast) | bf16 | fp32
    channels_last: bool = True
    compile: bool = False
    eval_every: float = 1.0  # epochs between evaluations on the held-out set, if one is given (0: at the end)
    log_every: int = 50  # steps between metric lines
    tensorboard: bool = False  # also write TensorBoard events to the run directory (needs tensorboard)
    checkpoint_minutes: float = 5.0  # wall time between resumable-state saves (and one at the end)
    checkpoint_every: float = 0.0  # also every this many epochs (0: by time only)
    capture: bool = True  # on CUDA, replay the whole step as one CUDA graph (capture.py); false: eager

    def __post_init__(self) -> None:
        check_types(self)
        positive = ("batch_size", "lr", "tau", "log_every", "checkpoint_minutes")
        for name in positive:
            _require(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        _require(self.epochs > 0, f"epochs must be positive, got {self.epochs}")
        _require(self.budget_images is None or self.budget_images > 0,
                 f"budget_images must be positive, got {self.budget_images}")
        for name in ("weight_decay", "warmup_epochs", "eval_every", "checkpoint_every", "seed"):
            _require(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        _require(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        _require(0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        _require(self.targets in KD_TARGETS,
                 f"unknown KD targets '{self.targets}'; valid: {', '.join(KD_TARGETS)}")
        _require(self.precision in ("auto", "bf16", "fp32"),
                 f"unknown precision '{self.precision}'; valid: auto, bf16, fp32")
        from .augment import get_regime

        get_regime(self.regime, **dict(self.regime_overrides))  # an unknown regime or field fails here


# Which of a boundary pair's samples join the set (--boundary-keep): (the pair, its deeper copies).
BOUNDARY_KEEPS = {"all": (True, True), "pairs": (True, False), "deeper": (False, True)}
# A boundary pair's samples, in the order the attack stacks them: the pair itself (either side of the
# boundary), then its two copies one step deeper inside each class.
BOUNDARY_ROLES = ("pre", "post", "pre_deeper", "post_deeper")


def kept_roles(pairs: bool, deeper: bool) -> tuple[str, ...]:
    """The samples each kept pair adds to the set, in order (BOUNDARY_ROLES without what is dropped)."""
    return (BOUNDARY_ROLES[:2] if pairs else ()) + (BOUNDARY_ROLES[2:] if deeper else ())


def keep_flags(keep: str) -> tuple[bool, bool]:
    """(pairs, deeper) of BoundaryConfig for a --boundary-keep value; a one-line error for another."""
    _require(keep in BOUNDARY_KEEPS, f"unknown boundary keep '{keep}'; valid: {', '.join(BOUNDARY_KEEPS)}")
    return BOUNDARY_KEEPS[keep]


@dataclass(frozen=True)
class BoundaryConfig:
    """Decision-boundary samples (paper Sect. 4.1): which share of the set to attack, and how."""

    fraction: float = 0.1
    targets: str = "least-predicted"  # random | nearest | least-predicted
    every_epoch: bool = False  # afresh from the selected set every epoch, instead of once before selection
    threshold: float = 0.9
    max_steps: int = 20
    epsilon: float = 32 / 255
    method: str = "auto"  # gradient | bisection (forward passes only) | auto: bisection for black boxes
    deeper: bool = True  # keep each pair's deeper copies (the paper's; runs before session 8 all did)
    pairs: bool = True  # keep the pair itself (False with deeper: the deeper copies alone)

    def __post_init__(self) -> None:
        check_types(self)
        _require(self.method in ("auto", "gradient", "bisection"),
                 f"unknown boundary method '{self.method}'; valid: auto, gradient, bisection")
        _require(0 < self.fraction <= 1, f"boundary fraction must be in (0, 1], got {self.fraction}")
        _require(self.targets in ("random", "nearest", "least-predicted"),
                 f"unknown boundary targets '{self.targets}'; valid: random, nearest, least-predicted")
        _require(0 < self.threshold <= 1, f"boundary threshold must be in (0, 1], got {self.threshold}")
        _require(self.max_steps > 0, f"boundary max_steps must be positive, got {self.max_steps}")
        _require(self.epsilon > 0, f"boundary epsilon must be positive, got {self.epsilon}")
        _require(self.pairs or self.deeper, "boundary samples need the pairs or their deeper copies kept")

    @property
    def samples_per_pair(self) -> int:
        """Samples each kept pair adds to the set: the pair and/or its two deeper copies."""
        return len(kept_roles(self.pairs, self.deeper))

    def attack(self) -> dict:
        """Keyword arguments of boundary.boundary_pairs."""
        return {"targets": self.targets, "threshold": self.threshold, "max_steps": self.max_steps,
                "epsilon": self.epsilon, "method": self.method, "pairs": self.pairs, "deeper": self.deeper}


@dataclass(frozen=True)
class RefineConfig:
    """Surrogate images refined towards the teacher's BatchNorm statistics (refine.py)."""

    steps: int = 40
    lr: float = 0.02
    bn_weight: float = 0.05  # 0: the class term alone, no pull towards the statistics
    jitter: int = 2  # pixels of random shift per step
    blur: float = 0.0  # Gaussian sigma in pixels applied to each step's gradient (0: none)

    def __post_init__(self) -> None:
        check_types(self)
        for name in ("steps", "lr"):
            _require(getattr(self, name) > 0, f"refine {name} must be positive, got {getattr(self, name)}")
        _require(self.bn_weight >= 0, f"refine bn_weight must be >= 0, got {self.bn_weight}")
        _require(self.jitter >= 0, f"refine jitter must be >= 0, got {self.jitter}")
        _require(self.blur >= 0, f"refine blur must be >= 0, got {self.blur}")


@dataclass(frozen=True)
class DataConfig:
    """What the student is shown: a source or image set, how it is selected, streamed and extended.

    candidates: images drawn from a source (or sampled from a set; 0 keeps a set whole) before
    teacher-balanced selection keeps `per_class` per predicted class (None: keep every candidate).
    stream: fresh synthetic images every step instead of a fixed set.
    adapt: shaders only: steer the programs with the teacher's predictions first (adapt.py).
    """

    data: str
    candidates: int  # the library's default: recipe.CANDIDATES
    per_class: int | None  # by default recipe.per_class(classes): recipe.SET_IMAGES over the classes
    stream: bool = False
    source_params: tuple[tuple[str, Any], ...] = ()
    boundary: BoundaryConfig | None = None
    adapt: bool = False
    refine: RefineConfig | None = None  # the selected images refined towards the teacher's statistics

    def __post_init__(self) -> None:
        check_types(self)
        _require(bool(self.data), "no distillation data given")
        _require(self.candidates >= 0, f"candidates must be >= 0, got {self.candidates}")
        _require(self.per_class is None or self.per_class > 0,
                 f"per-class count must be positive (or None to keep all), got {self.per_class}")
        _require(not (self.stream and self.boundary), "boundary samples need a fixed set; drop stream or boundary")
        _require(not (self.stream and self.refine), "refining images needs a fixed set; drop stream or refine")
        _require(not self.adapt or self.data == "shaders",
                 f"adapt steers shader programs; '{self.data}' is not shaders")


def field_defaults() -> dict[str, dict[str, Any]]:
    """The default of every field of the configs a run's identity records, by the key that holds
    them there ('train', 'data', 'boundary'): a field a run of an earlier version did not record
    is no difference when it takes its default (rundir.differences), so upgrading resumes runs."""
    def defaults(cls) -> dict[str, Any]:
        return {f.name: f.default for f in fields(cls) if f.default is not dataclasses.MISSING}
    return {"train": defaults(TrainConfig), "data": defaults(DataConfig), "boundary": defaults(BoundaryConfig),
            "refine": defaults(RefineConfig)}


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def _accepts(annotation, value) -> bool:
    """Whether `value` fits a field annotation (int, float, str, bool, tuples, X | None, nested configs)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(a, value) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is Any:
        return True
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if (origin or annotation) is tuple:
        return isinstance(value, tuple)
    return isinstance(value, annotation)


def check_types(cfg) -> None:
    """UserError naming the first field whose value has the wrong type (e.g. lr=abc, epochs=[1, 2])."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if not _accepts(f.type, value):
            raise UserError(f"{f.name} must be {_describe_type(f.type)}, got {value!r}")


def _describe_type(annotation) -> str:
    words = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "none"}
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_describe_type(a) for a in typing.get_args(annotation))
    if (typing.get_origin(annotation) or annotation) is tuple:
        return "a list"
    return words.get(annotation, getattr(annotation, "__name__", str(annotation)))


def parse_assignments(items: list[str], option: str = "--set") -> list[tuple[str, Any]]:
    """`key=value` strings from the command line (--set, --param) -> (key, value) pairs, values read as YAML."""
    import yaml

    pairs = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"{option} expects KEY=VALUE, got '{item}'")
        try:
            pairs.append((key, yaml.safe_load(raw)))
        except yaml.YAMLError:
            raise UserError(f"{option} {key}: cannot read the value '{raw}'") from None
    return pairs


def read_settings(path: str) -> dict[str, Any]:
    """A YAML mapping of setting: value (a --config file); checked against the fields by `override`."""
    import yaml

    try:
        with open(path) as f:
            data = yaml.load(f, Loader=_unique_keys_loader(yaml)) or {}
    except OSError as e:
        raise UserError(f"cannot read config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise UserError(f"config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"config {path} must be a mapping of setting: value")
    return data


def _unique_keys_loader(yaml):
    """yaml.SafeLoader that refuses a key given twice in one mapping: plain YAML keeps the last one
    silently, so a config with a repeated `out:` would write its runs into another experiment."""

    class UniqueKeys(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: merged keys may be overridden
                    continue
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key '{key}' appears twice in one mapping (line {key_node.start_mark.line + 1})",
                        key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeys


def override(cfg, settings: "list[str] | dict[str, Any] | None"):
    """`cfg` with some fields replaced: `settings` is a dict, or `key=value` strings (--set) read as YAML.

    Lists become tuples. For a TrainConfig, `augment.FIELD` sets one field of the augmentation
    regime (it joins `regime_overrides`), e.g. `augment.randaugment_n=0`. Unknown names and bad
    values are one-line errors.
    """
    pairs = parse_assignments(settings) if isinstance(settings, list) else list((settings or {}).items())
    names = {f.name for f in fields(cfg)}
    changes, regime_fields = {}, {}
    for key, value in pairs:
        if key.startswith("augment.") and "regime_overrides" in names:
            regime_fields[key.removeprefix("augment.")] = value
            continue
        if key not in names:
            hint = "; augment.FIELD for a field of the augmentation regime" if "regime_overrides" in names else ""
            raise UserError(f"unknown setting '{key}'; valid: {', '.join(sorted(names))}{hint}")
        changes[key] = tuple(tuple(v) if isinstance(v, list) else v for v in value) if isinstance(value, list) else value
    cfg = replace(cfg, **changes)
    if regime_fields:
        cfg = replace(cfg, regime_overrides=tuple({**dict(cfg.regime_overrides), **regime_fields}.items()))
    return cfg
