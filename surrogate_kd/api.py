"""The library's commands, one function each; the CLI is a thin layer over these.

train_teacher: labelled data -> teacher checkpoint (the paper's teacher recipe).
distill:       teacher + surrogate data -> (teacher-balanced selection) -> student checkpoint.
evaluate:      any checkpoint on a labelled set -> accuracy, per-class accuracy, agreement.

Under torchrun, train_teacher and distill run on every rank and train data-parallel (parallel.py).
Every rank builds the same training set itself, deterministically from the seed, rather than
rank 0 building it and sending it: nothing to transfer, no rank idle meanwhile, and the streams
that build their data during training (--stream, boundary samples every epoch) work this way
anyway. Rank 0 alone writes files; every rank returns the result.
"""

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from . import parallel
from .checkpoint import atomic_write_text, load_model, provenance, save_model
from .config import InputSpec, TrainConfig
from .data import DATASET_STATS, ImageSet, open_images
from .distill import ArrayBatches, SourceBatches, evaluate_logits, predict, resolve_device, train
from .errors import UserError
from .models import build_model, count_parameters
from .select import (OnlineBalancedBatches, balanced_indices, class_histogram, is_source, load_candidates,
                     relative_entropy, teacher_fingerprint)

# Paper Sect. 4: tau 2 for general-purpose real data, 20 for fine-grained and synthetic data.
DEFAULT_TAU = {"real": 2.0, "synthetic": 20.0}
MODEL_FILE = "model.safetensors"


def default_data_kind(data: str) -> str:
    """'synthetic' for generated sources; 'real' for image sets and for `photos` (real photographs,
    out of domain), which is what picks the paper's default tau and regime."""
    return "synthetic" if is_source(data) and data != "photos" else "real"


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> Path:
    """uint8 (N, C, H, W) -> a PNG grid."""
    from torchvision.utils import save_image

    save_image(images.float().div(255).cpu(), path, nrow=nrow, padding=1)
    return path


def _as_json(config: dict) -> dict:
    """The config as it reads back from JSON (tuples become lists), so comparisons are exact."""
    return json.loads(json.dumps(config, default=str))


def _completed(out: Path, config: dict) -> dict | None:
    """The result of a finished run in `out` with the same config, if there is one."""
    result_file = out / "result.json"
    if (out / MODEL_FILE).exists() and result_file.exists():
        result = json.loads(result_file.read_text())
        if result.get("config") == config:
            return result
    return None


def _finish(out: Path, model, result: dict) -> dict:
    """Save weights, then result.json last: its presence marks the run complete (rank 0 writes)."""
    if not parallel.is_main():
        return result
    save_model(model, out / MODEL_FILE, extra={"config": result["config"]})
    state = out / "state.pt"
    if state.exists():
        state.unlink()
    atomic_write_text(out / "result.json", json.dumps(result, indent=2))
    return result


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
    classes = images.classes or tuple(str(i) for i in range(num_classes))
    return InputSpec(images.size, images.channels, tuple(mean), tuple(std), tuple(classes))


def _check_labels(images: ImageSet, spec: InputSpec) -> None:
    if images.labels is None:
        raise UserError(f"'{images.name}' has no labels to evaluate against")
    if int(images.labels.max()) >= len(spec.classes):
        raise UserError(f"'{images.name}' has labels up to {int(images.labels.max())} but the model has "
                        f"{len(spec.classes)} classes")


def train_teacher(data: str = "fashion-mnist", out: str | Path = "runs/teacher", arch: str = "resnet_mini",
                  cfg: TrainConfig = TrainConfig(), eval_data: str | None = None, download: bool = False) -> dict:
    """Train a teacher with one-hot cross-entropy; reuses a finished run with the same config."""
    out = Path(out)
    config = _as_json({"data": data, "arch": arch, "train": asdict(cfg), "eval_data": eval_data})
    device = parallel.init_if_needed(resolve_device(cfg.device), cfg.batch_size)
    if (done := parallel.from_main(lambda: _completed(out, config))) is not None:
        return {**done, "reused": True}
    with parallel.local_main_first():  # a --download runs once per machine; the other ranks read its files
        train_set = open_images(data, download=download)
        spec = _spec_for(train_set, data)
        eval_set = open_images(eval_data, spec.size, spec.channels, download=download) if eval_data else None
    if eval_set is not None:
        _check_labels(eval_set, spec)
    model = build_model(arch, spec)
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    run = train(model, ArrayBatches(train_set, cfg.batch_size, cfg.seed, device), cfg,
                eval_set=eval_set, run_dir=out, desc=f"teacher {arch}", run_identity=config)
    result = {"arch": arch, "dataset": data, "parameters": count_parameters(model), "steps": run.steps,
              "seconds": round(time.perf_counter() - started, 1), "final_loss": run.final_loss,
              "test_accuracy": run.eval_accuracy, "config": config, **provenance()}
    return _finish(out, model, result)


def build_distillation_set(teacher, data: str, candidates: int, per_class: int | None, seed: int,
                           device: torch.device, download: bool = False, batch_size: int = 1024,
                           source_params: dict | None = None, boundary: dict | None = None) -> tuple[ImageSet, dict]:
    """Surrogate images in the teacher's input spec, teacher-balanced when `per_class` is set.

    With `boundary` (keyword arguments of `boundary.add_boundary_samples`, e.g. fraction and
    targets), boundary samples are added to the candidates *before* selection, so that
    least-predicted targets fill the classes the candidates lack with new images rather than
    with copies (the paper's "force these properties").
    Returns the set and what the teacher made of the candidates (histogram, relative entropy).
    """
    spec = teacher.spec
    # Cached beside the pool when `data` is one: the teacher runs over a pool once.
    pool, logits = load_candidates(teacher, data, candidates, seed, device, download, batch_size, source_params)
    predictions = logits.argmax(1)
    counts = class_histogram(predictions, len(spec.classes))
    info = {"candidates": len(pool), "relative_entropy": round(relative_entropy(counts), 4),
            "class_histogram": counts.tolist(), "mean_max_softmax": round(logits.softmax(1).max(1).values.mean().item(), 4)}
    pool = ImageSet(pool.images, predictions, spec.classes, pool.name)
    if boundary:
        from .boundary import add_boundary_samples

        pool, info["boundary"] = add_boundary_samples(teacher, pool, seed=seed, device=device, labels=predictions,
                                                      **boundary)
        info["relative_entropy_with_boundary"] = round(relative_entropy(class_histogram(pool.labels, len(spec.classes))), 4)
    if per_class:
        index = balanced_indices(pool.labels, len(spec.classes), per_class, seed=seed)
        info["selected"] = len(index)
        return ImageSet(pool.images[index], pool.labels[index], spec.classes, pool.name), info
    return pool, info


def distill(teacher: str | Path, data: str, out: str | Path = "runs/student", student: str = "convnet_tiny",
            cfg: TrainConfig | None = None, data_kind: str | None = None, candidates: int = 50000,
            per_class: int | None = 2000, stream: bool = False, eval_data: str | None = None,
            download: bool = False, source_params: dict | None = None, boundary: dict | None = None) -> dict:
    """Distill `teacher` into a fresh `student` through surrogate `data` (a set name/path or a source).

    Unless the config sets tau, it follows the paper: 2 for real data, 20 for synthetic sources.
    `stream=True` (synthetic sources only) renders fresh images every step instead of a fixed set,
    teacher-balanced on the fly when `per_class` is set.
    `boundary`: add decision-boundary samples (keyword arguments of `boundary.add_boundary_samples`):
    once, to the candidates before selection (see build_distillation_set), or with
    `every_epoch=True` afresh from the selected set at every epoch (`boundary.EpochBoundaryBatches`).
    """
    out = Path(out)
    kind = data_kind or default_data_kind(data)
    if kind not in DEFAULT_TAU:
        raise UserError(f"unknown data kind '{kind}'; valid: real, synthetic")
    cfg = cfg or replace(TrainConfig(), tau=DEFAULT_TAU[kind])
    teacher_model = load_model(teacher) if not isinstance(teacher, torch.nn.Module) else teacher
    # The teacher's weights, not its path, identify it: a retrained teacher at the same path must
    # not let an old student pass for finished.
    config = _as_json({"teacher": str(teacher), "teacher_fingerprint": teacher_fingerprint(teacher_model),
                       "data": data, "student": student, "train": asdict(cfg), "candidates": candidates, "per_class": per_class, "stream": stream, "eval_data": eval_data,
                       "source_params": source_params, "boundary": boundary})
    device = parallel.init_if_needed(resolve_device(cfg.device), cfg.batch_size)
    if (done := parallel.from_main(lambda: _completed(out, config))) is not None:
        return {**done, "reused": True}
    spec = teacher_model.spec
    teacher_model.to(device)
    with parallel.local_main_first():  # a --download runs once per machine; the other ranks read its files
        eval_set = open_images(eval_data, spec.size, spec.channels, download=download) if eval_data else None
        if download and not is_source(data):
            open_images(data, download=True)
    if eval_set is not None:
        _check_labels(eval_set, spec)
    started = time.perf_counter()
    if stream:
        if not is_source(data):
            from .sources import SOURCES

            raise UserError(f"--stream needs an image source ({', '.join(SOURCES.names())}), got '{data}'")
        if boundary:
            raise UserError("boundary samples need a fixed set; drop --stream or the boundary option")
        if per_class:  # the same per-class quota as D_K, applied on the fly to fresh images
            batches = OnlineBalancedBatches(teacher_model, data, cfg.batch_size, cfg.seed, device,
                                            epoch_size=per_class * len(spec.classes), **(source_params or {}))
        else:
            batches = SourceBatches(data, spec.size, spec.channels, cfg.batch_size, cfg.seed, device,
                                    epoch_size=candidates, **(source_params or {}))
        set_info = {}
    elif boundary and boundary.get("every_epoch"):
        # Fresh boundary samples from the selected set at every epoch, instead of once before selection.
        from .boundary import EpochBoundaryBatches

        images, set_info = build_distillation_set(teacher_model, data, candidates, per_class, cfg.seed, device,
                                                  download, source_params=source_params)
        attack = {k: v for k, v in boundary.items() if k not in ("fraction", "every_epoch")}
        batches = EpochBoundaryBatches(teacher_model, images, cfg.batch_size, cfg.seed, device,
                                       boundary.get("fraction", 0.1), **attack)
    else:
        images, set_info = build_distillation_set(teacher_model, data, candidates, per_class, cfg.seed, device,
                                                  download, source_params=source_params, boundary=boundary)
        batches = ArrayBatches(images, cfg.batch_size, cfg.seed, device)
    first = batches.batch(0)[0][:64]  # on every rank: it builds epoch 0 (and its summary) there too
    if parallel.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_grid(first, out / "samples.png")  # what the student is shown (before augmentation)
    model = build_model(student, spec)
    torch.manual_seed(cfg.seed)
    run = train(model, batches, cfg, teacher=teacher_model, eval_set=eval_set, run_dir=out, desc=f"distill {data}",
                run_identity=config)
    if getattr(batches, "summaries", None):  # per-epoch boundary samples: what each epoch's attack did
        set_info["boundary_epochs"] = {epoch: {k: summary[k] for k in ("samples", "success_rate", "relative_entropy_after")}
                                       for epoch, summary in sorted(batches.summaries.items())}
    result = {"source": data, "student": student, "parameters": count_parameters(model), **set_info,
              "steps": run.steps, "seconds": round(time.perf_counter() - started, 1), "final_loss": run.final_loss,
              "test_accuracy": run.eval_accuracy, "config": config, **provenance()}
    return _finish(out, model, result)


def evaluate(model: str | Path, data: str, teacher: str | Path | None = None, device: str = "auto",
             download: bool = False) -> dict:
    """Top-1 and per-class accuracy of a checkpoint on a labelled set (and agreement with a teacher)."""
    net = load_model(model)
    images = open_images(data, net.spec.size, net.spec.channels, download=download)
    _check_labels(images, net.spec)
    dev = resolve_device(device)
    logits = predict(net.to(dev), images.images, device=dev)
    reference = None
    if teacher is not None:
        teacher_net = load_model(teacher)
        if teacher_net.spec.classes != net.spec.classes:
            raise UserError(f"teacher {teacher} has {len(teacher_net.spec.classes)} classes, model has {len(net.spec.classes)}")
        reference = predict(teacher_net.to(dev), images.images, device=dev)
    return {"model": str(model), "data": data, "images": len(images),
            **evaluate_logits(logits, images.labels, len(net.spec.classes), reference)}
