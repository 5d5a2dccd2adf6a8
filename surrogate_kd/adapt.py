"""Surrogates that adapt to the teacher: steer shader programs with its predictions (black box, logits only).

Plain shaders land in some of a teacher's classes far more often than in others, and balancing
after the fact can only repeat the rare classes' images. A shader program is a function of the
uniforms it draws, so a proposal (sources/proposal.py: a mixture of kernels, each centred on a
chosen program) can move where programs land without touching the grammar. `fit_proposal` is an
evolutionary search (a nonparametric cross-entropy method), per class:

    round 0    sample plain programs, render their first attempt, ask the teacher
    each round for every class c, `elites` programs among those sampled so far and the previous
               elites: a random choice of the programs the teacher assigns to c, or, when fewer
               are, all of them and the nearest misses (highest margin log p_c - max_k!=c log p_k);
               the next round samples programs near them (one kernel each, equal weight per class)
    weighing   sample the final kernels, measure which classes each class's kernels reach (a K x K
               matrix), and choose the class weights that maximise the entropy of the predicted
               histogram

Elites are a random choice among the hits, not the most confident ones, so the kernels of a class
keep its variety instead of converging on one program. Rendered with the fitted proposal, image i
of a seed stays a function of (seed, i, proposal):
`render("shaders", seed, start, count, size, channels, **shader_params(proposal))`.
"""

import inspect
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import UserError
from .runtime import predict
from .sources.proposal import FORMAT, MAX_BINS, encode_centres
from .sources.shaders import draw_counts, first_renders, is_simple, shaders
from .teacher import load_teacher, relative_entropy, teacher_fingerprint

SEARCH_START = 1 << 40  # the search's programs: far from the indices a pool or run renders (0, 1, ...)
_RENDER_CHUNK = 1024  # programs rendered at once in the search: bounded temporaries at any size
ADAPTIVE_FIGURE = 0.5  # fitted with half the plain programs figures: each class's kernels pick figure or frame
_SHADER_DEFAULTS = {name: p.default for name, p in inspect.signature(shaders).parameters.items()
                    if p.default is not inspect.Parameter.empty}


def fit_proposal(teacher, seed: int = 0, rounds: int = 8, per_round: int = 2000, elites: int = 50,
                 spread: float = 0.05, bins: int = 32, source_params: "dict | None" = None,
                 device: "torch.device | str | None" = None, log=None) -> dict:
    """A shaders proposal (a JSON-serialisable dict) that spreads the teacher's predictions over its classes.

    rounds: rounds of sampling and choosing elites (the first samples plain programs); per_round:
    programs rendered and predicted per round. The cost is (rounds + 1) x per_round teacher forward
    passes: one more round weighs the final kernels. elites: kernels per class. spread: the share
    of each kernel's mass spread over all of [0, 1) (the rest stays in its centre's bin of
    1/bins). source_params: the shader parameters to fit for (default figure=ADAPTIVE_FIGURE:
    the kernels choose figure or full frame per class). log: a callable taking one line per round.
    """
    teacher = load_teacher(teacher)
    params = {**_SHADER_DEFAULTS, "figure": ADAPTIVE_FIGURE, **(source_params or {})}
    params.pop("proposal", None)
    _check(rounds, per_round, elites, spread, bins, params)
    classes = teacher.num_classes
    device = torch.device(device) if device is not None else None
    program_draws, figure_draws = draw_counts(params["layers"])
    generator = torch.Generator().manual_seed(seed)  # which hits become elites
    started, proposal = time.perf_counter(), None  # round 0 samples the plain programs
    kept_uniforms, kept_log_probs = None, None  # (E*K, D), (E*K, K): the elites so far
    for round_index in range(rounds):
        uniforms, _, log_probs, valid = _sample(teacher, seed, round_index, per_round, params, proposal, device)
        _say(log, f"adapt: round {round_index}: {_coverage(log_probs, valid, classes)} "
                  f"({time.perf_counter() - started:.1f} s)")
        uniforms, log_probs = uniforms[valid], log_probs[valid]  # a simple render would be redrawn
        if kept_uniforms is not None:
            uniforms, log_probs = torch.cat([kept_uniforms, uniforms]), torch.cat([kept_log_probs, log_probs])
        chosen = torch.cat([_elites(log_probs, label, elites, generator) for label in range(classes)])
        kept_uniforms, kept_log_probs = uniforms[chosen], log_probs[chosen]
        proposal = _proposal(kept_uniforms, torch.ones(classes), elites, spread, bins, params, program_draws)
    # Weighing: which classes each class's kernels reach, and the class weights that even them out.
    _, components, log_probs, valid = _sample(teacher, seed, rounds, per_round, params, proposal, device)
    owners = components[valid] // elites  # kernels are stored class by class
    reach = _reach(owners, log_probs[valid].argmax(1), classes)  # (K kernel classes, K predicted classes)
    weights = _entropy_weights(reach)
    expected = relative_entropy(weights @ reach)
    own = reach.diagonal()
    _say(log, f"adapt: final kernels: {_coverage(log_probs, valid, classes)}; each class's kernels reach it in "
              f"{float(own.min()):.2f}-{float(own.max()):.2f} of their programs; weighted, expected relative "
              f"entropy {expected:.4f} ({time.perf_counter() - started:.1f} s)")
    proposal = _proposal(kept_uniforms, weights, elites, spread, bins, params, program_draws)
    proposal["about"] = {
        "teacher": teacher_fingerprint(teacher), "seed": seed, "rounds": rounds, "per_round": per_round,
        "forward_passes": (rounds + 1) * per_round, "expected_relative_entropy": round(expected, 4),
    }
    return proposal


# The search finds each class's elites among a round's programs: with 2,000 programs a round, up
# to 100 classes get about 20 or more each; beyond, most elites would be near misses, and a
# search that samples enough (20 x classes a round) costs minutes of CPU rendering at 224 px.
MAX_CLASSES_BY_DEFAULT = 100


def adapts_by_default(data: str, num_classes: int) -> bool:
    """Whether `distill` adapts when not told: for shaders, whose programs a proposal can steer,
    and teachers of up to MAX_CLASSES_BY_DEFAULT classes. Measured in docs/sources.md: relative
    entropy 0.42-0.80 -> 0.99 on five teachers, and better students at 120,000 images on three."""
    return data == "shaders" and num_classes <= MAX_CLASSES_BY_DEFAULT


def should_adapt(data: str, num_classes: int, adapt: bool | None) -> bool:
    """The caller's `adapt`, or `adapts_by_default` when it is None: the one rule distill, select and score follow."""
    return adapts_by_default(data, num_classes) if adapt is None else adapt


def adapted_params(teacher, params: dict, seed: int, device=None) -> tuple[dict, dict]:
    """The shader parameters a run renders with when it adapts (the user's `params` + a proposal
    fitted with them), and a summary for its report. The fit is a function of (teacher, seed,
    params), so a resumed run fits the same proposal again rather than storing it."""
    proposal = fit_proposal(teacher, seed=seed, source_params=params, device=device,
                            log=lambda line: print(f"surrogate-kd: {line}", file=sys.stderr, flush=True))
    return shader_params(proposal, params), proposal["about"]


def shader_params(proposal: dict, params: "dict | None" = None) -> dict:
    """The shader parameters to render `proposal` with: `params`, the ones it was fitted for, and itself."""
    return {**(params or {}), **proposal["shader"], "proposal": proposal}


def _coverage(log_probs: Tensor, valid: Tensor, classes: int) -> str:
    hits = torch.bincount(log_probs[valid].argmax(1), minlength=classes)
    return f"relative entropy {relative_entropy(hits):.4f}, rarest class {int(hits.min())} of {int(valid.sum())}"


def _check(rounds, per_round, elites, spread, bins, params) -> None:
    if not (isinstance(rounds, int) and rounds >= 1):
        raise UserError(f"adapt needs rounds >= 1, got {rounds!r}")
    if not (isinstance(per_round, int) and per_round >= 10):
        raise UserError(f"adapt needs per_round >= 10 programs, got {per_round!r}")
    if not (isinstance(elites, int) and elites >= 1):
        raise UserError(f"adapt needs elites >= 1 per class, got {elites!r}")
    if not 0 < spread <= 1:
        raise UserError(f"adapt needs a spread in (0, 1], got {spread!r}")
    if not (isinstance(bins, int) and 2 <= bins <= MAX_BINS):
        raise UserError(f"adapt needs bins in 2..{MAX_BINS}, got {bins!r}")
    if params["frames"] != 1:
        raise UserError("adapt fits programs, one image each: use frames=1 (the default) while fitting")


def _sample(teacher, seed, round_index, count, params, proposal, device):
    """The first renders of a round's `count` programs: their uniforms (N, D), components (N,),
    the teacher's log-probabilities (N, K), and whether `shaders` would keep them (N,) bool."""
    spec, first = teacher.spec, SEARCH_START + round_index * count
    uniforms, components, images = [], [], []
    for start in range(first, first + count, _RENDER_CHUNK):
        indices = torch.arange(start, min(start + _RENDER_CHUNK, first + count))
        chunk_images, chunk_uniforms, chunk_components = first_renders(
            seed, indices, spec.size, spec.channels, params["layers"], params["figure"], proposal)
        images.append(chunk_images), uniforms.append(chunk_uniforms), components.append(chunk_components)
    images = torch.cat(images)
    valid = ~is_simple(images, params["min_std"], params["min_colors"])  # simple renders get redrawn
    log_probs = F.log_softmax(predict(teacher, images, device=device), 1)
    return torch.cat(uniforms), torch.cat(components), log_probs, valid


def _elites(log_probs: Tensor, label: int, count: int, generator: torch.Generator) -> Tensor:
    """(count,) row indices: a random `count` of the rows the teacher assigns to `label`, or, when
    fewer are, all of them and the rows closest to it (highest margin). Fewer rows: all of them."""
    others = log_probs.clone()
    others[:, label] = -math.inf
    margin = log_probs[:, label] - others.amax(1)  # > 0: predicted `label`
    hits = (margin > 0).nonzero().flatten()
    if hits.numel() >= count:
        return hits[torch.randperm(hits.numel(), generator=generator)[:count]]
    nearest = margin.topk(min(count, margin.numel())).indices  # the hits first, then the nearest misses
    return nearest if nearest.numel() == count else nearest[torch.arange(count) % nearest.numel()]


def _reach(owners: Tensor, predicted: Tensor, classes: int) -> Tensor:
    """(K, K) float64: the share of the programs of class j's kernels (owners (N,)) the teacher assigns to class k."""
    counts = torch.bincount(owners * classes + predicted, minlength=classes * classes).view(classes, classes)
    counts = counts.double()
    return counts / counts.sum(1, keepdim=True).clamp(min=1)


def _entropy_weights(reach: Tensor, steps: int = 500, rate: float = 1.0) -> Tensor:
    """(K,) class weights maximising the entropy of weights @ reach (concave: exponentiated gradient)."""
    weights = torch.full((reach.shape[0],), 1.0 / reach.shape[0], dtype=torch.float64)
    for _ in range(steps):
        histogram = weights @ reach
        gradient = -(reach @ (torch.log(histogram.clamp(min=1e-12)) + 1))
        weights = weights * torch.exp(rate * (gradient - gradient.max()))
        weights = weights / weights.sum()
    return weights


def _proposal(elite_uniforms: Tensor, class_weights: Tensor, elites: int, spread: float, bins: int, params: dict,
              program_draws: int) -> dict:
    """The JSON form (sources/proposal.py) of kernels centred on elites (K*E, D), stored class by class."""
    centres = (elite_uniforms * bins).to(torch.int64).clamp_(0, bins - 1)  # (K*E, D)
    figure_draws = draw_counts(params["layers"])[1]
    figure_bins = centres[:, program_draws:] if centres.shape[1] > program_draws else \
        torch.zeros(centres.shape[0], figure_draws, dtype=torch.int64)  # figure=0: the figure's draws go unused
    weights = class_weights.double().repeat_interleave(elites) / elites
    return {
        "format": FORMAT, "shader": {"layers": params["layers"], "figure": params["figure"]},
        "bins": bins, "spread": spread,
        "weights": [round(float(w), 6) for w in weights],
        "program_bins": encode_centres(centres[:, :program_draws]), "figure_bins": encode_centres(figure_bins),
    }


def _say(log, line: str) -> None:
    if log is not None:
        log(line)
