"""kd_loss() and the one training loop: teachers train through it too (loss 'ce' vs 'kd').

Data reaches the loop as uint8 batches already on the device; each step augments on the device,
mixes (mixup) and feeds the *same* view to the frozen teacher and to the student (function
matching, Beyer et al.). The step has static shapes and no host synchronisation except at log
intervals, so it can later be captured whole in a CUDA graph.
"""

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import parallel
from .augment import augment, get_regime, mixup
from .batches import Batches
from .capture import CapturedStep, capture_possible, sgd_update
from .checkpoint import load_state, save_state
from .config import TrainConfig
from .data import ImageSet
from .errors import UserError
from .rundir import METRICS_FILE, STATE_FILE, as_json, same_run
from .runtime import autocast_context, inference_copy, predict, resolve_device


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Hinton's KD: KL(softmax(t/tau) || softmax(s/tau)) * tau^2, averaged over the batch.

    The tau^2 keeps gradient magnitudes comparable across temperatures.
    """
    log_p_teacher = F.log_softmax(teacher_logits.float() / tau, dim=1)
    log_p_student = F.log_softmax(student_logits.float() / tau, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean") * tau**2


def per_image_tau(teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Each image's temperature: tau times the spread (std over classes) of the teacher's logits on
    it, over the batch's median spread. A typical image keeps tau; one on which the teacher's
    logits are eight times as spread out (on images far from its data a teacher can extrapolate to
    extreme logits) is tempered eight times as much, so that its target keeps the order of the
    classes instead of collapsing to one-hot. On the device, no host sync (the median is a tensor).
    Study 16 (docs/recipe.md) found it cost every shader student it tried, 8.6 to 18.1 points."""
    spread = teacher_logits.float().std(1).clamp_min(1e-6)
    return tau * spread / spread.median()


def kd_loss_per_image(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """`kd_loss` with each image at its own temperature (`per_image_tau`), each image's KL times its
    temperature squared as in Hinton's KD, averaged over the batch."""
    t = per_image_tau(teacher_logits, tau)[:, None]
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=1)
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(1)
    return (kl * t.squeeze(1) ** 2).mean()


def logit_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Logit matching: half the mean squared difference of the centred logits, averaged over the batch.

    Centred because a softmax ignores a shift; halved and averaged over classes so that it is the
    limit of `kd_loss` as tau grows (Hinton et al. 2015, Sect. 2.1), and the same lr fits both.
    """
    difference = student_logits.float() - teacher_logits.float()
    difference = difference - difference.mean(1, keepdim=True)
    return 0.5 * difference.pow(2).mean(1).mean()


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
              teacher: torch.nn.Module | None = None, update: Callable[[], None] | None = None):
    """The optimisation step on one augmented batch, as the loop runs it (and the benchmarks time it).

    Returns step(x, labels=None, mix=None) -> the batch's loss (a detached device tensor: no host
    sync). x: (B, C, H, W) floats in [0, 1]; mix: (lambda, permutation) when x was mixed.
    Without a teacher: cross-entropy on labels (mixed like x); with one: KD on the teacher's
    logits for the very same x (soft targets, or the logits themselves: config.KD_TARGETS, which
    TrainConfig checks) or on its argmax (one-hot / smoothed targets).
    `update` replaces `optimizer.step()` (the captured step's tensor-lr SGD); autocast then keeps
    no cast cache, which CUDA graphs need.
    """
    autocast = autocast_context(next(model.parameters()).device, cfg.precision, cache=update is None)
    update = update or optimizer.step
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
                elif cfg.targets == "per-image":
                    loss = kd_loss_per_image(logits, teacher_logits, cfg.tau)
                elif cfg.targets == "logits":
                    loss = logit_loss(logits, teacher_logits)
                else:
                    loss = F.cross_entropy(logits.float(), teacher_logits.argmax(1), label_smoothing=smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        update()
        return loss.detach()

    return step


def make_batch_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                    teacher: torch.nn.Module | None, device: torch.device, rank: int = 0):
    """run(step, images, labels, lr) -> loss: augment, mix and train on one uint8 batch.

    Draws come from one generator re-seeded for every step (and rank: each rank draws its own
    views), so a step's augmentation is a function of (seed, step) and resume needs no RNG state.
    On CUDA, alone, the whole step is captured as a CUDA graph (capture.py) unless capture=false.
    """
    regime = get_regime(cfg.regime, **dict(cfg.regime_overrides))
    generator = torch.Generator(device=device)

    def seed_step(step: int) -> None:
        generator.manual_seed(cfg.seed * 1_000_003 + step + rank * 1_000_000_007)

    def augmented(images: torch.Tensor):
        x = augment(images, regime, generator)  # (B, C, H, W) float in [0, 1]
        mix = None
        if cfg.mixup:
            x, lam, perm = mixup(x, generator, per_sample=cfg.mixup_per_sample)
            mix = (lam, perm)
        return (x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x), mix

    train_step = make_step(model, optimizer, cfg, teacher)

    def eager(images: torch.Tensor, labels: torch.Tensor | None, lr: float) -> torch.Tensor:
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, mix = augmented(images)
        return train_step(x, labels, mix)

    def captured(images: torch.Tensor, labels: torch.Tensor | None, lr: torch.Tensor) -> torch.Tensor:
        x, mix = augmented(images)
        return make_step(model, optimizer, cfg, teacher, update=lambda: sgd_update(optimizer, lr))(x, labels, mix)

    why_not = capture_possible(device, cfg.compile, parallel.world().size) if cfg.capture else "capture=false"
    if why_not is None:
        return CapturedStep(eager, captured, seed_step, generator, optimizer)
    if device.type == "cuda" and parallel.is_main():
        print(f"surrogate-kd: training step not captured as a CUDA graph: {why_not}", file=sys.stderr, flush=True)

    def run(step: int, images: torch.Tensor, labels: torch.Tensor | None, lr: float) -> torch.Tensor:
        seed_step(step)
        return eager(images, labels, lr)

    return run


def _metrics_from(path: Path, step: int):
    """metrics.jsonl opened for appending after the lines of steps <= `step` (the resumed step): lines
    a killed run logged past its last saved state are dropped, so a resumed run never repeats them."""
    kept = []
    if step and path.exists():
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by the kill
    with open(path, "w") as f:
        f.writelines(kept)
    return open(path, "a")


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
    run_step = make_batch_step(step_model, optimizer, cfg, teacher, device, world.rank)
    config_record = as_json({"train": asdict(cfg), "run": run_identity})

    start_step = 0
    mean_loss, eval_accuracy = float("nan"), None
    state_path = metrics_file = None
    if run_dir is not None:
        # Rank 0 reads the state and hands it to every rank (alone: just reads it).
        state = parallel.from_main(lambda: load_state(run_dir / STATE_FILE))
        if state is not None:
            if not same_run(state.get("config"), config_record):
                raise UserError(f"{run_dir} holds a run with a different config; use another output or delete "
                                f"{run_dir / STATE_FILE}")
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng"])  # whatever a model draws itself (dropout) continues as it would have
            start_step = int(state["step"])
            mean_loss, eval_accuracy = state["loss"], state["eval_accuracy"]
        if parallel.is_main():  # one writer of metrics and state
            run_dir.mkdir(parents=True, exist_ok=True)
            state_path = run_dir / STATE_FILE
            metrics_file = _metrics_from(run_dir / METRICS_FILE, start_step)
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
                                    "rng": torch.get_rng_state(), "loss": mean_loss, "eval_accuracy": eval_accuracy,
                                    "config": config_record})

    def accuracy() -> float:
        logits = predict(model, eval_set.images, device=device, precision=cfg.precision)
        return (logits.argmax(1) == eval_set.labels).float().mean().item()

    # eval_every 0: evaluate once, at the end (each pass over a held-out set costs seconds on a CPU).
    eval_steps = max(1, round(cfg.eval_every * batches.steps_per_epoch)) if cfg.eval_every > 0 else total_steps
    # Resumable state every checkpoint_minutes of wall time (an epoch of a small set can last two
    # seconds on a GPU: saving per epoch stalled the run), every checkpoint_every epochs if set, and at the end.
    save_steps = round(cfg.checkpoint_every * batches.steps_per_epoch) if cfg.checkpoint_every else 0
    last_save = time.perf_counter()
    running_loss = torch.zeros((), device=device)
    loss_count, window_start, window_step = 0, time.perf_counter(), start_step
    started = time.perf_counter()
    bar = tqdm(range(start_step, total_steps), desc=desc, initial=start_step, total=total_steps, leave=False,
               dynamic_ncols=True, mininterval=1.0, disable=not parallel.is_main())
    for step in bar:
        lr = learning_rate(cfg, step, total_steps, batches.steps_per_epoch)
        images, labels = batches.batch(step)  # (B, C, H, W) uint8 on device, (B,) or None
        if step == start_step:  # once a run (a no-op alone): every rank must cut the same global batch
            parallel.check_same(images, f"the training batch of step {step}")
        images, labels = parallel.share(images), parallel.share(labels)  # this rank's B / world rows
        loss = run_step(step, images, labels, lr)
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
        due = time.perf_counter() - last_save >= cfg.checkpoint_minutes * 60
        if done == total_steps or due or (save_steps and done % save_steps == 0):
            # At the end too: a run killed before its weights are committed resumes with nothing to redo.
            save(done)
            last_save = time.perf_counter()
    bar.close()
    parallel.sync_buffers(model)  # every rank returns rank 0's model
    seconds = time.perf_counter() - started
    if metrics_file is not None:
        metrics_file.close()
    if board is not None:
        board.close()
    trained = total_steps - start_step
    return TrainResult(total_steps, seconds, trained * cfg.batch_size / max(seconds, 1e-9), mean_loss, eval_accuracy)
