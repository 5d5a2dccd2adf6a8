"""The attack kernels of boundary.py: batches of images moved to the teacher's decision boundaries, on the device.

Two ways to run the loop, named as the sources name theirs (sources/strategy.py):

    gather  each gradient step runs the teacher on the images still moving only (`nonzero`: one
            host sync per step) and the loop stops when none is left: the least arithmetic, since
            most images cross in a few of the max_steps steps. The CPU default: a sync costs
            nothing there and arithmetic is the cost.
    where   fixed shapes, masks instead of indexing, no host sync inside the loop: the launches
            do not depend on the batch size or on how many images have crossed, so on CUDA a
            step is captured once as a CUDA graph (capture.ReplayedCall) and replayed. The
            accelerator default. Gradients: slots refilled as images finish
            (boundary_slots.SlotAttack), so the work still follows the steps taken. Bisection:
            every image takes all its halvings anyway; a short last batch is padded.

Rows are independent, so both give the same pairs. The state of a batch lives in tensors
updated in place (`out=`, `copy_`): a captured graph reads and writes fixed addresses.
"""

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import kept_roles
from .errors import UserError

# Halvings of the segment: 2^-10 of the longest segment (255 grey levels) is a quarter grey level, so
# more cannot change the rounded pair.
BISECTION_STEPS = 10
GROW, SHRINK = 1.1, 0.5  # Bold Driver factors, as in the authors' public code (issue 6)
GREY_LEVEL = 1 / 255  # the smallest step a uint8 image can show
CPU_BATCH = 256  # a CPU gains nothing from larger batches, only memory
CUDA_BATCH_RANGE = (256, 8192)  # unmeasured bounds: fewer slots launch-bound at 32 px, more only take memory


# --------------------------------------------------------------------------- one step's arithmetic

def bold_driver(step: Tensor, advanced: Tensor, overshot: Tensor, min_step: float, max_step: float) -> Tensor:
    """Per-image step sizes (B,): x1.1 after a step that missed the target, x0.5 after a reverted one."""
    step = torch.where(advanced, step * GROW, step)
    step = torch.where(overshot, step * SHRINK, step)
    return step.clamp(min_step, max_step)


def _signed_step(x: Tensor, gradient: Tensor, step: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """One descent step x - step * sign(grad), rounded to the uint8 grid and clipped to [low, high]."""
    moved = (x - step.view(-1, 1, 1, 1) * gradient.sign()).mul(255).round().div(255)
    return torch.minimum(torch.maximum(moved, low), high)  # low/high are on the grid: stays on it


def _input_gradient(teacher: torch.nn.Module, x: Tensor, classes: Tensor, autocast) -> tuple[Tensor, Tensor]:
    """Teacher logits (B, K) float32 at x and d CE(logits, classes) / dx (B, C, H, W).

    The gradient is taken with respect to the input only, so no parameter's .grad is touched.
    """
    x = x.detach().requires_grad_(True)
    try:
        with torch.inference_mode(False), torch.enable_grad(), autocast:
            logits = teacher(x.contiguous(memory_format=torch.channels_last)).float()
            if not logits.requires_grad:
                raise RuntimeError("its output does not depend differentiably on the input")
            # Summed, not averaged: each image's gradient is its own, whatever the batch size.
            (gradient,) = torch.autograd.grad(F.cross_entropy(logits, classes, reduction="sum"), x)
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as error:
        reason = (str(error).strip().splitlines() or ["unknown error"])[0]
        raise UserError(f"boundary samples need the teacher's gradient with respect to its input, but {reason}; "
                        "load the teacher outside torch.inference_mode and without no_grad in its forward, or use the "
                        "gradient-free method='bisection'") from None
    return logits.detach(), gradient


def _logits(teacher: torch.nn.Module, x: Tensor, autocast) -> Tensor:
    with torch.no_grad(), autocast:
        return teacher(x.contiguous(memory_format=torch.channels_last)).float()


def _on_segment(start: Tensor, direction: Tensor, alpha: Tensor) -> Tensor:
    """start + alpha * direction per image (alpha (B,)), rounded to the uint8 grid."""
    return (start + alpha.view(-1, 1, 1, 1) * direction).mul(255).round().div(255)


def _keep(mask: Tensor, new: Tensor, state: Tensor) -> None:
    """state[i] = new[i] where mask[i] (B,), in place: the state is a captured graph's fixed buffer."""
    torch.where(mask.view(-1, *[1] * (state.dim() - 1)), new, state, out=state)


@dataclass
class _Rows:
    """Per-image tensors of one batch, row b = image b; gathered and put back by row index."""

    def rows(self, index: Tensor | slice):
        return type(self)(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def put(self, index: Tensor, part) -> None:
        for f in fields(self):
            getattr(self, f.name)[index] = getattr(part, f.name)

    def copy_(self, other) -> None:
        for f in fields(self):
            getattr(self, f.name).copy_(getattr(other, f.name))

    def clone(self):
        return type(self)(**{f.name: getattr(self, f.name).clone() for f in fields(self)})


@dataclass
class GradientState(_Rows):
    x: Tensor  # (B, C, H, W) float: the current iterate, on the uint8 grid
    gradient: Tensor  # (B, C, H, W) d CE(teacher(x), target) / dx
    low: Tensor  # (B, C, H, W) the epsilon ball within [0, 1], on the grid
    high: Tensor
    step: Tensor  # (B,) Bold Driver step size
    top_x: Tensor  # (B,) the teacher's top softmax at x
    class_x: Tensor  # (B,) and its class
    targets: Tensor  # (B,) int64
    active: Tensor  # (B,) bool: still moving
    crossed: Tensor  # (B,) bool
    within: Tensor  # (B,) bool: the pair is within the threshold
    steps: Tensor  # (B,) int64 steps taken
    pre: Tensor  # (B, C, H, W) the pair, where crossed
    post: Tensor
    post_gradient: Tensor
    pre_class: Tensor  # (B,)


def gradient_step(teacher, s: GradientState, threshold: float, max_step: float, autocast) -> None:
    """One signed step of every active image (the gather loop passes the active rows), in place."""
    candidate = _signed_step(s.x, s.gradient, s.step, s.low, s.high)
    logits, gradient = _input_gradient(teacher, candidate, s.targets, autocast)
    top, predicted = logits.softmax(1).max(1)
    judge_step(s, s.active, candidate, gradient, top, predicted, threshold, max_step)


def judge_step(s: GradientState, moving: Tensor, candidate: Tensor, gradient: Tensor, top: Tensor, predicted: Tensor,
               threshold: float, max_step: float) -> None:
    """Bold Driver's verdict on the step of the `moving` images (B,) to `candidate`, where the teacher
    says `top`, `predicted` and `gradient`: success ends an image's attack, a miss moves it on, an
    overshoot is reverted and halved. In place, masked: no host sync."""
    reached = moving & (predicted == s.targets)
    confident = (top > threshold) | (s.top_x > threshold)
    # Revert and halve while the step can still shrink; at one grey level, take what it reached.
    overshot = reached & confident & (s.step > GREY_LEVEL * (1 + 1e-6))
    success, advanced = reached & ~overshot, moving & ~reached
    s.steps.add_(moving)
    # The pair: the iterate before this step and the candidate.
    _keep(success, s.x, s.pre), _keep(success, candidate, s.post), _keep(success, gradient, s.post_gradient)
    _keep(success, s.class_x, s.pre_class), _keep(success, ~confident, s.within)
    s.crossed.logical_or_(success), s.active.logical_and_(~success)
    _keep(advanced, candidate, s.x), _keep(advanced, gradient, s.gradient)
    _keep(advanced, top, s.top_x), _keep(advanced, predicted, s.class_x)
    s.step.copy_(bold_driver(s.step, advanced, overshot, GREY_LEVEL, max_step))


# --------------------------------------------------------------------------- batch runners

class _Attack:
    """Batches of at most `batch_size` images through one attack. `passes` counts images through
    the teacher (a gradient or a forward each): the cost. For a fixed-step loop ('where'), a short
    batch is padded to batch_size (repeating its last image) and one state of that size serves the
    whole run, so on CUDA (`capture`) its step is captured once and replayed for every batch.
    `deeper` False: each kept pair without its deeper copies, which are then not computed; `pairs`
    False: the deeper copies without the pair."""

    def __init__(self, teacher, batch_size: int, strategy: str, capture: bool, autocast, deeper: bool = True,
                 pairs: bool = True):
        self.teacher, self.batch_size, self.strategy, self.capture = teacher, batch_size, strategy, capture
        self.autocast, self.deeper, self.pairs = autocast, deeper, pairs
        self.roles = len(kept_roles(pairs, deeper))  # samples per kept pair
        self.state = None
        self.passes = 0

    def _padded(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        count = len(tensors[0])
        if self.strategy != "where" or count == self.batch_size:
            return tensors
        rows = torch.arange(self.batch_size, device=tensors[0].device).clamp(max=count - 1)
        return tuple(t[rows] for t in tensors)

    def _run_fixed(self, fresh: _Rows, steps: int, step) -> _Rows:
        """`steps` calls of step(state) on the run's one state, refilled in place from `fresh`."""
        if self.state is None:
            self.state = fresh.clone()  # its own memory: fresh may hold views of the caller's tensors
            body = lambda: step(self.state)  # noqa: E731
            if self.capture:
                from .capture import ReplayedCall

                self.replay = ReplayedCall(body, f"the boundary attack's step ({type(self).__name__})")
            else:
                self.replay = body
        else:
            self.state.copy_(fresh)
        for _ in range(steps):
            self.replay()
        self.passes += steps * len(fresh.targets)
        return self.state


class GradientAttack(_Attack):
    """The signed-gradient attack (boundary.py's docstring), one batch per call, 'gather' strategy
    (the 'where' one is boundary_slots.SlotAttack, which shares this class's arithmetic)."""

    def __init__(self, teacher, threshold: float, max_steps: int, epsilon: float, step_size: float, **runner):
        super().__init__(teacher, **runner)
        self.threshold, self.max_steps = threshold, max_steps
        self.reach = int(epsilon * 255 + 1e-6)  # the epsilon ball in grey levels, rounded down
        self.max_step = max(self.reach, 1) * GREY_LEVEL  # a longer step only lands on the ball's surface
        self.first_step = min(max(step_size, GREY_LEVEL), self.max_step)

    def __call__(self, originals: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """uint8 images (n, C, H, W) and targets (n,) on the device -> per image whether it crossed,
        whether its pair is within the threshold and the steps taken; for the kept pairs
        (`kept`, (K,)), the samples (4, K, C, H, W) uint8 and their classes (4, K)."""
        s = self._start(originals, targets)
        for _ in range(self.max_steps):
            rows = s.active.nonzero().flatten()  # (R,) the one host sync per step
            if rows.numel() == 0:
                break
            part = s.rows(rows)
            gradient_step(self.teacher, part, self.threshold, self.max_step, self.autocast)
            s.put(rows, part)
            self.passes += len(rows)
        kept = (s.crossed & s.within).nonzero().flatten()  # (K,) a host sync, once per batch
        images, labels = self._deeper(*(t[kept] for t in (s.pre, s.post, s.post_gradient, s.pre_class, s.targets,
                                                           s.low, s.high, s.step)))
        return {"crossed": s.crossed, "within": s.within, "steps": s.steps, "kept": kept, "images": images,
                "labels": labels}

    def _ball(self, originals: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """uint8 images (B, C, H, W) -> floats x0 and the epsilon ball's bounds low, high within [0, 1], on the grid."""
        x0 = originals.float().div(255)
        low = (originals.int() - self.reach).clamp(min=0).float().div(255)
        high = (originals.int() + self.reach).clamp(max=255).float().div(255)
        return x0, low, high

    def _start(self, originals: Tensor, targets: Tensor) -> GradientState:
        x0, low, high = self._ball(originals)
        step = torch.full(targets.shape, self.first_step, device=x0.device)
        logits, gradient = _input_gradient(self.teacher, x0, targets, self.autocast)
        self.passes += len(x0)
        top_x, class_x = logits.softmax(1).max(1)
        active = class_x != targets  # already t (a precision tie) counts as a failure
        return GradientState(x0, gradient, low, high, step, top_x, class_x, targets, active,
                             crossed=torch.zeros_like(active), within=torch.zeros_like(active),
                             steps=torch.zeros_like(targets), pre=x0.clone(), post=x0.clone(),
                             post_gradient=torch.zeros_like(x0), pre_class=class_x.clone())

    def _deeper(self, pre: Tensor, post: Tensor, post_gradient: Tensor, pre_class: Tensor, post_class: Tensor,
                low: Tensor, high: Tensor, step: Tensor) -> tuple[Tensor, Tensor]:
        """K kept pairs -> their samples (4, K, C, H, W) uint8 and classes (4, K): pre, post and a deeper copy
        of each, one more signed step descending the cross-entropy of its own class, with the step that
        crossed (it is sized to how far this image's boundary was). Without `deeper`: (2, K), pre and post;
        without `pairs`: (2, K), the deeper copies."""
        if not self.deeper:
            return torch.stack([pre, post]).mul(255).round().to(torch.uint8), torch.stack([pre_class, post_class])
        pre_deeper, post_deeper, deeper_classes = pre, post, torch.cat([pre_class, post_class])
        if len(pre):
            _, pre_gradient = _input_gradient(self.teacher, pre, pre_class, self.autocast)
            pre_deeper = _signed_step(pre, pre_gradient, step, low, high)
            post_deeper = _signed_step(post, post_gradient, step, low, high)
            deeper_classes = _logits(self.teacher, torch.cat([pre_deeper, post_deeper]), self.autocast).argmax(1)
            self.passes += len(pre)
        samples = torch.stack([pre, post, pre_deeper, post_deeper])  # (4, K, C, H, W) on the uint8 grid
        classes = torch.stack([pre_class, post_class, *deeper_classes.chunk(2)])
        keep = slice(0 if self.pairs else 2, 4)
        return samples[keep].mul(255).round().to(torch.uint8), classes[keep]


@dataclass
class BisectionState(_Rows):
    start: Tensor  # (B, C, H, W) float: the attacked image
    direction: Tensor  # (B, C, H, W) partner - start
    lo: Tensor  # (B,) the segment's fraction where the teacher says not t
    hi: Tensor  # (B,) and where it says t
    lo_logits: Tensor  # (B, K)
    hi_logits: Tensor  # (B, K)
    targets: Tensor  # (B,)


def bisection_step(teacher, s: BisectionState, autocast) -> None:
    """One halving of every segment, in place: fixed shapes, no host sync."""
    mid = (s.lo + s.hi) / 2
    mid_logits = _logits(teacher, _on_segment(s.start, s.direction, mid), autocast)
    is_target = mid_logits.argmax(1) == s.targets  # (B,)
    _keep(is_target, mid, s.hi), _keep(~is_target, mid, s.lo)
    _keep(is_target, mid_logits, s.hi_logits), _keep(~is_target, mid_logits, s.lo_logits)


class Bisection(_Attack):
    """The gradient-free attack (boundary.py's docstring), one batch per call: forward passes only."""

    def __init__(self, teacher, threshold: float, steps: int, step_size: float, **runner):
        super().__init__(teacher, **runner)
        self.threshold, self.steps, self.step_size = threshold, steps, step_size

    def __call__(self, starts: Tensor, ends: Tensor, targets: Tensor, has_partner: Tensor) -> dict[str, Tensor]:
        """uint8 images (n, C, H, W) towards partners `ends` the teacher labels `targets` (n,), on the
        device. Bisection on the segment x(a) = start + a (end - start), each point rounded to the
        uint8 grid and judged as rounded: `lo` is never t, `hi` always t, and after `steps`
        halvings the pair (x(lo), x(hi)) straddles t's boundary, where the teacher's top two
        classes tie. The deeper copies step back along the segment, each into its own side, by
        as long (in L2) as a signed step of `step_size` of the gradient attack. Returns the
        same fields as GradientAttack."""
        count = len(starts)
        starts, ends, targets, has_partner = self._padded(starts, ends, targets, has_partner)
        start, end = starts.float().div(255), ends.float().div(255)  # (B, C, H, W)
        lo_logits, hi_logits = _logits(self.teacher, start, self.autocast), _logits(self.teacher, end, self.autocast)
        self.passes += 2 * len(start)
        crossed = has_partner & (lo_logits.argmax(1) != targets) & (hi_logits.argmax(1) == targets)
        fresh = BisectionState(start, end - start, torch.zeros_like(targets, dtype=torch.float32),
                               torch.ones_like(targets, dtype=torch.float32), lo_logits, hi_logits, targets)
        if self.strategy == "where":
            s = self._run_fixed(fresh, self.steps, self._step)
        else:  # no early exit to gain: every segment takes all its halvings
            s = fresh
            for _ in range(self.steps):
                self._step(s)
            self.passes += self.steps * len(start)
        return self._finish(s.rows(slice(0, count)), crossed[:count])

    def _step(self, s: BisectionState) -> None:
        bisection_step(self.teacher, s, self.autocast)

    def _finish(self, s: BisectionState, crossed: Tensor) -> dict[str, Tensor]:
        within = (crossed & (s.lo_logits.softmax(1).amax(1) <= self.threshold)
                  & (s.hi_logits.softmax(1).amax(1) <= self.threshold))
        kept = within.nonzero().flatten()  # (K,) a host sync, once per batch
        start, direction, lo, hi = s.start[kept], s.direction[kept], s.lo[kept], s.hi[kept]
        length = direction.flatten(1).norm(dim=1).clamp(min=1e-12)  # (K,) L2 length of each segment
        deeper = self.step_size * direction[0].numel() ** 0.5 / length if kept.numel() else lo  # in fractions
        pre, post = _on_segment(start, direction, lo), _on_segment(start, direction, hi)
        pre_deeper = _on_segment(start, direction, (lo - deeper).clamp(min=0))
        post_deeper = _on_segment(start, direction, (hi + deeper).clamp(max=1))
        pre_class = s.lo_logits[kept].argmax(1)
        if not self.deeper:
            return {"crossed": crossed, "within": within, "steps": crossed.long() * self.steps, "kept": kept,
                    "images": torch.stack([pre, post]).mul(255).round().to(torch.uint8),
                    "labels": torch.stack([pre_class, s.targets[kept]])}  # (2, K)
        deeper_classes = torch.cat([pre_class, pre_class])
        if kept.numel():
            deeper_classes = _logits(self.teacher, torch.cat([pre_deeper, post_deeper]), self.autocast).argmax(1)
            self.passes += 2 * len(kept)
        samples = torch.stack([pre, post, pre_deeper, post_deeper])  # (4, K, C, H, W) on the uint8 grid
        keep = slice(0 if self.pairs else 2, 4)
        return {"crossed": crossed, "within": within, "steps": crossed.long() * self.steps, "kept": kept,
                "images": samples[keep].mul(255).round().to(torch.uint8),
                "labels": torch.stack([pre_class, s.targets[kept], *deeper_classes.chunk(2)])[keep]}  # (4 or 2, K)


# --------------------------------------------------------------------------- batch size

def default_batch_size(teacher: torch.nn.Module, shape: tuple[int, ...], device: torch.device, method: str,
                       strategy: str, autocast) -> int:
    """The batch for images of `shape` (N, C, H, W): CPU_BATCH on a CPU. On CUDA as many images as half
    the free memory holds, measured: what one more image adds to the peak memory of a teacher pass
    (with the input gradient for method 'gradient'; probes of 64 and 128 images, so fixed costs such
    as workspaces cancel), plus the attack's image-sized state per image; a power of two, at most
    CUDA_BATCH_RANGE's top. (256 leaves an H200 idle at 32 px.) The slots of the 'where' gradient
    attack (boundary_slots.py) are fewer: about N/16 (at least the range's bottom, memory allowing),
    so that the set keeps them busy and the drain at the end (up to max_steps + 1 iterations of
    partly idle slots) stays small beside the work."""
    if device.type != "cuda":
        return CPU_BATCH
    count, image_shape = shape[0], shape[1:]
    peaks = []
    for probes in (64, 128):
        probe = torch.zeros(probes, *image_shape, device=device)
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        if method == "gradient":
            _input_gradient(teacher, probe, torch.zeros(probes, dtype=torch.int64, device=device), autocast)
        else:
            _logits(teacher, probe, autocast)
        peaks.append(torch.cuda.max_memory_allocated(device) - before)
    state_tensors = 8 if method == "gradient" else 3  # image-sized float tensors per image: the state and a candidate
    per_image = max(peaks[1] - peaks[0], 0) / 64 + state_tensors * probe[0].numel() * 4
    free, _ = torch.cuda.mem_get_info(device)
    low, high = CUDA_BATCH_RANGE
    batch = min(high, 2 ** int(math.log2(max(1, int(free * 0.5 / per_image)))))  # memory first: never above it
    if method == "gradient" and strategy == "where":
        batch = min(batch, max(low, 2 ** int(math.log2(max(1, count // 16)))))
    return batch
