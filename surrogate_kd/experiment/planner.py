"""A config -> its Plan: every teacher and cell resolved and checked, nothing run."""

import itertools
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..config import TrainConfig
from ..errors import UserError
from ..recipe import data_kind, distill_config, resolve, teacher_recipe
from ..rundir import MODEL_FILE
from .spec import (NAMED_DATASETS, ORIGINAL, ExperimentSpec, SetSpec, TeacherSpec, apply_settings, check_arch,
                   check_data, check_name, flat_recipe, from_mapping, read_config, split_fields)


@dataclass(frozen=True)
class Teacher:
    name: str
    data: str | None
    arch: str
    checkpoint: Path  # where its weights are (or will be, once trained)
    out: Path | None  # run directory when trained here
    eval_data: str | None
    config: TrainConfig | None  # when trained here


@dataclass(frozen=True)
class Cell:
    name: str  # teacher/student/set[/variant]: its directory under OUT/cells and what --only matches
    teacher: str
    student: str
    arch: str
    set: str
    variant: str | None
    axes: tuple[tuple[str, str], ...]  # (axis, value label) of its variant
    options: dict  # api.distill keyword arguments beyond teacher, student and config
    config: TrainConfig
    out: Path


@dataclass(frozen=True)
class Plan:
    """Everything an experiment will do, resolved and checked."""

    name: str
    description: str
    source: str  # the config file (or 'a dict')
    raw: dict  # the config as run (settings applied)
    out: Path
    teachers: dict[str, Teacher]
    cells: list[Cell]
    axes: tuple[str, ...]  # variant axes, in order
    set_axes: tuple[str, ...]  # those that change the data (they split Table 3's rows)
    sets: tuple[str, ...]
    download: bool
    overwrite: bool

    def select(self, only: "str | list[str] | None") -> list[Cell]:
        """The cells `only` names: a cell, a group (a teacher, student, set or variant name, an
        `axis=value` of the grid, or a leading part of cell names such as `fmnist/convnet_tiny`)."""
        if not only:
            return self.cells
        wanted = [only] if isinstance(only, str) else list(only)
        chosen = [c for c in self.cells if any(_matches(c, w) for w in wanted)]
        if not chosen:
            shown = ", ".join(c.name for c in self.cells[:4]) + (", ..." if len(self.cells) > 4 else "")
            raise UserError(f"--only {' '.join(wanted)} matches no cell; cells: {shown}; or a teacher, student, set, "
                            "variant or axis=value")
        return chosen

    def check_teachers(self, cells: list[Cell]) -> None:
        """A checkpoint teacher must exist for the cells about to run; the others' may not exist yet (so
        `--only` can start one teacher's cells while another teacher still trains)."""
        for name in dict.fromkeys(c.teacher for c in cells):
            t = self.teachers[name]
            if t.config is None and not t.checkpoint.exists():
                raise UserError(f"{self.source}: teachers.{name}.checkpoint: no such file '{t.checkpoint}'")


def _matches(cell: Cell, wanted: str) -> bool:
    groups = {cell.teacher, cell.student, cell.set, cell.variant, *(f"{a}={v}" for a, v in cell.axes)}
    return wanted in groups or cell.name == wanted or cell.name.startswith(wanted.rstrip("/") + "/")


def _label(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def _variants(spec: ExperimentSpec) -> tuple[list[tuple[str | None, tuple, dict]], tuple[str, ...], tuple[str, ...]]:
    """[(variant name, ((axis, label), ...), fields)], the axes, and the axes that change the data."""
    if spec.variants:
        variants = []
        for name, overrides in spec.variants.items():
            check_name(name, "variants")
            split_fields(overrides, f"variants.{name}")
            variants.append((name, (("variant", name),), overrides))
        changes_data = any(split_fields(o, "")[0] for _, _, o in variants)
        return variants, ("variant",), ("variant",) if changes_data else ()
    if not spec.grid:
        return [(None, (), {})], (), ()
    axes, set_axes = [], []
    for axis, values in spec.grid.items():
        where = f"grid.{axis}"
        if isinstance(values, (list, tuple)):
            options = []
            for v in values:
                if isinstance(v, (dict, list, tuple)):
                    raise UserError(f"{where}: values must be plain (a number, a string, true/false, null); "
                                    "name bundles of fields instead: {name: {field: value}}")
                options.append((_label(v), {axis: v}))
        elif isinstance(values, dict):
            options = [(name, bundle) for name, bundle in values.items()]
            for name, _ in options:
                check_name(name, where)
        else:
            raise UserError(f"{where} must be a list of values or a mapping of named bundles, got {values!r}")
        if not options:
            raise UserError(f"{where} has no values")
        if any(split_fields(o, f"{where}.{n}" if isinstance(values, dict) else where)[0] for n, o in options):
            set_axes.append(axis)
        axes.append([(axis, label, o) for label, o in options])
    variants = []
    for point in itertools.product(*axes):
        merged = {}
        for _, _, o in point:
            merged.update(o)
        name = ",".join(f"{axis}={label}" for axis, label, _ in point)
        variants.append((name, tuple((axis, label) for axis, label, _ in point), merged))
    return variants, tuple(spec.grid), tuple(set_axes)


def _default_eval(data: str | None) -> str | None:
    return f"{data.partition(':')[0]}:test" if data and data.partition(":")[0] in NAMED_DATASETS else None


def _checkpoint_arch(path: Path) -> str:
    """A checkpoint teacher's architecture, from its sidecar (what the report's teacher table shows);
    a format without one (ONNX, TorchScript) is named by its suffix; one not there yet by '-'."""
    from ..checkpoint import read_sidecar

    if not path.exists():
        return "-"

    try:
        return read_sidecar(path.with_suffix(".json"))[0]
    except (UserError, OSError):
        return path.suffix.lstrip(".") or "-"


def _recipe(base: TrainConfig, layers: list[tuple[dict, str]], device: str | None) -> TrainConfig:
    cfg = base
    for settings, where in layers:
        try:
            cfg = resolve(cfg, settings=flat_recipe(settings, where))
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
    return replace(cfg, device=device) if device else cfg


def recipe_fields(cfg: TrainConfig) -> dict:
    """A whole TrainConfig as a config's `recipe` mapping (what scripts that build a config in Python pass)."""
    fields_ = {k: v for k, v in asdict(cfg).items() if k != "regime_overrides"}
    return {**fields_, "augment": dict(cfg.regime_overrides)} if cfg.regime_overrides else fields_


def plan(config, settings=None) -> Plan:
    """Read, override and check a config: every cell resolved, nothing run. One-line UserError naming the key."""
    raw, source = read_config(config)
    raw = apply_settings(raw, settings)
    try:
        return _plan(raw, source)
    except UserError as e:
        raise UserError(f"{source}: {e}") from None


def _plan(raw: dict, source: str) -> Plan:
    spec = from_mapping(ExperimentSpec, raw, "")
    if spec.out is None and source == "config":
        raise UserError("out: required for a config given as a dict")
    out = Path(spec.out if spec.out is not None else Path("runs/experiments") / Path(source).stem)
    for key in ("teachers", "sets"):
        if not getattr(spec, key):
            raise UserError(f"{key}: at least one is needed")
    teachers = {}
    for name, value in spec.teachers.items():
        where = f"teachers.{name}"
        check_name(name, "teachers")
        t = from_mapping(TeacherSpec, value, where)
        check_arch(t.arch, f"{where}.arch")
        if t.data is not None:
            check_data(t.data, f"{where}.data")
        trained = t.checkpoint is None
        run_out = Path(t.out) if t.out else out / "teachers" / name
        config = _recipe(teacher_recipe(), [(t.train, f"{where}.train")], spec.device) if trained else None
        arch = t.arch if trained else _checkpoint_arch(Path(t.checkpoint))
        teachers[name] = Teacher(name, t.data, arch, run_out / MODEL_FILE if trained else Path(t.checkpoint),
                                 run_out if trained else None, t.eval_data or spec.eval_data or _default_eval(t.data),
                                 config)
    if isinstance(spec.students, dict):
        students = dict(spec.students)
    else:
        students = {arch.replace(":", "-") if isinstance(arch, str) else arch: arch for arch in spec.students}
    if not students:
        raise UserError("students: at least one is needed")
    for name, arch in students.items():
        check_name(name, "students")
        if not isinstance(arch, str):
            raise UserError(f"students.{name} must be an architecture name, got {arch!r}")
        check_arch(arch, f"students.{name}")
    sets = {}
    for name, value in spec.sets.items():
        check_name(name, "sets")
        sets[name] = from_mapping(SetSpec, value, f"sets.{name}")
        check_data(sets[name].data, f"sets.{name}.data")
    variants, axes, set_axes = _variants(spec)
    cells = []
    for (tname, teacher), (sname, arch), (setname, set_spec), (vname, vaxes, overrides) in itertools.product(
            teachers.items(), students.items(), sets.items(), variants):
        where = f"variants.{vname}" if spec.variants else "grid"
        set_fields, recipe_fields = split_fields(overrides, where)
        s = set_spec
        if set_fields:
            s = from_mapping(SetSpec, {**asdict(set_spec), **set_fields}, f"sets.{setname} with {vname}")
        data = s.data
        if data == ORIGINAL:
            if teacher.data is None:
                raise UserError(f"sets.{setname}: data '{ORIGINAL}' needs teachers.{tname}.data (its training data)")
            data = teacher.data
        kind = s.kind or data_kind(data)
        layers = [(spec.recipe, "recipe"), (s.recipe, f"sets.{setname}.recipe"), (recipe_fields, where)]
        config = distill_config(kind, lambda base: _recipe(base, layers, spec.device))
        options = {"data": data, "candidates": s.candidates, "per_class": s.per_class, "stream": s.stream,
                   "params": dict(s.params) or None, "boundary_fraction": s.boundary_fraction,
                   "boundary_targets": s.boundary_targets, "boundary_every_epoch": s.boundary_every_epoch,
                   "boundary_method": s.boundary_method, "boundary_keep": s.boundary_keep, "adapt": s.adapt,
                   "refine_steps": s.refine_steps, "refine_bn_weight": s.refine_bn_weight,
                   "refine_blur": s.refine_blur,
                   "data_kind": kind, "eval_data": teacher.eval_data}
        parts = [tname, sname, setname] + ([vname] if vname else [])
        if s.long_tail is not None:
            options.update(long_tail=s.long_tail, pool=str(out.joinpath("pools", *parts)))
        cells.append(Cell("/".join(parts), tname, sname, arch, setname, vname, vaxes, options, config,
                          out.joinpath("cells", *parts)))
    return Plan(spec.name or (Path(source).stem if source != "config" else out.name), spec.description, source, raw,
                out, teachers, cells, axes, set_axes, tuple(sets), spec.download, spec.overwrite)
