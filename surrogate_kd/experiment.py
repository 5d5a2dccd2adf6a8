"""`surrogate-kd experiment CONFIG.yaml`: the paper's studies as grids of distillation runs, with their tables.

A YAML file names teachers, students, distillation sets and recipe variants; each cell is one
(teacher, student, set, variant) and one `distill` run directory under OUT/cells/, so a finished
cell is reused and an interrupted one resumes (rundir.py) when the experiment runs again. The
whole file is checked before anything runs: an unknown key or a wrong type is a one-line error
naming the key.

    name: table1                          # title of results.md (default: the file's name)
    out: runs/experiments/table1          # default: runs/experiments/<file stem>
    eval_data: fashion-mnist:test         # default: the teacher's, else <teacher data>:test
    teachers:                             # rows
      fmnist:
        data: fashion-mnist               # trained here (train-teacher) from labelled data ...
        arch: convnet_24
        train: {epochs: 7, mixup: false}  # TrainConfig fields over the teacher recipe
        out: runs/small/teacher           # optional: a run directory several experiments share
      # imported: {checkpoint: path/model.safetensors, data: cifar10}   ... or a checkpoint
    students: [convnet_tiny]              # architectures (or a mapping name: architecture)
    sets:                                 # columns
      original: {data: original}          # the teacher's own training data
      shaders: {data: shaders, params: {figure: 0.5}, candidates: 40000, per_class: 2000}
      noise: {data: noise, boundary_fraction: 0.1, recipe: {tau: 20}}
    recipe: {budget_images: 250000, tau: 4, augment: {elastic_p: 0.0}}   # every student
    grid:                                 # variants: the cartesian product of the axes
      targets: [soft, onehot, smoothed]   # a recipe or set field and its values, or
      selection:                          # named bundles of fields
        balanced: {candidates: 40000, per_class: 2000}
        none: {candidates: 20000, per_class: null}
    # variants: {name: {field: value, ...}, ...}    instead of grid: an explicit list

A student's recipe is layered: the library's recipe for the set's data kind (recipe.py), then
`recipe`, the set's `recipe`, the variant's fields, and `device`. A set's fields (and their
defaults) are api.distill's options; `per_class: null` keeps every candidate.

Outputs in OUT: experiment.yaml (the config as run), results.csv, results.json, results.md (the
paper's layouts: rows teacher x student [x variant axes], columns sets; Table 3's relative
entropies; the teachers), accuracy.png, class_histograms-<teacher>.png, and logs/ when jobs > 1.
"""

import copy
import csv
import inspect
import itertools
import json
import os
import platform
import re
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from . import api
from .checkpoint import provenance
from .config import TrainConfig, check_types, parse_assignments, read_settings
from .errors import UserError, first_line
from .files import atomic_write_text, writable_directory
from .models import MODELS
from .recipe import data_kind, describe, distill_recipe, resolve, teacher_recipe
from .rundir import MODEL_FILE, RESULT_FILE, as_json
from .sources import SOURCES

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_+-]*$")  # names become directories and dotted --set keys
NAMED_DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100")
ORIGINAL = "original"  # a set's data: the teacher's own training data


def _default(fn, name: str):
    """A parameter's default in the api function it is passed to: the library owns every default."""
    return inspect.signature(fn).parameters[name].default


# ----------------------------------------------------------------------------------------- the file's schema

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
    per_class: int | None = _default(api.distill, "per_class")  # null: every candidate, no selection
    stream: bool = _default(api.distill, "stream")
    params: dict = field(default_factory=dict)  # a synthetic source's parameters
    boundary_fraction: float = _default(api.distill, "boundary_fraction")
    boundary_targets: str = _default(api.distill, "boundary_targets")
    boundary_every_epoch: bool = _default(api.distill, "boundary_every_epoch")
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
        if not 0 <= self.boundary_fraction <= 1:
            raise UserError(f"boundary_fraction must be in [0, 1], got {self.boundary_fraction}")
        if self.boundary_every_epoch and not self.boundary_fraction:
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


# ----------------------------------------------------------------------------------------- the plan

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


def _matches(cell: Cell, wanted: str) -> bool:
    groups = {cell.teacher, cell.student, cell.set, cell.variant, *(f"{a}={v}" for a, v in cell.axes)}
    return wanted in groups or cell.name == wanted or cell.name.startswith(wanted.rstrip("/") + "/")


def _make(cls, value, where: str):
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


def _flat_recipe(fields_: dict, where: str) -> dict:
    """Recipe fields with `augment: {FIELD: value}` spelled as `augment.FIELD` (what config.override takes)."""
    if not isinstance(fields_, dict):
        raise UserError(f"{where} must be a mapping of setting: value, got {fields_!r}")
    flat = {k: v for k, v in fields_.items() if k != "augment"}
    augment = fields_.get("augment", {})
    if not isinstance(augment, dict):
        raise UserError(f"{where}.augment must be a mapping of regime field: value, got {augment!r}")
    flat.update({f"augment.{k}": v for k, v in augment.items()})
    return flat


def _split_fields(overrides: dict, where: str) -> tuple[dict, dict]:
    """A variant's fields -> (set fields, recipe fields); an unknown field names itself."""
    set_fields, recipe_fields = {}, {}
    for key, value in _flat_recipe(overrides, where).items():
        if key in SET_FIELDS:
            set_fields[key] = tuple(value) if isinstance(value, list) else value
        elif key in RECIPE_FIELDS or key.startswith("augment."):
            recipe_fields[key] = value
        else:
            raise UserError(f"{_join(where, key)}: unknown field; valid: a set's ({', '.join(SET_FIELDS)}) or a "
                            f"recipe's (TrainConfig: {', '.join(RECIPE_FIELDS)}; augment.FIELD)")
    return set_fields, recipe_fields


def _label(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def _variants(spec: ExperimentSpec) -> tuple[list[tuple[str | None, tuple, dict]], tuple[str, ...], tuple[str, ...]]:
    """[(variant name, ((axis, label), ...), fields)], the axes, and the axes that change the data."""
    if spec.variants:
        variants = []
        for name, overrides in spec.variants.items():
            _check_name(name, "variants")
            _split_fields(overrides, f"variants.{name}")
            variants.append((name, (("variant", name),), overrides))
        changes_data = any(_split_fields(o, "")[0] for _, _, o in variants)
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
                _check_name(name, where)
        else:
            raise UserError(f"{where} must be a list of values or a mapping of named bundles, got {values!r}")
        if not options:
            raise UserError(f"{where} has no values")
        if any(_split_fields(o, f"{where}.{n}" if isinstance(values, dict) else where)[0] for n, o in options):
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


def _check_name(name, where: str) -> None:
    if not isinstance(name, str) or not NAME.match(name):
        raise UserError(f"{where}: name {name!r} must be letters, digits, _, + or - (it names a directory)")


def _check_arch(arch: str, where: str) -> None:
    family, colon, _ = arch.partition(":")
    try:
        MODELS.get(f"{family}:<name>" if colon else arch)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def _check_data(data: str, where: str) -> None:
    if data == ORIGINAL or data in SOURCES or data.partition(":")[0] in NAMED_DATASETS or Path(data).exists():
        return
    raise UserError(f"{where}: no such image set '{data}' (a source: {', '.join(SOURCES.names())}; "
                    f"{', '.join(NAMED_DATASETS)}; a path; or '{ORIGINAL}', the teacher's data)")


def _default_eval(data: str | None) -> str | None:
    return f"{data.partition(':')[0]}:test" if data and data.partition(":")[0] in NAMED_DATASETS else None


def _recipe(base: TrainConfig, layers: list[tuple[dict, str]], device: str | None) -> TrainConfig:
    cfg = base
    for settings, where in layers:
        try:
            cfg = resolve(cfg, settings=_flat_recipe(settings, where))
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
    return replace(cfg, device=device) if device else cfg


def recipe_fields(cfg: TrainConfig) -> dict:
    """A whole TrainConfig as a config's `recipe` mapping (what scripts that build a config in Python pass)."""
    fields_ = {k: v for k, v in asdict(cfg).items() if k != "regime_overrides"}
    return {**fields_, "augment": dict(cfg.regime_overrides)} if cfg.regime_overrides else fields_


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


def plan(config, settings=None) -> Plan:
    """Read, override and check a config: every cell resolved, nothing run. One-line UserError naming the key."""
    raw, source = read_config(config)
    raw = apply_settings(raw, settings)
    try:
        return _plan(raw, source)
    except UserError as e:
        raise UserError(f"{source}: {e}") from None


def _plan(raw: dict, source: str) -> Plan:
    spec = _make(ExperimentSpec, raw, "")
    if spec.out is None and source == "config":
        raise UserError("out: required for a config given as a dict")
    out = Path(spec.out if spec.out is not None else Path("runs/experiments") / Path(source).stem)
    for key in ("teachers", "sets"):
        if not getattr(spec, key):
            raise UserError(f"{key}: at least one is needed")
    teachers = {}
    for name, value in spec.teachers.items():
        where = f"teachers.{name}"
        _check_name(name, "teachers")
        t = _make(TeacherSpec, value, where)
        _check_arch(t.arch, f"{where}.arch")
        if t.data is not None:
            _check_data(t.data, f"{where}.data")
        if t.checkpoint is not None and not Path(t.checkpoint).exists():
            raise UserError(f"{where}.checkpoint: no such file '{t.checkpoint}'")
        trained = t.checkpoint is None
        run_out = Path(t.out) if t.out else out / "teachers" / name
        config = _recipe(teacher_recipe(), [(t.train, f"{where}.train")], spec.device) if trained else None
        teachers[name] = Teacher(name, t.data, t.arch, run_out / MODEL_FILE if trained else Path(t.checkpoint),
                                 run_out if trained else None, t.eval_data or spec.eval_data or _default_eval(t.data),
                                 config)
    if isinstance(spec.students, dict):
        students = dict(spec.students)
    else:
        students = {arch.replace(":", "-") if isinstance(arch, str) else arch: arch for arch in spec.students}
    if not students:
        raise UserError("students: at least one is needed")
    for name, arch in students.items():
        _check_name(name, "students")
        if not isinstance(arch, str):
            raise UserError(f"students.{name} must be an architecture name, got {arch!r}")
        _check_arch(arch, f"students.{name}")
    sets = {}
    for name, value in spec.sets.items():
        _check_name(name, "sets")
        sets[name] = _make(SetSpec, value, f"sets.{name}")
        _check_data(sets[name].data, f"sets.{name}.data")
    variants, axes, set_axes = _variants(spec)
    cells = []
    for (tname, teacher), (sname, arch), (setname, set_spec), (vname, vaxes, overrides) in itertools.product(
            teachers.items(), students.items(), sets.items(), variants):
        where = f"variants.{vname}" if spec.variants else "grid"
        set_fields, recipe_fields = _split_fields(overrides, where)
        s = set_spec
        if set_fields:
            s = _make(SetSpec, {**asdict(set_spec), **set_fields}, f"sets.{setname} with {vname}")
        data = s.data
        if data == ORIGINAL:
            if teacher.data is None:
                raise UserError(f"sets.{setname}: data '{ORIGINAL}' needs teachers.{tname}.data (its training data)")
            data = teacher.data
        kind = s.kind or data_kind(data)
        config = _recipe(distill_recipe(kind), [(spec.recipe, "recipe"), (s.recipe, f"sets.{setname}.recipe"),
                                                (recipe_fields, where)], spec.device)
        options = {"data": data, "candidates": s.candidates, "per_class": s.per_class, "stream": s.stream,
                   "params": dict(s.params) or None, "boundary_fraction": s.boundary_fraction,
                   "boundary_targets": s.boundary_targets, "boundary_every_epoch": s.boundary_every_epoch,
                   "data_kind": kind, "eval_data": teacher.eval_data}
        parts = [tname, sname, setname] + ([vname] if vname else [])
        if s.long_tail is not None:
            options.update(long_tail=s.long_tail, pool=str(out.joinpath("pools", *parts)))
        cells.append(Cell("/".join(parts), tname, sname, arch, setname, vname, vaxes, options, config,
                          out.joinpath("cells", *parts)))
    return Plan(spec.name or (Path(source).stem if source != "config" else out.name), spec.description, source, raw,
                out, teachers, cells, axes, set_axes, tuple(sets), spec.download, spec.overwrite)


# ----------------------------------------------------------------------------------------- running

def _distill(long_tail: float | None = None, pool: str | None = None, **kwargs) -> dict:
    """api.distill; with `long_tail`, from a long-tailed selection written to `pool` first (reused when
    it was made by this teacher with these options)."""
    if long_tail is None:
        return api.distill(**kwargs)
    from .teacher import load_teacher, teacher_fingerprint

    teacher = load_teacher(kwargs["teacher"])
    wanted = {"teacher_fingerprint": teacher_fingerprint(teacher), "data": kwargs["data"],
              "per_class": kwargs["per_class"], "long_tail": long_tail, "candidates": kwargs["candidates"],
              "seed": kwargs["config"].seed}
    summary_file = Path(pool + ".json")
    try:
        summary = json.loads(summary_file.read_text())
        if summary.get("wanted") != wanted or not (Path(pool) / "manifest.json").exists():
            summary = None
    except (OSError, ValueError):
        summary = None
    if summary is None:
        summary = api.select(teacher, kwargs["data"], pool, kwargs["per_class"], long_tail=long_tail,
                             candidates=kwargs["candidates"], seed=wanted["seed"], overwrite=True,
                             download=kwargs.get("download", False))
        summary = {"wanted": wanted, **{k: v for k, v in summary.items() if k != "out"}}
        atomic_write_text(summary_file, json.dumps(summary, indent=2))
    result = api.distill(**{**kwargs, "data": pool, "candidates": 0, "per_class": None})
    # The candidates' relative entropy, like every other cell's (the pool's own is the long tail's).
    return {**result, "relative_entropy": summary["relative_entropy_candidates"],
            "relative_entropy_selected": summary["relative_entropy_selected"]}


def _work(kind: str, kwargs: dict, log: str | None) -> dict:
    """One teacher or cell, in this process or a worker; with `log`, its output goes there."""
    fn = {"teacher": api.train_teacher, "evaluate": api.evaluate, "distill": _distill}[kind]
    if log is None:
        return fn(**kwargs)
    with open(log, "a") as f, redirect_stdout(f), redirect_stderr(f):
        return fn(**kwargs)


def _init_worker(threads: int, slots, gpus: list[int]) -> None:
    """A worker process: its share of the CPU threads, and one GPU of its own when there are several."""
    slot = slots.get()
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus[slot % len(gpus)])
    import torch

    torch.set_num_threads(threads)


class _InProcess:
    """The executor for jobs=1: each task runs in this process, output on the terminal, when `next_done`
    asks for it, in the order submitted (so a teacher's line prints before its cells run)."""

    def __init__(self):
        self._tasks: dict[Future, tuple] = {}

    def submit(self, fn, *args) -> Future:
        future = Future()
        self._tasks[future] = (fn, args)
        return future

    def next_done(self, pending) -> list[Future]:
        future = next(iter(pending))
        fn, args = self._tasks.pop(future)
        try:
            future.set_result(fn(*args))
        except Exception as e:  # noqa: BLE001  reported with the cell, like a worker's exception
            future.set_exception(e)
        return [future]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _executor(jobs: int, device: str | None):
    if jobs <= 1:
        return _InProcess()
    import multiprocessing

    import torch

    context = multiprocessing.get_context("spawn")  # no forked copies of torch's threads
    slots = context.Queue()
    for i in range(jobs):
        slots.put(i)
    gpus = list(range(torch.cuda.device_count())) if device != "cpu" and torch.cuda.device_count() > 1 else []
    threads = max(1, (os.cpu_count() or 1) // jobs)
    return ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker, initargs=(threads, slots, gpus))


def _teacher_task(plan: Plan, t: Teacher) -> tuple[str, dict]:
    if t.config is None:  # a checkpoint: only its accuracy to find out
        return "evaluate", {"model": str(t.checkpoint), "data": t.eval_data, "download": plan.download}
    return "teacher", {"data": t.data, "out": str(t.out), "arch": t.arch, "eval_data": t.eval_data,
                       "download": plan.download, "overwrite": plan.overwrite, "config": t.config}


def _cell_task(plan: Plan, cell: Cell) -> dict:
    return {"teacher": str(plan.teachers[cell.teacher].checkpoint), "out": str(cell.out), "student": cell.arch,
            **cell.options, "download": plan.download, "overwrite": plan.overwrite, "config": cell.config}


def _say(message: str) -> None:
    print(f"experiment: {message}", flush=True)


def _run(plan: Plan, cells: list[Cell], jobs: int) -> tuple[dict[str, dict], dict[str, dict], dict[str, str]]:
    """Teachers first, each one's cells as soon as it is ready; returns teacher results, cell results, failures."""
    teacher_results, cell_results, failed = {}, {}, {}
    logs = writable_directory(plan.out / "logs") if jobs > 1 else None
    with _executor(jobs, cells[0].config.device) as pool:
        pending: dict[Future, tuple[str, str]] = {}

        def submit(kind: str, name: str, task: str, kwargs: dict) -> None:
            log = str(logs / (name.replace("/", "--") + ".log")) if logs else None
            if logs:
                _say(f"{kind} {name}: started (log: {log})")
            pending[pool.submit(_work, task, kwargs, log)] = (kind, name)

        for name in dict.fromkeys(c.teacher for c in cells):
            submit("teacher", name, *_teacher_task(plan, plan.teachers[name]))
        while pending:
            if isinstance(pool, _InProcess):
                done = pool.next_done(pending)
            else:
                done = wait(list(pending), return_when=FIRST_COMPLETED)[0]
            for future in done:
                kind, name = pending.pop(future)
                try:
                    result = future.result()
                except Exception as e:  # noqa: BLE001  one failed cell must not lose the others
                    failed[name] = first_line(e) if isinstance(e, UserError) else f"{type(e).__name__}: {first_line(e)}"
                    _say(f"{kind} {name}: failed: {failed[name]}")
                    if kind == "teacher":
                        for c in cells:
                            if c.teacher == name:
                                failed[c.name] = f"teacher {name} failed"
                    continue
                accuracy = result.get("test_accuracy") or result.get("accuracy")
                how = ("reused" if result.get("reused") else f"{result['seconds']:.0f} s" if "seconds" in result
                       else "checkpoint")
                _say(f"{kind} {name}: test accuracy {'-' if accuracy is None else f'{accuracy:.4f}'} ({how})")
                if kind == "teacher":
                    teacher_results[name] = result
                    for c in cells:
                        if c.teacher == name:
                            submit("cell", c.name, "distill", _cell_task(plan, c))
                else:
                    cell_results[name] = result
    return teacher_results, cell_results, failed


def _earlier_result(path: Path, train: dict | None) -> dict | None:
    """A finished run's result.json in `path`, when it was made with this training config (for cells
    and teachers this call did not run: --only)."""
    try:
        result = json.loads((path / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not (path / MODEL_FILE).exists() or (train is not None and result.get("config", {}).get("train") != train):
        return None
    return result


def experiment(config_path, settings=None, only=None, jobs=None) -> dict:
    """Run the cells of an experiment not yet finished and write its results (see the module docstring).

    config_path: a YAML file (or a dict of the same shape); settings: --set KEY=VALUE strings (or a
    dict) with dotted keys into the file; only: a cell or group name (or a list of them); jobs:
    processes working at once (default 1; CPU threads are shared out among them, and each takes
    its own GPU when there are several). A teacher finishes before its cells start.
    Raises UserError when a cell failed, after writing the results of the others.
    """
    import yaml

    jobs = 1 if jobs is None else jobs
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise UserError(f"--jobs must be a positive integer, got {jobs!r}")
    the_plan = plan(config_path, settings)
    cells = the_plan.select(only)
    writable_directory(the_plan.out)
    command = " ".join(["surrogate-kd experiment", str(config_path)]
                       + [f"--set {s}" for s in (settings if isinstance(settings, (list, tuple)) else [])]
                       + ([f"--only {o}" for o in ([only] if isinstance(only, str) else only)] if only else [])
                       + ([f"--jobs {jobs}"] if jobs > 1 else []))
    atomic_write_text(the_plan.out / "experiment.yaml",
                      f"# {command}\n" + yaml.safe_dump(the_plan.raw, sort_keys=False))
    _say(f"{len(cells)} of {len(the_plan.cells)} cells, {len({c.teacher for c in cells})} teacher(s), "
         f"jobs {jobs}; results in {the_plan.out}")
    started = time.perf_counter()
    teacher_results, cell_results, failed = _run(the_plan, cells, jobs)
    return write_results(the_plan, teacher_results, cell_results, failed, command, time.perf_counter() - started)


# ----------------------------------------------------------------------------------------- results

CSV_COLUMNS = ("cell", "teacher", "student", "set", "variant", "status", "teacher_accuracy", "relative_entropy",
               "relative_entropy_with_boundary", "selected", "test_accuracy", "steps", "seconds", "recipe", "run",
               "error")


def _rows(plan: Plan, teacher_results: dict, cell_results: dict, failed: dict) -> tuple[dict, list[dict]]:
    teachers = {}
    for name, t in plan.teachers.items():
        result = teacher_results.get(name)
        if result is None and t.out is not None:
            result = _earlier_result(t.out, as_json(asdict(t.config)))
        teachers[name] = {"teacher": name, "arch": t.arch, "data": t.data or "-",
                          "test_accuracy": (result or {}).get("test_accuracy", (result or {}).get("accuracy")),
                          "parameters": (result or {}).get("parameters"), "seconds": (result or {}).get("seconds"),
                          "checkpoint": str(t.checkpoint)}
    rows = []
    for cell in plan.cells:
        result, status = cell_results.get(cell.name), None
        if result is not None:
            status = "reused" if result.get("reused") else "done"
        elif cell.name in failed:
            status = "failed"
        else:
            result = _earlier_result(cell.out, as_json(asdict(cell.config)))
            status = "earlier" if result else "not run"
        result = result or {}
        rows.append({"cell": cell.name, "teacher": cell.teacher, "student": cell.student, "set": cell.set,
                     "variant": cell.variant or "", **dict(cell.axes), "status": status,
                     "teacher_accuracy": teachers[cell.teacher]["test_accuracy"],
                     "relative_entropy": result.get("relative_entropy"),
                     "relative_entropy_with_boundary": result.get("relative_entropy_with_boundary"),
                     "selected": result.get("selected"), "test_accuracy": result.get("test_accuracy"),
                     "steps": result.get("steps"), "seconds": result.get("seconds"), "recipe": describe(cell.config),
                     "run": str(cell.out), "error": failed.get(cell.name, ""),
                     "class_histogram": result.get("class_histogram")})
    return teachers, rows


def pivot(plan: Plan, rows: list[dict], value: str, by: tuple[str, ...]) -> tuple[list[dict], list[tuple[str, str]]]:
    """Rows keyed by `by` (e.g. teacher, student, axes) with one column per set holding `value`."""
    table: dict[tuple, dict] = {}
    for row in rows:
        key = tuple(row.get(k) for k in by)
        entry = table.setdefault(key, {k: row.get(k) for k in by})
        if entry.get(row["set"]) is None:
            entry[row["set"]] = row.get(value)
    return list(table.values()), [(k, k) for k in by] + [(s, s) for s in plan.sets]


def write_results(plan: Plan, teacher_results: dict, cell_results: dict, failed: dict, command: str,
                  seconds: float) -> dict:
    """results.csv, results.json, results.md and the plots in plan.out; returns what they hold."""
    from .report import markdown_table, plot_class_histograms

    teachers, rows = _rows(plan, teacher_results, cell_results, failed)
    out = plan.out
    columns = list(CSV_COLUMNS[:5]) + list(plan.axes) + list(CSV_COLUMNS[5:])

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    from .files import atomic_write

    atomic_write(out / "results.csv", write_csv)
    labelled = [{**r, "teacher": f"{r['teacher']} ({_fmt(r['teacher_accuracy'])})"} for r in rows]
    by = ("teacher", "student", *plan.axes)
    accuracy_rows, accuracy_columns = pivot(plan, labelled, "test_accuracy", by)
    accuracy_table = markdown_table(accuracy_rows, accuracy_columns)
    entropy_rows, entropy_columns = pivot(plan, rows, "relative_entropy", ("teacher", *plan.set_axes))
    md = [f"# Experiment: {plan.name}", ""] + ([plan.description.strip(), ""] if plan.description else [])
    md += [f"Command: `{command}`", "", f"Machine: {machine()}; {seconds:.0f} s for this call.", "",
           "## Student test accuracy", "",
           "Rows: teacher (its test accuracy) x student" + (f" x {', '.join(plan.axes)}" if plan.axes else "")
           + "; columns: distillation sets (paper Table 1 layout).", "", accuracy_table, "",
           "## Relative entropy of the teacher's predictions over each set's candidates (paper Table 3)", "",
           markdown_table(entropy_rows, entropy_columns), ""]
    if any(r["relative_entropy_with_boundary"] is not None for r in rows):
        boundary_rows, boundary_columns = pivot(plan, rows, "relative_entropy_with_boundary",
                                                ("teacher", *plan.set_axes))
        md += ["With the boundary samples added (before selection):", "",
               markdown_table(boundary_rows, boundary_columns), ""]
    md += ["## Teachers", "", markdown_table(list(teachers.values()), [
        ("teacher", "teacher"), ("arch", "arch"), ("data", "data"), ("parameters", "parameters"),
        ("test_accuracy", "test acc."), ("seconds", "seconds"), ("checkpoint", "checkpoint")]), "",
           "## Cells", "", markdown_table(rows, [("cell", "cell"), ("status", "status"), ("selected", "images"),
                                                 ("steps", "steps"), ("seconds", "seconds"), ("recipe", "recipe")]),
           ""]
    if any(r["test_accuracy"] is not None for r in rows):
        plot_accuracy(accuracy_rows, by, plan.sets, out / "accuracy.png")
        md += ["![student test accuracy](accuracy.png)", ""]
    for name, t in plan.teachers.items():
        histograms = {}
        for r in rows:
            if r["teacher"] == name and r["class_histogram"] and r["set"] not in histograms:
                histograms[r["set"]] = r["class_histogram"]
        if histograms and t.checkpoint.exists():
            from .teacher import load_teacher

            classes = list(load_teacher(t.checkpoint).spec.classes)
            entropy = {r["set"]: r["relative_entropy"] for r in reversed(rows) if r["teacher"] == name}
            plot_class_histograms(histograms, classes, out / f"class_histograms-{name}.png",
                                  subtitles={s: f"rel. entropy {_fmt(entropy.get(s))}" for s in histograms})
            md += [f"![class histograms of teacher {name}](class_histograms-{name}.png)", ""]
    if failed:
        md += ["## Failed", ""] + [f"- `{name}`: {message}" for name, message in failed.items()] + [""]
    atomic_write_text(out / "results.md", "\n".join(md))
    for r in rows:
        r.pop("class_histogram")
    report = {"name": plan.name, "out": str(out), "command": command, "machine": machine(), **provenance(),
              "teachers": teachers, "results": rows, "failed": failed, "table": accuracy_table,
              "seconds": round(seconds, 1)}
    atomic_write_text(out / "results.json", json.dumps(report, indent=2, default=str))
    if failed:
        first = next(iter(failed.items()))
        raise UserError(f"{len(failed)} of the experiment's runs failed (first: {first[0]}: {first[1]}); "
                        f"the others' results are in {out / 'results.md'}")
    return report


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def machine() -> str:
    """What the numbers were measured on: CPU model and count, torch, and the GPU when there is one."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{os.cpu_count()} x {cpu}{gpu}, torch {torch.__version__}, Python {sys.version.split()[0]}"


def plot_accuracy(rows: list[dict], by: tuple[str, ...], sets: tuple[str, ...], path: Path) -> Path:
    """Grouped bars: one group per distillation set, one bar per row (teacher x student x variant)."""
    from .report import plt

    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(sets) * max(1, len(rows)) ** 0.5 + 2), 3.6))
    for i, row in enumerate(rows):
        values = [row.get(s) if row.get(s) is not None else 0.0 for s in sets]
        label = ", ".join(str(row[k]) for k in by if len({str(r[k]) for r in rows}) > 1) or str(row[by[0]])
        bars = ax.bar([x + (i - (len(rows) - 1) / 2) * width for x in range(len(sets))], values, width, label=label)
        if len(rows) <= 4:
            ax.bar_label(bars, labels=[f"{v:.3f}" if v else "" for v in values], fontsize=7)
    ax.set_xticks(range(len(sets)))
    ax.set_xticklabels(sets)
    ax.set_ylabel("student test accuracy")
    ax.set_ylim(0, 1.05)
    if len(rows) > 1:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
