"""`surrogate-kd experiment CONFIG.yaml`: the paper's studies as grids of distillation runs, with their tables.

A YAML file names teachers, students, distillation sets and recipe variants; each cell is one
(teacher, student, set, variant) and one `distill` run directory under OUT/cells/, so a finished
cell is reused and an interrupted one resumes (rundir.py) when the experiment runs again. The
whole file is checked before anything runs: an unknown key or a wrong type is a one-line error
naming the key. A checkpoint teacher's file must exist only when its cells are selected, so
`--only` can run one teacher's cells while another is still training.

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
      targets: [soft, logits, onehot]     # a recipe or set field and its values, or
      selection:                          # named bundles of fields
        balanced: {candidates: 40000, per_class: 2000}
        none: {candidates: 20000, per_class: 0}
    # variants: {name: {field: value, ...}, ...}    instead of grid: an explicit list

A student's recipe is layered: the library's recipe for the set's data kind (recipe.py), then
`recipe`, the set's `recipe`, the variant's fields, and `device`. A set's fields (and their
defaults) are api.distill's options; `per_class: 0` keeps every candidate (null, the default, takes
the recipe's: recipe.SET_IMAGES split over the teacher's classes).

Outputs in OUT: experiment.yaml (the config as run), results.csv, results.json, results.md (the
paper's layouts: rows teacher x student [x variant axes], columns sets; Table 3's relative
entropies; the teachers), accuracy.png, class_histograms-<teacher>.png, and logs/ when jobs > 1.

Data flows one way through the package; `experiment()` below calls each step in turn:

    spec.py     the file's schema as checked dataclasses; reading the file; --set
    planner.py  config -> Plan: every teacher and cell resolved and checked, nothing run
    runner.py   Plan -> runs: teachers first, then their cells, in this process or in workers
    results.py  runs -> results.csv / .json / .md and the plots (report.py draws them)
"""

import time

from ..errors import UserError
from ..files import atomic_write_text, writable_directory
from .planner import Cell, Plan, Teacher, plan, recipe_fields
from .results import write_results
from .runner import run_cells, say
from .spec import apply_settings, read_config

__all__ = ["Cell", "Plan", "Teacher", "apply_settings", "experiment", "plan", "read_config", "recipe_fields",
           "write_results"]


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
    the_plan.check_teachers(cells)
    writable_directory(the_plan.out)
    command = " ".join(["surrogate-kd experiment", str(config_path)]
                       + [f"--set {s}" for s in (settings if isinstance(settings, (list, tuple)) else [])]
                       + ([f"--only {o}" for o in ([only] if isinstance(only, str) else only)] if only else [])
                       + ([f"--jobs {jobs}"] if jobs > 1 else []))
    atomic_write_text(the_plan.out / "experiment.yaml",
                      f"# {command}\n" + yaml.safe_dump(the_plan.raw, sort_keys=False))
    say(f"{len(cells)} of {len(the_plan.cells)} cells, {len({c.teacher for c in cells})} teacher(s), "
        f"jobs {jobs}; results in {the_plan.out}")
    started = time.perf_counter()
    teacher_results, cell_results, failed = run_cells(the_plan, cells, jobs)
    return write_results(the_plan, teacher_results, cell_results, failed, command, time.perf_counter() - started)
