"""The library's commands, one function each, with the names and defaults of the CLI's commands.

train_teacher: labelled data -> teacher checkpoint (the paper's teacher recipe).
distill:       teacher + surrogate data -> (teacher-balanced selection) -> student checkpoint.
evaluate:      any checkpoint on a labelled set -> accuracy, per-class accuracy, agreement.

Training settings come as keyword arguments named like TrainConfig's fields (`epochs=3, tau=4`),
as `config` (a YAML file, a dict, or a whole TrainConfig) and as `settings` (KEY=VALUE strings,
the CLI's --set), layered over the library's recipe in recipe.resolve.

Each run owns its output directory (rundir.RunDir): it refuses another run's directory and the
teacher's, resumes itself after an interruption, and commits weights and result together.

Under torchrun, train_teacher and distill run on every rank and train data-parallel (parallel.py).
Every rank builds the same training set itself, deterministically from the seed, rather than
rank 0 building it and sending it: nothing to transfer, no rank idle meanwhile, and the streams
that build their data during training (--stream, boundary samples every epoch) work this way
anyway. Rank 0 alone writes files; every rank returns the result.
"""

import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from . import parallel
from .adapt import should_adapt
from .batches import ArrayBatches, make_batches
from .checkpoint import provenance
from .config import BoundaryConfig, DataConfig, InputSpec, RefineConfig, keep_flags
from .data import DATASET_STATS, ImageSet, open_images
from .distill import train
from .errors import UserError
from .models import build_model, count_parameters
from .recipe import BOUNDARY_KEEP, CANDIDATES, describe, distill_config, resolve, teacher_recipe, why
from .recipe import boundary_fraction as default_boundary_fraction
from .recipe import data_kind as default_data_kind
from .recipe import per_class as default_per_class
from .recipe import refine_steps as default_refine_steps
from .refine import can_refine, require_refinable, teacher_grain
from .rundir import RunDir
from .runtime import evaluate_logits, predict, resolve_device
from .select import DEFAULT_CAP
from .teacher import is_source, load_teacher, teacher_fingerprint


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> Path:
    """uint8 (N, C, H, W) -> a PNG grid."""
    from torchvision.utils import save_image

    save_image(images.float().div(255).cpu(), path, nrow=nrow, padding=1)
    return path


def _spec_for(images: ImageSet, dataset: str) -> InputSpec:
    base = dataset.partition(":")[0]
    if base in DATASET_STATS:
        mean, std = DATASET_STATS[base]
    else:  # statistics of the data itself, per channel
        x = images.images[:10000].float().div(255)
        mean = tuple(x.mean((0, 2, 3)).tolist())
        std = tuple(x.std((0, 2, 3)).clamp(min=1e-3).tolist())
    if images.labels is None:
        raise UserError(f"training a teacher needs labelled images; '{dataset}' has no labels")
    num_classes = int(images.labels.max()) + 1
    if num_classes < 2:
        raise UserError(f"training a teacher needs at least two classes; '{dataset}' has {num_classes}")
    classes = images.classes or tuple(str(i) for i in range(num_classes))
    return InputSpec(images.size, images.channels, tuple(mean), tuple(std), tuple(classes))


def _eval_set(eval_data: str | None, spec: InputSpec, download: bool) -> ImageSet | None:
    """The labelled held-out set, in the model's input spec, its folder labels matched by class name."""
    if eval_data is None:
        return None
    images = open_images(eval_data, spec.size, spec.channels, download=download, classes=spec.classes)
    if images.labels is None:
        raise UserError(f"'{images.name}' has no labels to evaluate against")
    if int(images.labels.max()) >= len(spec.classes):
        raise UserError(f"'{images.name}' has labels up to {int(images.labels.max())} but the model has "
                        f"{len(spec.classes)} classes")
    return images


def _say(message: str) -> None:
    if parallel.is_main():
        print(f"surrogate-kd: {message}", file=sys.stderr, flush=True)


def train_teacher(data: str = "fashion-mnist", out: str | Path = "runs/teacher", arch: str = "resnet_mini", *,
                  eval_data: str | None = None, download: bool = False, overwrite: bool = False,
                  config=None, settings=None, **train_settings) -> dict:
    """Train a teacher with one-hot cross-entropy; a finished run with the same config is reused.

    `train_settings`: TrainConfig fields (epochs, lr, batch_size, seed, ...) over the teacher recipe.
    """
    cfg = resolve(teacher_recipe(), config, settings, **train_settings)
    run = RunDir(out, "train-teacher", {"data": data, "arch": arch, "train": asdict(cfg), "eval_data": eval_data},
                 overwrite=overwrite)
    device = parallel.init_if_needed(resolve_device(cfg.device), cfg.batch_size)
    if (done := parallel.from_main(run.claim)) is not None:
        return {**done, "reused": True}
    with run.working():
        with parallel.local_main_first():  # a --download runs once per machine; the other ranks read its files
            train_set = open_images(data, download=download)
            spec = _spec_for(train_set, data)
            eval_set = _eval_set(eval_data, spec, download)
        torch.manual_seed(cfg.seed)  # before the model: the seed fixes the initial weights too
        model = build_model(arch, spec)
        started = time.perf_counter()
        result = train(model, ArrayBatches(train_set, cfg.batch_size, cfg.seed, device), cfg,
                       eval_set=eval_set, run_dir=run.path, desc=f"teacher {arch}", run_identity=run.identity)
    summary = {"arch": arch, "dataset": data, "parameters": count_parameters(model), "steps": result.steps,
               "seconds": round(time.perf_counter() - started, 1), "final_loss": result.final_loss,
               "test_accuracy": result.eval_accuracy, **provenance()}
    return run.finish(model, summary) if parallel.is_main() else {**summary, "config": run.identity}


def _refine_config(steps: int, bn_weight: float | None, blur: float | None, why: str) -> "RefineConfig | None":
    """The refinement a run takes (`why`: how its steps were chosen): None without steps; a field
    left out (None) means RefineConfig's."""
    given = {name: value for name, value in (("bn_weight", bn_weight), ("blur", blur)) if value is not None}
    if not steps:
        if given:
            flags = " and ".join(f"--refine-{name.replace('_', '-')}" for name in given)
            raise UserError(f"{flags} {'shape' if len(given) > 1 else 'shapes'} a refinement and this run refines "
                            f"nothing ({why}): give --refine-steps too")
        return None
    return RefineConfig(steps, **given)


def distill(teacher: str | Path, data: str, out: str | Path = "runs/student", student: str = "convnet_tiny", *,
            candidates: int = CANDIDATES, per_class: int | None = None, stream: bool = False,
            boundary_fraction: float | None = None, boundary_targets: str = "least-predicted",
            boundary_every_epoch: bool = False, boundary_method: str = "auto", boundary_keep: str | None = None,
            adapt: bool | None = None, refine_steps: int | None = None, refine_bn_weight: float | None = None,
            refine_blur: float | None = None, params: dict | None = None, data_kind: str | None = None,
            eval_data: str | None = None, download: bool = False, overwrite: bool = False,
            config=None, settings=None, **train_settings) -> dict:
    """Distill `teacher` into a fresh `student` through surrogate `data` (a set name/path or a source).

    The recipe is the measured one (recipe.py, docs/recipe.md: tau 4, no mixup, batch 128 at lr
    0.05, `standard`; synthetic data tau 3 below 1,000,000 images and `high` from there);
    `train_settings` are TrainConfig fields over it.
    `per_class`: images kept per predicted class out of `candidates` (0: keep all; None: the recipe's,
    recipe.per_class: recipe.SET_IMAGES split over the teacher's classes).
    `stream=True` (synthetic sources only) renders fresh images every step instead of a fixed set.
    `boundary_fraction` > 0 adds decision-boundary samples from that share of the candidates, once
    before selection or, with `boundary_every_epoch`, afresh from the selected set every epoch
    (None: the recipe's choice, recipe.boundary_fraction: on for fixed synthetic sets);
    `boundary_method` gradient, bisection (forward passes only) or auto (bisection for black boxes);
    `boundary_keep`: which of a pair's samples join the set: all, pairs (without the deeper copies)
    or deeper (the copies alone); None: recipe.BOUNDARY_KEEP.
    `adapt`: steer the shader programs with the teacher's predictions before rendering any
    (adapt.py); None: on for shaders and teachers of up to 100 classes (adapt.adapts_by_default).
    `refine_steps` > 0 refines the selected images (not the boundary samples) towards the teacher's
    BatchNorm statistics for that many steps (refine.py); None: the recipe's choice
    (recipe.refine_steps); `refine_bn_weight` the weight of the statistics term (None:
    RefineConfig's; 0: the class term alone), `refine_blur` the Gaussian sigma in pixels that smooths
    each step (None: RefineConfig's; 0: raw gradient steps).
    `params`: parameters of a synthetic source (e.g. {"figure": 0} for shaders).
    """
    kind = data_kind or default_data_kind(data)
    cfg = distill_config(kind, lambda base: resolve(base, config, settings, **train_settings))
    if params and not is_source(data):
        raise UserError(f"--param sets a synthetic source's parameters; '{data}' is not a source")
    teacher_model = load_teacher(teacher)
    device = parallel.init_if_needed(resolve_device(cfg.device), cfg.batch_size)
    teacher_model.to(device)  # before the defaults: the refinement's default measures the teacher there
    boundary_why = "as given"
    if boundary_fraction is None:
        boundary_fraction, boundary_why = default_boundary_fraction(kind, stream,
                                                                    getattr(teacher_model, "differentiable", True))
    if boundary_every_epoch and not boundary_fraction:
        raise UserError("--boundary-every-epoch needs --boundary-fraction (the share of the set to attack)")
    refine_why = "as given"
    if refine_steps is None:
        def measured_grain() -> float:  # rank 0's figure on every rank: one decision, one run identity
            return parallel.from_main(lambda: teacher_grain(teacher_model, device))

        refine_steps, refine_why = default_refine_steps(kind, stream, can_refine(teacher_model), measured_grain)
    elif refine_steps:
        require_refinable(teacher_model)  # before the run directory is claimed
    per_class_why = "as given" if per_class else "none: every candidate is kept"
    if per_class is None:
        per_class, per_class_why = default_per_class(teacher_model.num_classes)
    pairs, deeper = keep_flags(BOUNDARY_KEEP if boundary_keep is None else boundary_keep)
    boundary = (BoundaryConfig(boundary_fraction, boundary_targets, boundary_every_epoch, method=boundary_method,
                               deeper=deeper, pairs=pairs) if boundary_fraction else None)
    data_cfg = DataConfig(data, candidates, per_class or None, stream, tuple((params or {}).items()), boundary,
                          should_adapt(data, teacher_model.num_classes, adapt),
                          _refine_config(refine_steps, refine_bn_weight, refine_blur, refine_why))
    # The teacher's weights, not its path, identify it: a retrained teacher at the same path must
    # not let an old student pass for finished.
    run = RunDir(out, "distill", {"teacher": str(teacher), "teacher_fingerprint": teacher_fingerprint(teacher_model),
                                  "student": student, "data": asdict(data_cfg), "train": asdict(cfg),
                                  "eval_data": eval_data},
                 overwrite=overwrite, protect=() if isinstance(teacher, torch.nn.Module) else (teacher,))
    if (done := parallel.from_main(run.claim)) is not None:
        return {**done, "reused": True}
    spec = teacher_model.spec
    with run.working():
        with parallel.local_main_first():  # a --download runs once per machine; the other ranks read its files
            eval_set = _eval_set(eval_data, spec, download)
        started = time.perf_counter()
        batches, set_info = make_batches(teacher_model, data_cfg, cfg.batch_size, cfg.seed, device, download)
        first = batches.batch(0)[0][:64]  # on every rank: it builds epoch 0 (and its summary) there too
        if parallel.is_main():
            save_grid(first, run.path / "samples.png")  # what the student is shown (before augmentation)
        _say(f"distill recipe: {describe(cfg)}; defaults for {kind} data: {why(kind, cfg)}; any field can be set; "
             f"selection: {per_class_why} (--per-class); boundary samples: {boundary_why} (--boundary-fraction); "
             f"refinement: {refine_why} (--refine-steps)")
        torch.manual_seed(cfg.seed)  # before the model: the seed fixes the initial weights too
        model = build_model(student, spec)
        result = train(model, batches, cfg, teacher=teacher_model, eval_set=eval_set, run_dir=run.path,
                       desc=f"distill {data}", run_identity=run.identity)
    summary = {"source": data, "student": student, "parameters": count_parameters(model), **set_info,
               **batches.report(), "steps": result.steps, "seconds": round(time.perf_counter() - started, 1),
               "final_loss": result.final_loss, "test_accuracy": result.eval_accuracy, **provenance()}
    return run.finish(model, summary) if parallel.is_main() else {**summary, "config": run.identity}


def evaluate(model: str | Path, data: str, teacher: str | Path | None = None, device: str = "auto",
             download: bool = False) -> dict:
    """Top-1 and per-class accuracy of a checkpoint on a labelled set (and agreement with a teacher)."""
    net = load_teacher(model)
    images = _eval_set(data, net.spec, download)
    dev = resolve_device(device)
    logits = predict(net.to(dev), images.images, device=dev)
    reference = None
    if teacher is not None:
        teacher_net = load_teacher(teacher)
        if teacher_net.spec.classes != net.spec.classes:
            raise UserError(f"teacher {teacher} has {len(teacher_net.spec.classes)} classes, model has {len(net.spec.classes)}")
        reference = predict(teacher_net.to(dev), images.images, device=dev)
    return {"model": str(model), "data": data, "images": len(images),
            **evaluate_logits(logits, images.labels, len(net.spec.classes), reference)}


# --------------------------------------------------------------------------- the other commands, by the same names

def select(teacher, data: str, out: str | Path, per_class: int, total: int | None = None,
           long_tail: float | None = None, cap: int = DEFAULT_CAP, candidates: int = CANDIDATES, seed: int = 0,
           device: str = "auto", overwrite: bool = False, download: bool = False, adapt: bool | None = None) -> dict:
    """The teacher-balanced set D_K (or a long-tail one) drawn from `data`, written as a pool (select.select);
    shaders adapt to the teacher as in `distill` (`adapt`: None for distill's rule)."""
    from . import select as selection
    from .pool import claim_output

    claim_output(Path(out), overwrite)  # a taken --out fails now, not after the teacher saw every candidate
    return selection.select(teacher, data, out, per_class, total=total, long_tail=long_tail, cap=cap, seed=seed,
                            candidates=candidates, device=device, overwrite=overwrite, download=download,
                            adapt=adapt)


def score(teacher, data: list[str], out: str | Path | None = "runs/score", candidates: int = 10000, seed: int = 0,
          device: str = "auto", adapt: bool | None = None) -> list[dict]:
    """Rank candidate distillation sets for `teacher`, best first, without distilling (score.score);
    shaders adapt to the teacher as in `distill` (`adapt`: None for distill's rule)."""
    from .score import score as score_sets

    return score_sets(teacher, data if isinstance(data, list) else [data], out, candidates=candidates, seed=seed,
                      device=device, adapt=adapt)


def synthesize(source: str, count: int, out: str | Path, size: int = 32, channels: int = 3, seed: int = 0,
               device: str = "cpu", overwrite: bool = False, params: dict | None = None) -> Path:
    """Images 0..count-1 of a synthetic source, written as a pool with a preview grid (pool.synthesize)."""
    from .pool import synthesize as write_source

    return write_source(source, count, size, out, channels=channels, seed=seed, device=device, overwrite=overwrite,
                        **(params or {}))


def boundary(teacher, data: str, out: str | Path, fraction: float = 1.0, targets: str = "random",
             threshold: float = 0.9, max_steps: int = 20, epsilon: float = 32 / 255, seed: int = 0,
             device: str = "auto", overwrite: bool = False, method: str = "auto", keep: str = BOUNDARY_KEEP) -> dict:
    """The images of `data` plus decision-boundary samples, written as a pool (boundary.boundary)."""
    from .boundary import boundary as write_boundary

    return write_boundary(teacher, data, out, fraction=fraction, targets=targets, threshold=threshold,
                          max_steps=max_steps, epsilon=epsilon, seed=seed, device=device, overwrite=overwrite,
                          method=method, keep=keep)


def augment_preview(data: str, out: str | Path = "augment-preview.png", regime: str = "high",
                    settings: list[str] | dict | None = None, size: int = 32, channels: int = 3, index: int = 0,
                    n: int = 32, seed: int = 0) -> Path:
    """One image of `data` under `n` draws of an augmentation regime, as a PNG grid."""
    from .augment import augment_preview as preview_grid
    from .augment import get_regime
    from .config import parse_assignments
    from .files import writable_file

    if not isinstance(n, int) or n < 1:
        raise UserError(f"-n must be a positive number of draws, got {n}")
    fields = dict(parse_assignments(settings) if isinstance(settings, list) else settings or {})
    chosen = get_regime(regime, **fields)
    writable_file(Path(out))
    images = open_images(data, size, channels)
    if not 0 <= index < len(images):
        raise UserError(f"--index {index} out of range: '{data}' has {len(images)} images")
    return preview_grid(images.images[index], chosen, n, out, seed=seed)


def split(data: str, class_map, teacher, out: str | Path, overwrite: bool = False) -> dict:
    """A labelled real set split by a class map into in-domain and out-of-domain pools at out/id and out/ood."""
    from .classmap import split_by_class_map
    from .pool import claim_output, write_pool

    for name in ("id", "ood"):
        claim_output(Path(out) / name, overwrite)
    model = load_teacher(teacher)
    id_set, ood_set = split_by_class_map(data, class_map, model.spec.classes, complete_only=False)
    result = {"data": data}
    for name, subset in (("id", id_set), ("ood", ood_set)):
        if subset is None or len(subset) == 0:
            result[name] = 0
            continue
        write_pool(Path(out) / name, subset.images.split(4096), {"source": f"split:{name}", "seed": 0,
                   "params": {"data": data}, "classes": list(subset.classes or ())}, labels=subset.labels,
                   overwrite=overwrite)
        result[name] = len(subset)
    return result


def import_teacher(out: str | Path, weights: str | Path | None = None, arch: str | None = None,
                   torchscript: str | Path | None = None, onnx: str | Path | None = None, classes=None,
                   num_classes: int | None = None, size: int | None = None, channels: int | None = None,
                   mean=None, std=None, preset: str | None = None, overwrite: bool = False) -> dict:
    """A checkpoint directory at `out` from a state dict (`weights` + `arch`), a TorchScript file or an
    ONNX model, every check done before anything is written (foreign.import_teacher)."""
    from .foreign import import_teacher as write_checkpoint

    return write_checkpoint(out, weights=weights, arch=arch, torchscript=torchscript, onnx=onnx, classes=classes,
                            num_classes=num_classes, size=size, channels=channels, mean=mean, std=std,
                            preset=preset, overwrite=overwrite)


def experiment(config: str | Path, settings: list[str] | dict | None = None, only: list[str] | None = None,
               jobs: int = 1) -> dict:
    """A grid of distillation runs from one YAML file, with its tables (experiment.experiment)."""
    from .experiment import experiment as run_experiment

    return run_experiment(str(config), settings=settings, only=only, jobs=jobs)


def explain(out: str | Path = "runs/explain", sets: list[str] | None = None, candidates: int = 4000,
            budget_images: int = 200_000, teacher_epochs: float = 100, seed: int = 0, device: str = "auto",
            download: bool = False) -> dict:
    """The paper's Fig. 2 toy: a 2-D feature teacher on digits, students from each set, one figure each."""
    from .explain import explain as draw

    return draw(out, sets=tuple(sets or ("digits", "shaders", "fashion-mnist")), candidates=candidates,
                budget_images=budget_images, teacher_epochs=teacher_epochs, seed=seed, device=device,
                download=download)


def demo(out: str | Path = "runs/demo", quick: bool = False, device: str = "auto") -> dict:
    """A Fashion-MNIST teacher distilled through five kinds of data, with a report (demo.demo)."""
    from .demo import demo as run_demo

    return run_demo(out, quick=quick, device=device)
