"""kd_loss() and the one training loop: teachers train through it too (loss 'ce' vs 'kd').

Data reaches the loop as uint8 batches already on the device; each step augments on the device,
mixes (mixup) and feeds the *same* view to the frozen teacher and to the student (function
matching, Beyer et al.). The step has static shapes and no host synchronisation except at log
intervals, so it can later be captured whole in a CUDA graph.
"""

import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import parallel
from .augment import augment, get_regime, mixup
from .checkpoint import load_state, save_state
from .config import TrainConfig
from .data import ImageSet
from .errors import UserError


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Hinton's KD: KL(softmax(t/tau) || softmax(s/tau)) * tau^2, averaged over the batch.

    The tau^2 keeps gradient magnitudes comparable across temperatures.
    """
    log_p_teacher = F.log_softmax(teacher_logits.float() / tau, dim=1)
    log_p_student = F.log_softmax(student_logits.float() / tau, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean") * tau**2


# --------------------------------------------------------------------------- devices

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{name}' requested but CUDA is not available")
    return torch.device(name)


def _cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast where it is fast (CUDA with bf16, CPUs with AVX512-BF16/AMX), else nothing."""
    if precision not in ("auto", "bf16", "fp32"):
        raise UserError(f"unknown precision '{precision}'; valid: auto, bf16, fp32")
    if precision == "fp32":
        return nullcontext()
    if precision == "auto":
        fast = torch.cuda.is_bf16_supported() if device.type == "cuda" else _cpu_has_fast_bf16()
        if not fast:
            return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


# --------------------------------------------------------------------------- batch streams

class Batches(Protocol):
    """Where a training loop's uint8 batches come from; `batch(step)` is a pure function of step,
    which is what makes a resumed run identical to an uninterrupted one, and lets every rank of a
    data-parallel run compute the same global batch and keep its own rows of it (parallel.py)."""

    steps_per_epoch: int

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]: ...


class EpochBatches:
    """Batches drawn per epoch from images (re)built for that epoch: the shared `batch(step)`.

    A subclass implements `_epoch_data(epoch) -> (images, labels or None, order)`, a pure function
    of the epoch; `batch(step)` serves rows order[position*B:(position+1)*B] of the current
    epoch's images and rebuilds them when the step enters a new epoch (only that one is kept).
    """

    batch_size: int
    steps_per_epoch: int
    _epoch: int = -1

    def _epoch_data(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        raise NotImplementedError

    @staticmethod
    def _check_fills_a_batch(images: ImageSet, batch_size: int) -> None:
        """Epochs drop their last partial batch (static shapes): a set must hold one whole batch."""
        if len(images) < batch_size:
            raise UserError(f"image set '{images.name}' has {len(images)} images, fewer than one batch of {batch_size}")

    def batch(self, step: int):
        epoch, position = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._images, self._labels, self._order = self._epoch_data(epoch)
            self._epoch = epoch
        index = self._order[position * self.batch_size:(position + 1) * self.batch_size]
        return self._images[index], None if self._labels is None else self._labels[index]


class ArrayBatches(EpochBatches):
    """Shuffled epochs over an in-memory image set (drops the last partial batch: static shapes)."""

    def __init__(self, images: ImageSet, batch_size: int, seed: int, device: torch.device):
        self._check_fills_a_batch(images, batch_size)
        self.images = images.images.to(device)  # (N, C, H, W) uint8
        self.labels = None if images.labels is None else images.labels.to(device)
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.steps_per_epoch = len(images) // batch_size

    def _epoch_data(self, epoch: int):
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return self.images, self.labels, torch.randperm(len(self.images), generator=g).to(self.device)


class SourceBatches:
    """Fresh synthetic images every step from a registered source: no pool on disk at all."""

    def __init__(self, source: str, size: int, channels: int, batch_size: int, seed: int,
                 device: torch.device, epoch_size: int, **params):
        from .sources import render

        self.render = lambda start: render(source, seed, start, batch_size, size, channels, device, **params)
        self.batch_size = batch_size
        self.steps_per_epoch = max(1, epoch_size // batch_size)

    def batch(self, step: int):
        return self.render(step * self.batch_size), None


# --------------------------------------------------------------------------- evaluation

def inference_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen eval-mode copy of `model` for forward passes only, BatchNorm folded into its convs.

    A frozen teacher runs a forward pass every distillation step; folding its BatchNorms (torch.fx)
    made the demo teacher's forward about 20% faster on CPU (benchmarks/bench_augment.py reports the
    KD step). Networks fx cannot trace are used as they are.
    """
    import copy

    from torch.fx.experimental.optimization import fuse

    if isinstance(model, torch.jit.ScriptModule):  # cannot be copied or traced: used as it is
        return model.eval()
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    try:  # fuse() works on its own copy, so a failure leaves `frozen` intact
        if isinstance(getattr(frozen, "net", None), torch.nn.Module):  # ImageClassifier: fold the network
            frozen.net = fuse(frozen.net)
        else:
            frozen = fuse(frozen)
    except Exception:  # untraceable control flow (some timm/torchvision models): unfolded is still correct
        pass
    return frozen


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 1024, device: torch.device | None = None,
            precision: str = "auto", progress: str | None = None) -> torch.Tensor:
    """Logits (N, K) float32 on the CPU for uint8 images (N, C, H, W), in eval mode."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    starts = range(0, images.shape[0], batch_size)
    with autocast_context(device, precision):
        for start in tqdm(starts, desc=progress, leave=False, disable=progress is None or not parallel.is_main()):
            x = images[start:start + batch_size].to(device, non_blocking=True).float().div_(255)
            out.append(model(x.contiguous(memory_format=torch.channels_last)).float().cpu())
    model.train(was_training)
    return torch.cat(out)


def evaluate_logits(logits: torch.Tensor, labels: torch.Tensor, num_classes: int,
                    reference_logits: torch.Tensor | None = None) -> dict:
    """Top-1 accuracy, per-class accuracy and, given a reference (the teacher), agreement with it."""
    pred = logits.argmax(1)
    correct = (pred == labels).float()
    per_class = torch.zeros(num_classes).index_add_(0, labels, correct) / torch.bincount(labels, minlength=num_classes).clamp(min=1)
    result = {"accuracy": correct.mean().item(), "per_class_accuracy": [round(a, 4) for a in per_class.tolist()]}
    if reference_logits is not None:
        result["teacher_agreement"] = (pred == reference_logits.argmax(1)).float().mean().item()
    return result


# --------------------------------------------------------------------------- the loop

@dataclass
class TrainResult:
    steps: int
    seconds: float
    images_per_second: float
    final_loss: float
    eval_accuracy: float | None


def learning_rate(cfg: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Linear warm-up (optional), then half-period cosine from cfg.lr to 0."""
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def make_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
              teacher: torch.nn.Module | None = None):
    """The optimisation step on one augmented batch, as the loop runs it (and the benchmarks time it).

    Returns step(x, labels=None, mix=None) -> the batch's loss (a detached device tensor: no host
    sync). x: (B, C, H, W) floats in [0, 1]; mix: (lambda, permutation) when x was mixed.
    Without a teacher: cross-entropy on labels (mixed like x); with one: KD on the teacher's
    logits for the very same x (soft targets) or on its argmax (one-hot / smoothed targets).
    """
    if cfg.targets not in ("soft", "onehot", "smoothed"):
        raise UserError(f"unknown KD targets '{cfg.targets}'; valid: soft, onehot, smoothed")
    autocast = autocast_context(next(model.parameters()).device, cfg.precision)
    smoothing = cfg.label_smoothing if cfg.targets == "smoothed" else 0.0

    def step(x: torch.Tensor, labels: torch.Tensor | None = None, mix: tuple | None = None) -> torch.Tensor:
        with autocast:
            logits = model(x)
            if teacher is None:
                if labels is None:
                    raise UserError("training without a teacher needs labelled images")
                loss = F.cross_entropy(logits.float(), labels, reduction="none", label_smoothing=cfg.label_smoothing)
                if mix is not None:
                    lam, perm = mix
                    other = F.cross_entropy(logits.float(), labels[perm], reduction="none",
                                            label_smoothing=cfg.label_smoothing)
                    loss = lam * loss + (1 - lam) * other
                loss = loss.mean()
            else:
                with torch.no_grad():
                    teacher_logits = teacher(x)
                if cfg.targets == "soft":
                    loss = kd_loss(logits, teacher_logits, cfg.tau)
                else:
                    loss = F.cross_entropy(logits.float(), teacher_logits.argmax(1), label_smoothing=smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def train(model: torch.nn.Module, batches: Batches, cfg: TrainConfig, *, teacher: torch.nn.Module | None = None,
          eval_set: ImageSet | None = None, run_dir: Path | None = None, desc: str = "train",
          run_identity: dict | None = None) -> TrainResult:
    """Train `model` in place: cross-entropy on labels when `teacher` is None, else KD from it.

    With `run_dir`, metrics go to metrics.jsonl and resumable state to state.pt; an interrupted
    run called again with the same config (and the same `run_identity`: what else defines the run,
    such as the teacher's fingerprint and the data) continues from its last saved step.

    Under torchrun (see parallel.py), call it on every rank with the same arguments: each rank
    trains on its share of every global batch of cfg.batch_size; rank 0 alone writes metrics and
    state and evaluates, and every rank returns the same result and ends with the same weights.
    """
    device = parallel.init_if_needed(resolve_device(cfg.device), cfg.batch_size)
    world = parallel.world()
    regime = get_regime(cfg.regime, **dict(cfg.regime_overrides))
    model.to(device).train()
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if teacher is not None:
        # The teacher is frozen: eval mode (BN uses its running stats), no gradients, ever; a
        # folded copy does the forward passes, the caller's module is left as it was.
        teacher = inference_copy(teacher.to(device))
        if cfg.channels_last:
            teacher.to(memory_format=torch.channels_last)
    step_model = parallel.wrap(model, device)  # DDP under torchrun: gradients averaged over the ranks
    step_model = torch.compile(step_model) if cfg.compile else step_model
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    if cfg.budget_images is not None:
        total_steps = max(1, cfg.budget_images // cfg.batch_size)
    else:
        total_steps = max(1, round(cfg.epochs * batches.steps_per_epoch))
    step_fn = make_step(step_model, optimizer, cfg, teacher)
    config_record = json.loads(json.dumps({"train": asdict(cfg), "run": run_identity}, default=str))

    start_step = 0
    state_path = metrics_file = None
    if run_dir is not None:
        # Rank 0 reads the state and hands it to every rank (alone: just reads it).
        state = parallel.from_main(lambda: load_state(run_dir / "state.pt"))
        if state is not None:
            if state["config"] != config_record:
                raise UserError(f"{run_dir} holds a run with a different config; use another output or delete "
                                f"{run_dir / 'state.pt'}")
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            start_step = int(state["step"])
        if parallel.is_main():  # one writer of metrics and state
            run_dir.mkdir(parents=True, exist_ok=True)
            state_path = run_dir / "state.pt"
            metrics_file = open(run_dir / "metrics.jsonl", "a")
    board = None
    if cfg.tensorboard and run_dir is not None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("tensorboard=true needs the tensorboard package: pip install tensorboard") from None
        if parallel.is_main():
            board = SummaryWriter(str(run_dir / "tensorboard"))

    def log(record: dict):
        if metrics_file is not None:
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()
        if board is not None:
            for key, value in record.items():
                if key not in ("step", "epoch"):
                    board.add_scalar(f"{desc}/{key}", value, record["step"])

    def save(step: int):
        if state_path is not None:
            save_state(state_path, {"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                    "config": config_record})

    def accuracy() -> float:
        logits = predict(model, eval_set.images, device=device, precision=cfg.precision)
        return (logits.argmax(1) == eval_set.labels).float().mean().item()

    # eval_every 0: evaluate once, at the end (each pass over a held-out set costs seconds on a CPU).
    eval_steps = max(1, round(cfg.eval_every * batches.steps_per_epoch)) if cfg.eval_every > 0 else total_steps
    save_steps = max(1, round(cfg.checkpoint_every * batches.steps_per_epoch))
    mean_loss = float("nan")
    eval_accuracy = None
    running_loss = torch.zeros((), device=device)
    loss_count, window_start, window_step = 0, time.perf_counter(), start_step
    started = time.perf_counter()
    bar = tqdm(range(start_step, total_steps), desc=desc, initial=start_step, total=total_steps, leave=False,
               dynamic_ncols=True, mininterval=1.0, disable=not parallel.is_main())
    for step in bar:
        lr = learning_rate(cfg, step, total_steps, batches.steps_per_epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, labels = batches.batch(step)  # (B, C, H, W) uint8 on device, (B,) or None
        if step == start_step:  # once a run (a no-op alone): every rank must cut the same global batch
            parallel.check_same(images, f"the training batch of step {step}")
        images, labels = parallel.share(images), parallel.share(labels)  # this rank's B / world rows
        # One seeded generator per step (and rank: each rank draws its own views): augmentation is
        # reproducible and resume needs no RNG state.
        generator = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + step + world.rank * 1_000_000_007)
        x = augment(images, regime, generator)  # (B, C, H, W) float in [0, 1]
        if cfg.mixup:
            x, lam, perm = mixup(x, generator, per_sample=cfg.mixup_per_sample)
        x = x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x
        loss = step_fn(x, labels, (lam, perm) if cfg.mixup else None)
        running_loss += loss
        loss_count += 1

        done = step + 1
        evaluate_now = eval_set is not None and (done % eval_steps == 0 or done == total_steps)
        if done % cfg.log_every == 0 or done == total_steps or evaluate_now:
            # The only host sync, once per log interval; the mean over all ranks under torchrun.
            mean_loss = parallel.mean(running_loss / loss_count).item()
            if not math.isfinite(mean_loss):
                raise UserError(f"{desc}: loss became {mean_loss} at step {done}; lower the lr or check the data")
            rate = (done - window_step) * images.shape[0] * world.size / max(time.perf_counter() - window_start, 1e-9)
            record = {"step": done, "epoch": round(done / batches.steps_per_epoch, 3), "loss": round(mean_loss, 5),
                      "lr": round(lr, 6), "images_per_s": round(rate, 1)}
            if evaluate_now:  # on rank 0, whose BatchNorm statistics are the ones saved; all ranks get the number
                eval_accuracy = parallel.from_main(accuracy)
                record["eval_accuracy"] = round(eval_accuracy, 4)
            log(record)
            bar.set_postfix(loss=f"{mean_loss:.3f}", acc="-" if eval_accuracy is None else f"{eval_accuracy:.3f}",
                            ips=f"{rate:.0f}")
            running_loss.zero_()
            loss_count, window_start, window_step = 0, time.perf_counter(), done
        if done % save_steps == 0 and done < total_steps:
            save(done)
    bar.close()
    parallel.sync_buffers(model)  # every rank returns rank 0's model
    seconds = time.perf_counter() - started
    if metrics_file is not None:
        metrics_file.close()
    if board is not None:
        board.close()
    trained = total_steps - start_step
    return TrainResult(total_steps, seconds, trained * cfg.batch_size / max(seconds, 1e-9), mean_loss, eval_accuracy)
