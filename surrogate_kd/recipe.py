"""The one owner of every default: the recipe a command starts from, per data kind.

`train-teacher` and `distill` (and their API functions) resolve their TrainConfig here, and only
here: library defaults for the command and the data kind, then a YAML file of settings
(--config), then KEY=VALUE settings (--set) and explicit arguments, each layer replacing only
the fields it names. The CLI passes through what the user set and nothing else, so the same
arguments give the same config through the API and the CLI.

The paper's recipe (Sect. 4): teachers train with flip + crop + RandAugment (`standard`) and no
mixup; students distil with tau 2 from real data (in-domain or out-of-domain photos alike) and
tau 20 from synthetic data, which also gets the heavier `high` regime.
"""

from typing import Any

from .config import TrainConfig, override, read_settings
from .errors import UserError

DATA_KINDS = ("real", "synthetic")
PAPER_TAU = {"real": 2.0, "synthetic": 20.0}
PAPER_REGIME = {"real": "standard", "synthetic": "high"}


def data_kind(data: str) -> str:
    """'synthetic' for generated sources; 'real' for image sets and for `photos` (real photographs,
    out of domain), which is what picks the paper's default tau and regime."""
    from .teacher import is_source

    return "synthetic" if is_source(data) and data != "photos" else "real"


def teacher_recipe() -> TrainConfig:
    """Defaults for training a teacher on labelled data."""
    return TrainConfig(regime="standard", mixup=False)


def distill_recipe(kind: str) -> TrainConfig:
    """Defaults for distilling through data of `kind` ('real' or 'synthetic')."""
    if kind not in DATA_KINDS:
        raise UserError(f"unknown data kind '{kind}'; valid: {', '.join(DATA_KINDS)}")
    return TrainConfig(tau=PAPER_TAU[kind], regime=PAPER_REGIME[kind])


def resolve(base: TrainConfig, config: "TrainConfig | str | dict | None" = None,
            settings: "list[str] | dict[str, Any] | None" = None, **fields) -> TrainConfig:
    """`base` with the caller's layers on top: `config` (a YAML path or a dict of settings; a whole
    TrainConfig replaces `base`), then `settings` (KEY=VALUE strings or a dict), then `fields`
    (keyword arguments named like TrainConfig's fields; None means unset)."""
    if isinstance(config, TrainConfig):
        cfg = config
    else:
        cfg = override(base, read_settings(config) if isinstance(config, str) or hasattr(config, "__fspath__")
                       else config)
    cfg = override(cfg, settings)
    return override(cfg, {k: v for k, v in fields.items() if v is not None})


def describe(cfg: TrainConfig) -> str:
    """A short human description of a recipe (logs and report columns)."""
    overrides = ",".join(f"{k}={v}" for k, v in cfg.regime_overrides)
    budget = f"{cfg.budget_images:,} images" if cfg.budget_images else f"{cfg.epochs:g} epochs"
    return (f"{budget}, batch {cfg.batch_size}, lr {cfg.lr:g}, tau {cfg.tau:g}, "
            f"{cfg.regime}{'(' + overrides + ')' if overrides else ''}, mixup {'on' if cfg.mixup else 'off'}")

