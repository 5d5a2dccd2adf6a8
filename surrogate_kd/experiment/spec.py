"""The experiment file's schema: checked dataclasses, one per mapping, and how a mapping from the
file becomes one (an unknown key or a wrong type is a one-line error naming the key). The schema
as a user writes it is the package docstring (__init__.py)."""

import copy
import inspect
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from .. import api
from ..config import TrainConfig, check_types, parse_assignments, read_settings
from ..errors import UserError
from ..models import MODELS
from ..sources import SOURCES

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_+-]*$")  # names become directories and dotted --set keys
NAMED_DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100")
ORIGINAL = "original"  # a set's data: the teacher's own training data


def _default(fn, name: str):
    """A parameter's default in the api function it is passed to: the library owns every default."""
    return inspect.signature(fn).parameters[name].default


@dataclass(frozen=True)
class TeacherSpec:
    """A teacher: trained here from `data` (when no `checkpoint`), or loaded from `checkpoint`."""

    data: str | None = None  # labelled training data; also what a set's `data: original` means
    arch: str = _default(api.train_teacher, "arch")
    checkpoint: str | None = None
    eval_data: str | None = None
    train: dict = field(default_factory=dict)  # TrainConfig fields over the teacher recipe
    out: str | None = None  # its run directory (default OUT/teachers/NAME)

    def __post_init__(self) -> None:
        check_types(self)
        if self.data is None and self.checkpoint is None:
            raise UserError("give data (to train the teacher here) or checkpoint (to load one)")
        if self.checkpoint is not None and self.train:
            raise UserError("train settings are for a teacher trained here; this one is a checkpoint")


@dataclass(frozen=True)
class SetSpec:
    """A distillation set: api.distill's data options (same names, same defaults) and a recipe of its own."""

    data: str
    kind: str | None = None  # real | synthetic: picks the library's tau and regime (default: by data)
    candidates: int = _default(api.distill, "candidates")
    per_class: int | None = _default(api.distill, "per_class")  # null: the recipe's; 0: every candidate
    stream: bool = _default(api.distill, "stream")
    params: dict = field(default_factory=dict)  # a synthetic source's parameters
    boundary_fraction: float | None = _default(api.distill, "boundary_fraction")  # null: the recipe's choice
    boundary_targets: str = _default(api.distill, "boundary_targets")
    boundary_every_epoch: bool = _default(api.distill, "boundary_every_epoch")
    boundary_method: str = _default(api.distill, "boundary_method")
    boundary_keep: str | None = _default(api.distill, "boundary_keep")  # null: the recipe's choice
    adapt: bool | None = _default(api.distill, "adapt")  # null: the library's choice (adapt.adapts_by_default)
    refine_steps: int | None = _default(api.distill, "refine_steps")  # null: the recipe's choice
    refine_bn_weight: float | None = _default(api.distill, "refine_bn_weight")  # null: RefineConfig's
    refine_blur: float | None = _default(api.distill, "refine_blur")  # null: RefineConfig's
    # Instead of an even selection, a long-tailed one (paper Table 4): per_class x classes images,
    # quotas decaying from the most to the least predicted class by this ratio (select.py).
    long_tail: float | None = None
    recipe: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_types(self)
        if self.kind not in (None, "real", "synthetic"):
            raise UserError(f"kind must be real or synthetic, got '{self.kind}'")
        if self.candidates < 0 or (self.per_class is not None and self.per_class < 0):
            raise UserError("candidates and per_class must be >= 0")
        if self.boundary_fraction is not None and not 0 <= self.boundary_fraction <= 1:
            raise UserError(f"boundary_fraction must be in [0, 1], got {self.boundary_fraction}")
        if self.boundary_every_epoch and self.boundary_fraction == 0:
            raise UserError("boundary_every_epoch needs boundary_fraction > 0")
        if self.stream and not (self.data in SOURCES):
            raise UserError(f"stream needs a synthetic source ({', '.join(SOURCES.names())}), got '{self.data}'")
        if self.params and self.data not in SOURCES:
            raise UserError(f"params are a synthetic source's; '{self.data}' is not a source")
        if self.long_tail is not None and (self.long_tail < 1 or not self.per_class or self.stream
                                           or self.boundary_fraction):
            raise UserError("long_tail (a ratio >= 1) needs per_class, and neither stream nor boundary samples")


SET_FIELDS = tuple(f.name for f in fields(SetSpec) if f.name not in ("data", "recipe"))
RECIPE_FIELDS = tuple(f.name for f in fields(TrainConfig))


@dataclass(frozen=True)
class ExperimentSpec:
    """The whole file."""

    teachers: dict
    students: tuple | dict
    sets: dict
    name: str | None = None
    description: str = ""
    out: str | None = None
    eval_data: str | None = None
    device: str | None = None  # last layer of every teacher's and student's recipe
    download: bool = False
    overwrite: bool = False  # replace cells (and teachers) whose run directory holds other settings
    recipe: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    variants: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_types(self)
        if self.grid and self.variants:
            raise UserError("give grid or variants, not both")


def from_mapping(cls, value, where: str):
    """`cls(**value)` for a mapping from the file: unknown keys and wrong types name the key."""
    if not isinstance(value, dict):
        raise UserError(f"{where} must be a mapping, got {value!r}")
    names = [f.name for f in fields(cls)]
    for key in value:
        if key not in names:
            raise UserError(f"{_join(where, key)}: unknown key; valid: {', '.join(names)}")
    value = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
    try:
        return cls(**value)
    except TypeError as e:  # a required key is missing
        missing = re.findall(r"'(\w+)'", str(e))
        raise UserError(f"{_join(where, missing[0] if missing else '')}: required") from None
    except UserError as e:
        raise UserError(f"{where}: {e}" if where else str(e)) from None


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def flat_recipe(fields_: dict, where: str) -> dict:
    """Recipe fields with `augment: {FIELD: value}` spelled as `augment.FIELD` (what config.override takes)."""
    if not isinstance(fields_, dict):
        raise UserError(f"{where} must be a mapping of setting: value, got {fields_!r}")
    flat = {k: v for k, v in fields_.items() if k != "augment"}
    augment = fields_.get("augment", {})
    if not isinstance(augment, dict):
        raise UserError(f"{where}.augment must be a mapping of regime field: value, got {augment!r}")
    flat.update({f"augment.{k}": v for k, v in augment.items()})
    return flat


def split_fields(overrides: dict, where: str) -> tuple[dict, dict]:
    """A variant's fields -> (set fields, recipe fields); an unknown field names itself."""
    set_fields, recipe_fields = {}, {}
    for key, value in flat_recipe(overrides, where).items():
        if key in SET_FIELDS:
            set_fields[key] = tuple(value) if isinstance(value, list) else value
        elif key in RECIPE_FIELDS or key.startswith("augment."):
            recipe_fields[key] = value
        else:
            raise UserError(f"{_join(where, key)}: unknown field; valid: a set's ({', '.join(SET_FIELDS)}) or a "
                            f"recipe's (TrainConfig: {', '.join(RECIPE_FIELDS)}; augment.FIELD)")
    return set_fields, recipe_fields


def check_name(name, where: str) -> None:
    if not isinstance(name, str) or not NAME.match(name):
        raise UserError(f"{where}: name {name!r} must be letters, digits, _, + or - (it names a directory)")


def check_arch(arch: str, where: str) -> None:
    family, colon, _ = arch.partition(":")
    try:
        MODELS.get(f"{family}:<name>" if colon else arch)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def check_data(data: str, where: str) -> None:
    if data == ORIGINAL or data in SOURCES or data.partition(":")[0] in NAMED_DATASETS or Path(data).exists():
        return
    raise UserError(f"{where}: no such image set '{data}' (a source: {', '.join(SOURCES.names())}; "
                    f"{', '.join(NAMED_DATASETS)}; a path; or '{ORIGINAL}', the teacher's data)")


def read_config(config) -> tuple[dict, str]:
    """The file's mapping (or a dict given directly) and how to name it in messages."""
    if isinstance(config, dict):
        return copy.deepcopy(config), "config"
    return read_settings(str(config)), str(config)


def apply_settings(raw: dict, settings) -> dict:
    """--set KEY=VALUE with dotted keys into the file's mapping (`recipe.tau=8`, `teachers.t.train.epochs=1`)."""
    pairs = parse_assignments(settings) if isinstance(settings, (list, tuple)) else list((settings or {}).items())
    raw = copy.deepcopy(raw)
    for key, value in pairs:
        node, parts = raw, key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"--set {key}: {'.'.join(parts[:i + 1])} is not a mapping")
            node = child
        node[parts[-1]] = value
    return raw

