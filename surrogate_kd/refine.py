"""Surrogate images refined towards the teacher's own data statistics (DeepInversion's prior).

A teacher with BatchNorm layers carries, in their running means and variances, the first two
moments of its training data's features at every depth. DeepInversion (Yin et al., CVPR 2020)
synthesises images from noise by matching the batch's feature moments to those statistics while
the teacher's cross-entropy holds a target class. Here the same objective starts from the
surrogate images themselves (shaders, leaves, photos) and takes a few steps only: the images keep
the source's diversity and move towards what the teacher's data looked like, as the teacher saw it.

One refinement step of a batch of REFINE_BATCH images (its labels: the class the teacher gave
each image at selection):

    loss = CE(teacher(jitter(x)), labels) + bn_weight * sum over BatchNorm layers of
           ||mean(features) - running_mean|| + ||var(features) - running_var||

with Adam on the pixels (each step's gradient first smoothed by a Gaussian of `blur` pixels, if
set), x kept in [0, 1] and rounded to uint8 at the end. The moments are the
batch's, so a batch is always REFINE_BATCH images in the order of the set, whatever the device:
the same set, seed and teacher give the same images. Jitter (a random shift of up to `jitter`
pixels, wrapping) keeps the images from fitting one alignment of the teacher's filters.
"""

import math
from contextlib import contextmanager
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from . import parallel
from .config import RefineConfig
from .errors import UserError
from .runtime import autocast_context
from .sources import render

REFINE_BATCH = 256  # images whose feature moments are matched together: enough for steady moments
# One backward pass of this many images measures a teacher's grain: within 0.08 of 256 images' figure
# on the gratings, tints and focus teachers (benchmarks/refine_grain.py --images), at a quarter of the memory.
GRAIN_IMAGES = 64
NOISE_GRAIN = 2.83  # `grain` of independent pixel noise: 2 x E|x - y| / E|x| = 2 x sqrt(2) for Gaussian pixels
_SEED_STRIDE = 1_000_003  # batch b of a run seeded s draws its jitter from seed s * stride + b


def batch_norms(teacher: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    """The teacher's BatchNorm layers that hold running statistics, in forward order."""
    return [m for m in teacher.modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]


def can_refine(teacher: torch.nn.Module) -> bool:
    """Whether refinement applies: a teacher with gradients and BatchNorm statistics to match."""
    return getattr(teacher, "differentiable", True) and bool(batch_norms(teacher))


def require_refinable(teacher: torch.nn.Module) -> None:
    """A one-line error where refinement was asked of a teacher it cannot use."""
    if not can_refine(teacher):
        raise UserError("refining images (--refine-steps) matches the teacher's BatchNorm statistics through its "
                        "gradients; this teacher has no BatchNorm running statistics or no gradients: use "
                        "--refine-steps 0")


@contextmanager
def _moment_distances(layers):
    """Collects, for each forward pass, every layer's distance between its input's batch moments and
    its running statistics (a list the caller clears per pass)."""
    distances = []

    def hook(layer, inputs, _output):
        x = inputs[0].float()
        dims = [0] + list(range(2, x.dim()))
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
        distances.append(torch.linalg.vector_norm(mean - layer.running_mean)
                         + torch.linalg.vector_norm(var - layer.running_var))

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        yield distances
    finally:
        for handle in handles:
            handle.remove()


def refine(teacher: torch.nn.Module, images: Tensor, labels: Tensor, cfg: RefineConfig, seed: int,
           device: torch.device, first_batch: int = 0, precision: str = "auto") -> Tensor:
    """uint8 (N, C, H, W) images refined towards the teacher's BatchNorm statistics, holding `labels`.

    Batches of REFINE_BATCH in order; `first_batch` numbers the first one, so a set refined in
    chunks of whole batches gets the images it would get refined at once."""
    require_refinable(teacher)
    layers = batch_norms(teacher) if cfg.bn_weight else []  # weight 0: no moments to collect at every step
    autocast = autocast_context(device, precision)
    out = torch.empty_like(images)
    was_training = teacher.training
    teacher.eval()  # the running statistics are the target: a training-mode pass would move them
    try:
        with _moment_distances(layers) as distances:
            starts = range(0, len(images), REFINE_BATCH)
            for b, start in enumerate(tqdm(starts, desc="refine", leave=False, disable=not parallel.is_main())):
                rows = slice(start, start + REFINE_BATCH)
                generator = torch.Generator().manual_seed(seed * _SEED_STRIDE + first_batch + b)
                try:
                    out[rows] = _refine_batch(teacher, images[rows].to(device), labels[rows].to(device), cfg,
                                              generator, distances, autocast).cpu()
                except torch.OutOfMemoryError as error:  # a large teacher at 224 px on a small card
                    raise UserError(f"refining {REFINE_BATCH} images at a time (the moments are a batch's) ran out of "
                                    f"memory on {device}; --refine-steps 0 skips refinement") from error
    finally:
        teacher.train(was_training)
    return out


def chosen_refiner(teacher, cfg, candidates: int, seed: int, device: torch.device, info: dict):
    """apply(positions, images, labels) -> images: the chosen images that are candidates (position below
    `candidates`) refined towards the teacher's statistics (`refine`), chunk after chunk as one
    sequence of batches; boundary samples stay where the attack put them, at the teacher's boundaries.
    Counts the refined images in info["refined"]."""
    batches = 0
    info["refined"] = {"images": 0, **asdict(cfg)}

    def apply(positions: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        nonlocal batches
        rows = (torch.as_tensor(positions) < candidates).nonzero().flatten()
        if len(rows):
            images = images.clone()
            images[rows] = refine(teacher, images[rows], labels[rows], cfg, seed, device, first_batch=batches)
            batches += -(-len(rows) // REFINE_BATCH)
            info["refined"]["images"] += len(rows)
        return images

    return apply


def grain(z: Tensor) -> float:
    """How rough a batch of images or gradients (N, C, H, W) is: the mean absolute difference between
    neighbouring pixels (down and across, summed) over the mean absolute value. Smooth fields score
    below 1, independent pixel noise NOISE_GRAIN, a checkerboard 4."""
    down = (z[..., 1:, :] - z[..., :-1, :]).abs().mean()
    across = (z[..., :, 1:] - z[..., :, :-1]).abs().mean()
    return float((down + across) / z.abs().mean().clamp_min(1e-30))


def term_gradients(teacher: torch.nn.Module, images: Tensor, bn_weight: float = RefineConfig.bn_weight) -> dict:
    """The gradients with respect to `images` (float in [0, 1]) of refinement's two terms, each
    image labelled with the teacher's own class: {"class_term": ..., "statistics_term": ...}."""
    require_refinable(teacher)
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            x = images.detach().clone().requires_grad_(True)
            with _moment_distances(batch_norms(teacher)) as distances:
                logits = teacher(x)
                class_term = F.cross_entropy(logits, logits.detach().argmax(1))
                statistics_term = bn_weight * torch.stack(distances).sum()
            return {"class_term": torch.autograd.grad(class_term, x, retain_graph=True)[0],
                    "statistics_term": torch.autograd.grad(statistics_term, x)[0]}
    finally:
        teacher.train(was_training)


def teacher_grain(teacher: torch.nn.Module, device: torch.device, images: int = GRAIN_IMAGES) -> float:
    """The grain of the statistics term's gradient on the first `images` plain shader images of
    stream 0 at the teacher's size (fp32, on `device`, where the teacher is): a property of the
    teacher, the same for every run of it. Studies 10-11 (docs/recipe.md): refinement cost both
    teachers above NOISE_GRAIN and raised most below it (not all: focus)."""
    spec = teacher.spec
    x = render("shaders", 0, 0, images, spec.size, spec.channels).to(device).float().div(255)
    return grain(term_gradients(teacher, x)["statistics_term"])


def _refine_batch(teacher, images: Tensor, labels: Tensor, cfg: RefineConfig, generator: torch.Generator,
                  distances: list, autocast) -> Tensor:
    """One batch's steps. Adam is written out (torch.optim.Adam reads its step count with .item(),
    a host sync per step) so that a step dispatches the same ops whatever the batch, with no sync."""
    x = images.float().div(255)
    m, v = torch.zeros_like(x), torch.zeros_like(x)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    shifts = torch.randint(-cfg.jitter, cfg.jitter + 1, (cfg.steps, 2), generator=generator).tolist()
    smooth = _gaussian_blur(cfg.blur, x.shape[1], x.device)
    for t, (dy, dx) in enumerate(shifts, start=1):
        distances.clear()
        x.requires_grad_(True)
        with torch.inference_mode(False), torch.enable_grad(), autocast:
            logits = teacher(torch.roll(x, (dy, dx), (2, 3)).contiguous(memory_format=torch.channels_last))
            loss = F.cross_entropy(logits.float(), labels)
            if cfg.bn_weight:
                loss = loss + cfg.bn_weight * torch.stack(distances).sum()
            (gradient,) = torch.autograd.grad(loss, x)
        x = x.detach()
        gradient = smooth(gradient)
        m.mul_(beta1).add_(gradient, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(gradient, gradient, value=1 - beta2)
        step = cfg.lr / (1 - beta1 ** t)  # bias corrections: Python floats, no tensors made per step
        denominator = v.sqrt().div_(math.sqrt(1 - beta2 ** t)).add_(eps)
        x.addcdiv_(m, denominator, value=-step).clamp_(0, 1)
    return x.mul(255).round().to(torch.uint8)


def _gaussian_blur(sigma: float, channels: int, device: torch.device):
    """blur(gradient) -> the gradient low-passed by a Gaussian of `sigma` pixels (0: unchanged).

    A classifier's gradient with respect to its pixels is rough: its neighbour differences are
    0.5-2.2 times its values on most of the studies' teachers and about 4 times (a checkerboard) on
    the corruptions teacher, which refinement hurt (benchmarks/refine_grain.py, docs/recipe.md
    study 10), so raw steps can add pixel-scale grain the teacher reads and the real data never
    had. The kernel is built once per batch, on the device: no copy per step."""
    if not sigma:
        return lambda gradient: gradient
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, device=device, dtype=torch.float32) / sigma) ** 2)
    taps = taps / taps.sum()
    rows = taps.view(1, 1, -1, 1).expand(channels, 1, -1, 1).contiguous()
    columns = taps.view(1, 1, 1, -1).expand(channels, 1, 1, -1).contiguous()

    def blur(gradient: Tensor) -> Tensor:
        padded = F.pad(gradient, (radius, radius, radius, radius), mode="replicate")
        return F.conv2d(F.conv2d(padded, rows, groups=channels), columns, groups=channels)

    return blur
