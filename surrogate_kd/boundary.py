"""Decision-boundary samples: the paper's adversarial pairs (Sect. 4.1 "Adding Teacher Exploitation", Fig. 3).

Each attacked image moves towards a target class t (never the teacher's prediction) by iterative
signed-gradient steps on the teacher's cross-entropy towards t (an L-inf basic iterative method),
projected to an epsilon ball around the image and to [0, 1]. Every image has its own step size,
adapted by Bold Driver: x1.1 after a step that did not reach t; a step that reaches t but leaves
the pair too confident (top softmax above the threshold) is reverted and halved. The last iterate
before success ("pre", not t) and the first at success ("post", t) straddle the boundary; one more
signed step copies each deeper into its own class ("deeper" copies).

A teacher without gradients (an ONNX model: `differentiable` False) gets the gradient-free
variant, method "bisection": each attacked image is paired with an image the teacher labels t (a
"partner"), and the segment between them is halved until its two ends sit one grey level or less
apart on either side of t's boundary, where the teacher's top two classes tie; the deeper copies
step back along the same segment, each into its own side. It needs only forward passes (a fixed
number per image), and can only reach classes the teacher predicts for some partner image.

Iterates live on the uint8 grid (multiples of 1/255), so what the attack checks is exactly what
gets stored: a pair cannot swap sides when it is written to a pool.

This file chooses targets and partners and keeps the books; the loops themselves, and how they
run on a CPU ('gather') and on a GPU ('where': fixed shapes, no host sync, captured as a CUDA
graph), are in boundary_attack.py and boundary_slots.py.
"""

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import Tensor

from .boundary_attack import (BISECTION_STEPS, GREY_LEVEL, Bisection, GradientAttack, bold_driver,  # noqa: F401
                              default_batch_size)
from .boundary_slots import SlotAttack
from .config import BOUNDARY_ROLES, BoundaryConfig, keep_flags, kept_roles
from .data import ImageSet
from .runtime import autocast_context, predict, resolve_device, resolve_strategy
from .errors import UserError
from .pool import claim_output
from .recipe import BOUNDARY_KEEP
from .teacher import Candidates, class_histogram, is_source, load_teacher, relative_entropy

TARGET_MODES = ("random", "nearest", "least-predicted")
METHODS = ("auto", "gradient", "bisection")


@dataclass
class BoundaryResult:
    """K kept pairs as 4K samples, in blocks of K: pre, post, pre deeper, post deeper (see BOUNDARY_ROLES);
    2K when only the pairs or only their deeper copies are kept (`roles`)."""

    images: Tensor  # (4K or 2K, C, H, W) uint8
    labels: Tensor  # (4K or 2K,) int64, the teacher's argmax of each sample
    targets: Tensor  # (K,) int64, the class each pair was pushed towards
    source: Tensor  # (K,) int64, index of the attacked image each pair came from
    summary: dict
    roles: tuple[str, ...] = BOUNDARY_ROLES  # the blocks present, in order

    def part(self, role: str) -> tuple[Tensor, Tensor]:
        """(K, C, H, W) images and (K,) labels of one role: pre, post, pre_deeper or post_deeper."""
        k, at = len(self.targets), self.roles.index(role)
        block = slice(at * k, (at + 1) * k)
        return self.images[block], self.labels[block]


# --------------------------------------------------------------------------- targets

def level_deficits(counts: Tensor, budget: int) -> Tensor:
    """(K,) class counts -> (K,) additions that raise the smallest counts to one level using `budget`.

    Water filling: the rarest classes are filled first, up to the level the budget reaches.
    """
    ascending = counts.double().sort().values
    k = torch.arange(1, counts.numel() + 1, dtype=torch.float64)
    cost = ascending * k - ascending.cumsum(0)  # raising the k rarest classes to the k-th count
    filled = int((cost <= budget).sum())  # cost never decreases, so this counts a prefix
    level = ascending[filled - 1] + (budget - cost[filled - 1]) / filled
    return (level - counts.double()).clamp(min=0)


def choose_targets(logits: Tensor, mode: str, generator: torch.Generator, class_counts: Tensor | None = None,
                   reachable: Tensor | None = None) -> Tensor:
    """(N, K) teacher logits -> (N,) target classes, never an image's predicted class.

    random: uniform over the other classes. nearest: the runner-up logit (smallest margin).
    least-predicted: drawn in proportion to how far each class falls short of a level histogram
    (`class_counts`, default the predictions on these images), to raise its relative entropy.
    `reachable` (K,) bool limits the targets to those classes wherever an image has one (the
    bisection attack needs an image of the target class to bisect towards).
    """
    if mode not in TARGET_MODES:
        raise UserError(f"unknown target mode '{mode}'; valid: {', '.join(TARGET_MODES)}")
    n, num_classes = logits.shape
    predicted = logits.argmax(1)
    others = torch.ones(n, num_classes, dtype=torch.bool)
    others[torch.arange(n), predicted] = False
    if reachable is not None:
        limited = others & reachable.cpu()
        others = torch.where(limited.any(1, keepdim=True), limited, others)
    if mode == "nearest":
        return logits.masked_fill(~others, -math.inf).argmax(1)
    weights = others.double()  # (N, K)
    if mode == "least-predicted":
        counts = class_histogram(predicted, num_classes) if class_counts is None else class_counts.cpu()
        weights = weights * level_deficits(counts, n)
        # An image whose own class is the only one short of the level still needs a target.
        weights = torch.where(weights.sum(1, keepdim=True) > 0, weights, others.double())
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def choose_partners(targets: Tensor, partner_labels: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(N,) targets, (M,) partner labels -> (N,) index of a random partner labelled with each target,
    and (N,) whether there is one (where not, the index is arbitrary)."""
    counts = torch.bincount(partner_labels, minlength=int(targets.max()) + 1)  # (K,)
    order = partner_labels.argsort(stable=True)  # partners grouped by label
    first = counts.cumsum(0) - counts  # where each label's group starts in `order`
    available = counts[targets]  # (N,)
    pick = first[targets] + (torch.rand(len(targets), generator=generator) * available).long().clamp(min=0)
    return order[pick.clamp(max=len(order) - 1)], available > 0


# --------------------------------------------------------------------------- the attack

def attack_method(teacher: torch.nn.Module, method: str = "auto") -> str:
    """'gradient' or 'bisection': `auto` takes the gradient attack unless the teacher says it has no
    gradients (`teacher.differentiable` False, as an ONNX teacher does)."""
    if method not in METHODS:
        raise UserError(f"unknown boundary method '{method}'; valid: {', '.join(METHODS)}")
    if method == "auto":
        return "gradient" if getattr(teacher, "differentiable", True) else "bisection"
    return method


@torch.inference_mode(False)  # a caller in inference mode still gets normal, differentiable tensors here
def boundary_pairs(teacher: torch.nn.Module, images: Tensor, targets: str = "random", threshold: float = 0.9,
                   max_steps: int = 20, epsilon: float = 32 / 255, step_size: float = 2 / 255, seed: int = 0,
                   batch_size: int | None = None, device: torch.device | None = None, precision: str = "auto",
                   class_counts: Tensor | None = None, method: str = "auto",
                   partners: tuple[Tensor, Tensor] | None = None, strategy: str | None = None,
                   deeper: bool = True, pairs: bool = True) -> BoundaryResult:
    """Boundary pairs and their deeper copies for images (N, C, H, W), uint8 or float in [0, 1].

    Only pairs that crossed within `max_steps` and sit within `threshold` (both images' top
    softmax) are kept. `class_counts` (K,) is the teacher's prediction histogram of the set the
    samples will join (default: of `images`): least-predicted targets fill its rarest classes and
    the summary reports it before and after. The teacher is used in eval mode and left unchanged.
    `deeper` False keeps the pairs without their deeper copies (near-duplicates of them), not computed;
    `pairs` False keeps the deeper copies alone.

    `method`: "gradient" (the signed-gradient attack), "bisection" (gradient-free: forward passes
    only, min(max_steps, 10) halvings; epsilon does not apply) or "auto" (bisection when the
    teacher has no gradients). Bisection pairs each image with a partner the teacher labels with
    its target: from `partners` (uint8 images (M, C, H, W), teacher labels (M,)), by default the
    attacked images themselves; targets are drawn among the partners' classes.
    `batch_size` None: 256 on a CPU, on CUDA what its free memory holds (boundary_attack.py).
    `strategy` None: 'gather' on a CPU, 'where' elsewhere (boundary_attack.py); the same pairs.
    """
    if images.dim() != 4 or images.shape[0] == 0:
        raise UserError(f"boundary samples need a non-empty batch of images (N, C, H, W), got {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        if not images.is_floating_point() or images.min() < 0 or images.max() > 1:
            raise UserError(f"images must be uint8 or floats in [0, 1], got {images.dtype}")
        images = images.mul(255).round().to(torch.uint8)
    if not 0 < threshold <= 1:
        raise UserError(f"threshold must be in (0, 1], got {threshold}")
    if max_steps < 1 or not GREY_LEVEL <= epsilon <= 1 or step_size <= 0 or (batch_size is not None and batch_size < 1):
        raise UserError(f"need max_steps >= 1, 1/255 <= epsilon <= 1, step_size > 0 and batch_size >= 1; "
                        f"got {max_steps}, {epsilon}, {step_size}, {batch_size}")
    device = device or next((p.device for p in teacher.parameters()), torch.device("cpu"))
    method = attack_method(teacher, method)
    strategy = resolve_strategy(strategy, device)
    # The step as a CUDA graph: not for a teacher that runs outside torch (an ONNX session cannot be captured).
    capture = device.type == "cuda" and strategy == "where" and getattr(teacher, "differentiable", True)
    autocast = autocast_context(device, precision, cache=not capture)
    was_training = teacher.training
    teacher.eval()  # BN on running statistics: the teacher the student will be distilled from
    started = time.perf_counter()
    batch_size = batch_size or default_batch_size(teacher, tuple(images.shape), device, method, strategy, autocast)
    logits = predict(teacher, images, batch_size=batch_size, device=device, precision=precision)  # (N, K)
    num_classes = logits.shape[1]
    if num_classes < 2:
        raise UserError("boundary samples need a teacher with at least two classes")
    generator = torch.Generator().manual_seed(seed)
    # Batches of equal size (the last one at most a row short): a 'where' run pads nothing worth speaking of.
    batch_size = math.ceil(len(images) / math.ceil(len(images) / batch_size))
    runner = dict(batch_size=batch_size, strategy=strategy, capture=capture, autocast=autocast, deeper=deeper,
                  pairs=pairs)
    slots = method == "gradient" and strategy == "where"  # SlotAttack: the whole set through batch_size slots
    if method == "bisection":
        partner_images, partner_labels = partners if partners is not None else (images, logits.argmax(1))
        partner_labels = partner_labels.cpu()
        reachable = class_histogram(partner_labels, num_classes) > 0
        target = choose_targets(logits, targets, generator, class_counts, reachable)
        partner, has_partner = choose_partners(target, partner_labels, generator)
        attack = Bisection(teacher, threshold, min(max_steps, BISECTION_STEPS), step_size, **runner)
    else:
        target = choose_targets(logits, targets, generator, class_counts)
        attack = (SlotAttack if slots else GradientAttack)(teacher, threshold, max_steps, epsilon, step_size, **runner)

    chunk_size = len(images) if slots else batch_size  # the slots take the whole set: they are its batch
    parts = []
    try:
        for start in range(0, len(images), chunk_size):
            chunk = slice(start, start + chunk_size)
            if method == "bisection":
                out = attack(images[chunk].to(device), partner_images[partner[chunk]].to(device),
                             target[chunk].to(device), has_partner[chunk].to(device))
            else:
                out = attack(images[chunk].to(device), target[chunk].to(device))
            parts.append({**{k: v.cpu() for k, v in out.items()}, "kept": out["kept"].cpu() + start})
    finally:
        teacher.train(was_training)
    seconds = time.perf_counter() - started

    crossed, within, steps, kept = (torch.cat([p[k] for p in parts]) for k in ("crossed", "within", "steps", "kept"))
    samples = torch.cat([p["images"] for p in parts], 1)  # (4 or 2, K, C, H, W) uint8
    labels = torch.cat([p["labels"] for p in parts], 1)  # (4 or 2, K)
    roles = kept_roles(pairs, deeper)
    result = BoundaryResult(samples.flatten(0, 1), labels.flatten(), target[kept], kept, {}, roles)

    before = class_histogram(logits.argmax(1), num_classes) if class_counts is None else class_counts.cpu()
    after = before + class_histogram(result.labels, num_classes)
    succeeded = int(crossed.sum())
    # Images through the teacher per attacked image, as computed ('where' also computes idle slots and padding).
    passes = round(attack.passes / len(images), 2)
    if method == "bisection":  # forward passes only: both ends, the halvings, the deeper copies
        cost = {"gradients_per_image": 0.0, "forwards_per_image": passes, "unreachable": int((~has_partner).sum())}
    else:  # teacher forward + backward passes (first gradient, steps, deeper pre)
        cost = {"gradients_per_image": passes}
    pre, _ = result.part(roles[0])
    result.summary = {
        "method": method, "strategy": strategy, "batch_size": batch_size, "attacked": len(images), "targets": targets,
        "threshold": threshold, "max_steps": max_steps, "epsilon": round(epsilon, 6), "success_rate": round(succeeded / len(images), 4),
        "mean_steps": round(steps[crossed].float().mean().item(), 2) if succeeded else None,
        "within_threshold": round(len(kept) / succeeded, 4) if succeeded else None,
        "pairs": len(kept), "samples": len(result.labels), **cost,
        # How far the pairs lie from the images attacked: L-inf, in grey levels (at most epsilon's for
        # the gradient attack; anywhere on the segment to the partner for bisection).
        "mean_distance": round((pre.int() - images[kept].int()).abs().flatten(1).amax(1).float().mean().item(), 1)
        if len(kept) else None,
        # + 0.0: a one-class histogram reads 0.0, not -0.0
        "class_histogram_before": before.tolist(), "relative_entropy_before": round(relative_entropy(before), 4) + 0.0,
        "class_histogram_after": after.tolist(), "relative_entropy_after": round(relative_entropy(after), 4) + 0.0,
        "seconds": round(seconds, 2), "samples_per_second": round(len(result.labels) / max(seconds, 1e-9), 1),
    }
    return result


# --------------------------------------------------------------------------- whole sets

def boundary_sample_parts(teacher: torch.nn.Module, take: Callable[[Tensor], Tensor], labels: Tensor,
                          fraction: float = 1.0, seed: int = 0, part_size: int | None = None,
                          **attack) -> Iterator[BoundaryResult]:
    """Boundary samples from a random `fraction` of a set of len(labels) images, labelled with the
    teacher's argmax: one BoundaryResult per part of at most `part_size` attacked images (None: one part).

    `take(positions)` fetches images of the set by position (a tensor's indexing, or candidates
    rendered or read on demand), so only one part of the attacked share is ever in memory. `labels`
    (N,) are the teacher's argmax over the whole set: least-predicted targets balance its histogram,
    not only the attacked part's, and each part's samples count for the parts after it. `attack`:
    keyword arguments of `boundary_pairs`; bisection pairs each image with a partner among the
    attacked ones of its part unless `partners` are given. `result.source` indexes the set.
    """
    if not 0 < fraction <= 1:
        raise UserError(f"fraction must be in (0, 1], got {fraction}")
    counts = class_histogram(labels, len(teacher.spec.classes))
    count = max(1, round(fraction * len(labels)))
    chosen = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:count].sort().values
    for number, positions in enumerate(chosen.split(part_size or count)):
        # Part 0 takes the caller's seed: a set attacked in one part gets the samples it always got.
        result = boundary_pairs(teacher, take(positions), seed=seed + number, class_counts=counts, **attack)
        counts = counts + class_histogram(result.labels, len(counts))
        result.source = positions[result.source]
        yield result


def merge_summaries(summaries: list[dict], fraction: float, images_before: int) -> dict:
    """One attack's summary from its parts' (`boundary_sample_parts`): counts and seconds added,
    rates weighted by what they are rates of, the histogram before the first part and after the last."""
    samples = sum(s["samples"] for s in summaries)
    whole = {"fraction": fraction, "images_before": images_before, "images_after": images_before + samples}
    if len(summaries) == 1:
        return {**summaries[0], **whole}
    first, last = summaries[0], summaries[-1]
    attacked = sum(s["attacked"] for s in summaries)
    succeeded = sum(round(s["success_rate"] * s["attacked"]) for s in summaries)
    pairs = sum(s["pairs"] for s in summaries)
    seconds = sum(s["seconds"] for s in summaries)

    def mean(key: str, weight: Callable[[dict], float]) -> float | None:
        parts = [(s[key], weight(s)) for s in summaries if s.get(key) is not None and weight(s) > 0]
        total = sum(w for _, w in parts)
        return round(sum(v * w for v, w in parts) / total, 2) if total else None

    merged = {**first, "attacked": attacked, "success_rate": round(succeeded / attacked, 4),
              "mean_steps": mean("mean_steps", lambda s: s["success_rate"] * s["attacked"]),
              "within_threshold": round(pairs / succeeded, 4) if succeeded else None,
              "pairs": pairs, "samples": samples,
              "mean_distance": mean("mean_distance", lambda s: s["pairs"]),
              **{key: mean(key, lambda s: s["attacked"]) for key in ("gradients_per_image", "forwards_per_image")
                 if key in first},
              "class_histogram_after": last["class_histogram_after"],
              "relative_entropy_after": last["relative_entropy_after"],
              "seconds": round(seconds, 2), "samples_per_second": round(samples / max(seconds, 1e-9), 1)}
    if "unreachable" in first:
        merged["unreachable"] = sum(s["unreachable"] for s in summaries)
    return {**merged, "parts": len(summaries), **whole}


def boundary_samples(teacher: torch.nn.Module, take: Callable[[Tensor], Tensor], labels: Tensor,
                     fraction: float = 1.0, seed: int = 0, **attack) -> tuple[ImageSet, dict]:
    """Boundary samples from a random `fraction` of a set of len(labels) images, in one part and
    in memory (`boundary_sample_parts`), and the attack's summary."""
    result = next(boundary_sample_parts(teacher, take, labels, fraction, seed, **attack))
    summary = merge_summaries([result.summary], fraction, len(labels))
    return ImageSet(result.images, result.labels, teacher.spec.classes, "boundary"), summary


def add_boundary_samples(teacher: torch.nn.Module, image_set: ImageSet, fraction: float = 1.0, seed: int = 0,
                         labels: torch.Tensor | None = None, **attack) -> tuple[ImageSet, dict]:
    """The set plus boundary samples from a random `fraction` of it (`boundary_samples`), all labelled
    with the teacher's argmax; bisection may pair an image with any image of the set."""
    if not 0 < fraction <= 1:
        raise UserError(f"fraction must be in (0, 1], got {fraction}")
    if labels is None:  # the teacher's argmax over the set, unless the caller has it already
        labels = predict(teacher, image_set.images, device=attack.get("device"),
                         precision=attack.get("precision", "auto")).argmax(1)
    if attack_method(teacher, attack.get("method", "auto")) == "bisection":
        attack.setdefault("partners", (image_set.images, labels))
    samples, summary = boundary_samples(teacher, image_set.images.__getitem__, labels, fraction, seed, **attack)
    extended = ImageSet(torch.cat([image_set.images, samples.images]), torch.cat([labels, samples.labels]),
                        teacher.spec.classes, image_set.name)
    return extended, summary


def boundary(teacher: "str | Path | torch.nn.Module", data: str, out: str | Path, fraction: float = 1.0,
             targets: str = "random", threshold: float = 0.9, max_steps: int = 20, epsilon: float = 32 / 255,
             seed: int = 0, device: str = "auto", overwrite: bool = False, method: str = "auto",
             keep: str = BOUNDARY_KEEP) -> dict:
    """Write a pool at `out`: the images of `data` (a set or a pool) plus boundary samples, all labelled
    with the teacher's argmax and stored with its logits; returns the summary.

    Made as `distill` makes a set's samples (select.write_with_boundary_samples): a pool is read a
    chunk at a time and the attack runs in parts that fit in memory, so a set of any size works.
    `method`: auto (gradients when the teacher has them, else bisection, which pairs each image with
    a partner among the attacked images), gradient or bisection. `keep`: all, pairs or deeper
    (config.BOUNDARY_KEEPS; default recipe.BOUNDARY_KEEP, as `distill`)."""
    from .select import write_with_boundary_samples  # select builds on this module

    pairs, deeper = keep_flags(keep)
    config = BoundaryConfig(fraction, targets, threshold=threshold, max_steps=max_steps, epsilon=epsilon,
                            method=method, pairs=pairs, deeper=deeper)  # bad settings fail before the teacher loads
    if is_source(data):
        raise UserError(f"boundary attacks a stored set; '{data}' is a synthetic source: write it first "
                        f"(surrogate-kd synthesize or select), or let distill add samples to it")
    claim_output(Path(out), overwrite)  # refuse a taken output before the attack, not after it
    model = load_teacher(teacher)
    dev = resolve_device(device)
    model.to(dev)
    candidates = Candidates(model.spec, data, 0, seed)
    params = {"teacher": str(teacher), "data": data, "fraction": fraction, "targets": targets,
              "threshold": threshold, "max_steps": max_steps, "epsilon": epsilon, "method": method, "keep": keep}
    manifest = {"source": "boundary", "params": params, "seed": seed, "classes": list(model.spec.classes)}
    summary = write_with_boundary_samples(model, candidates, config, seed, out, manifest, dev, overwrite)
    return {**summary, "out": str(out)}
