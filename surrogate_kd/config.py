"""Frozen dataclasses, one per concern. YAML files only supply defaults; CLI flags override."""

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .errors import UserError


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
    targets: str = "soft"  # soft | onehot | smoothed (paper Table 4)
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
    checkpoint_every: float = 1.0  # epochs between resumable-state saves


def parse_assignments(items: list[str], option: str = "--set") -> list[tuple[str, Any]]:
    """`key=value` strings from the command line (--set, --param) -> (key, value) pairs, values read as YAML."""
    import yaml

    pairs = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"{option} expects KEY=VALUE, got '{item}'")
        pairs.append((key, yaml.safe_load(raw)))
    return pairs


def override(cfg, assignments: list[str]):
    """Apply `key=value` strings (the CLI's --set) to a frozen dataclass, parsing values as YAML.

    For a TrainConfig, `augment.FIELD=VALUE` sets one field of the augmentation regime (it joins
    `regime_overrides`), e.g. `augment.randaugment_n=0`.
    """
    names = {f.name: f for f in fields(cfg)}
    changes, regime_fields = {}, {}
    for key, value in parse_assignments(assignments):
        if key.startswith("augment.") and "regime_overrides" in names:
            regime_fields[key.removeprefix("augment.")] = value
            continue
        if key not in names:
            hint = "; augment.FIELD for a field of the augmentation regime" if "regime_overrides" in names else ""
            raise UserError(f"unknown setting '{key}'; valid: {', '.join(sorted(names))}{hint}")
        changes[key] = tuple(value) if isinstance(value, list) else value
    cfg = replace(cfg, **changes)
    if regime_fields:
        from .augment import get_regime

        merged = {**dict(cfg.regime_overrides), **regime_fields}
        get_regime(cfg.regime, **merged)  # an unknown field or a bad value is an error now, not at step 0
        cfg = replace(cfg, regime_overrides=tuple(merged.items()))
    return cfg


def from_yaml(cls, path: str):
    """Defaults for `cls` from a YAML mapping; unknown keys are an error, not silently dropped."""
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except OSError as e:
        raise UserError(f"cannot read config {path}: {e.strerror}") from None
    if not isinstance(data, dict):
        raise UserError(f"config {path} must be a mapping of setting: value")
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise UserError(f"config {path}: unknown setting(s) {', '.join(sorted(unknown))}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def to_dict(cfg) -> dict:
    return asdict(cfg)
