"""Proposals: programs near chosen programs, so that a teacher can steer a source (adapt.py).

A shader program is a function of the uniforms its image draws (rng.Draws). A proposal leaves the
program alone and changes where those uniforms fall. It is a mixture of components, each centred
on one program: for every draw d, component m puts a share 1 - spread of its mass in one of
`bins` equal bins of [0, 1) (its centre's bin) and spreads the rest uniformly; an image's uniform u
for draw d becomes F^-1(u), F that piecewise-constant density's CDF. A sample of component m is
therefore a program whose choices among 8 ops (value function, transforms, figure shape) are
mostly m's, whose continuous parameters lie mostly within 1/bins of m's, and whose other draws
(a share of about `spread`) are drawn afresh: a kernel density estimate over the chosen programs.

Each program picks its component from its own hash (salt COMPONENT_SALT) through the cumulative
weights, so image i stays a function of (seed, i, proposal).

The JSON form (what pools and runs record as the source parameter `proposal`):

    {"format": "shaders-proposal/1",
     "shader": {"layers": 3, "figure": 0.5},   # the shader parameters it was fitted for
     "bins": 32, "spread": 0.05,
     "weights": [M numbers >= 0],
     "program_bins": [M strings of D_program base-36 digits],  # each draw's centre bin, 0..bins-1
     "figure_bins":  [M strings of D_figure base-36 digits],   # the figure's own draws
     "about": {...}}                                           # provenance, not used to render

One digit per draw keeps a proposal of 500 kernels near 45 kB (D_program is 77 at layers=3,
D_figure 9), so pools and runs can record it beside their other parameters.

Every op of the warp is elementwise (compare, gather, divide), so an image is byte-identical
whatever batch renders it, and the 'where' strategy keeps a fixed op count with no host sync.
"""

import functools
import json
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import UserError
from .rng import Draws

FORMAT = "shaders-proposal/1"
COMPONENT_SALT = 0x434F4D50  # the program's pick of a component: its own stream, apart from its draws
_KEYS = {"format", "shader", "bins", "spread", "weights", "program_bins", "figure_bins", "about"}
_BELOW_ONE = 1.0 - 2.0**-24  # the largest float32 uniform Draws can return
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
MAX_BINS = len(_DIGITS)  # one base-36 digit per draw


@dataclass(frozen=True)
class Warp:
    """The inverse-CDF warp of one batch's uniforms: each row through its component's densities."""

    knots: Tensor  # (M, D, bins + 1) float32: each density's CDF at the bin edges, 0 first and 1 last
    component: Tensor  # (N,) int64: the component of each row

    def __call__(self, uniforms: Tensor, first: int) -> Tensor:
        """(N, count) uniforms of draws first..first+count-1 -> the same shape, warped."""
        count, bins = uniforms.shape[1], self.knots.shape[2] - 1
        if first + count > self.knots.shape[1]:
            raise UserError(f"the shaders proposal has densities for {self.knots.shape[1]} draws; the program "
                            f"draws more (was it fitted for other shader parameters?)")
        cdf = self.knots[:, first:first + count].index_select(0, self.component)  # (N, count, bins + 1)
        u = uniforms.unsqueeze(-1)  # (N, count, 1)
        bin_index = (u >= cdf[..., 1:bins]).sum(-1, keepdim=True)  # (N, count, 1): as bucketize would
        low, high = cdf.gather(-1, bin_index), cdf.gather(-1, bin_index + 1)
        # A chosen bin has high > low (u < high, u >= low), so the division is safe; empty bins are skipped.
        warped = (bin_index + (u - low) / (high - low).clamp(min=1e-12)) / bins
        return warped.squeeze(-1).clamp(max=_BELOW_ONE)


@dataclass(frozen=True)
class Prepared:
    """A checked proposal as tensors on one device."""

    program_knots: Tensor  # (M, D_program, bins + 1)
    figure_knots: Tensor  # (M, D_figure, bins + 1)
    weight_edges: Tensor  # (M - 1,) cumulative weights: component m covers [edge m-1, edge m)

    def components(self, seed: int, programs: Tensor) -> Tensor:
        """(N,) int64: each program's component, from its own hash and the weights."""
        u = Draws(seed, programs, salt=COMPONENT_SALT).uniform()  # (N,)
        return (u.unsqueeze(1) >= self.weight_edges).sum(1)  # as bucketize would, elementwise

    def program_warp(self, components: Tensor) -> Warp:
        return Warp(self.program_knots, components)

    def figure_warp(self, components: Tensor) -> Warp:
        return Warp(self.figure_knots, components)


def prepare(proposal: dict, shader: dict, program_draws: int, figure_draws: int, device: torch.device) -> Prepared:
    """The proposal checked (UserError naming what is wrong) and as tensors, cached per proposal and device.

    shader: the render's parameters that change what the draws mean (layers, figure); they must be
    the ones the proposal was fitted for. Cached so that a render call makes no tensor from Python
    data once the proposal was seen (the 'where' contract), and does not parse it per chunk.
    """
    try:
        text = json.dumps(proposal, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise UserError(f"the shaders proposal must be a JSON object of numbers and lists: {error}") from None
    return _prepared(text, json.dumps(shader, sort_keys=True), program_draws, figure_draws, str(device))


@functools.lru_cache(maxsize=8)
def _prepared(text: str, shader: str, program_draws: int, figure_draws: int, device: str) -> Prepared:
    proposal, shader = json.loads(text), json.loads(shader)
    if not isinstance(proposal, dict):
        raise UserError(f"the shaders proposal must be a JSON object (format {FORMAT}), got {type(proposal).__name__}")
    if proposal.get("format") != FORMAT:
        raise UserError(f"the shaders proposal's format must be {FORMAT!r}, got {proposal.get('format')!r}")
    unknown = sorted(set(proposal) - _KEYS)
    if unknown:
        raise UserError(f"the shaders proposal has unknown keys {', '.join(unknown)}; "
                        f"valid: {', '.join(sorted(_KEYS))}")
    if proposal.get("shader") != shader:
        fitted = proposal.get("shader")
        wanted = " ".join(f"{k}={v}" for k, v in fitted.items()) if isinstance(fitted, dict) else repr(fitted)
        raise UserError(f"the shaders proposal was fitted for {wanted}; render it with those parameters "
                        f"(got {' '.join(f'{k}={v}' for k, v in shader.items())})")
    bins, spread = proposal.get("bins"), proposal.get("spread")
    if not (isinstance(bins, int) and not isinstance(bins, bool) and 2 <= bins <= MAX_BINS):
        raise UserError(f"the shaders proposal needs an integer bins in 2..{MAX_BINS}, got {bins!r}")
    if isinstance(spread, bool) or not isinstance(spread, (int, float)) or not 0 < spread <= 1:
        raise UserError(f"the shaders proposal needs a spread in (0, 1], got {spread!r}")
    weights = _weights(proposal.get("weights"))
    program = _centres(proposal.get("program_bins"), "program_bins", len(weights), program_draws, bins)
    figure = _centres(proposal.get("figure_bins"), "figure_bins", len(weights), figure_draws, bins)
    total, cumulative, edges = sum(weights), 0.0, []
    for weight in weights[:-1]:
        cumulative += weight
        edges.append(cumulative / total)
    on = torch.device(device)
    return Prepared(_knots(program, bins, spread).to(on), _knots(figure, bins, spread).to(on),
                    torch.tensor(edges, dtype=torch.float32).to(on))


def _weights(value) -> list:
    if not isinstance(value, list) or not value:
        raise UserError(f"the shaders proposal's weights must be a non-empty list, got {_brief(value)}")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item) or item < 0:
            raise UserError(f"the shaders proposal's weights must be finite numbers >= 0, got {_brief(item)}")
    if sum(value) <= 0:
        raise UserError("the shaders proposal's weights must have a positive sum")
    return value


def _centres(value, name: str, components: int, draws: int, bins: int) -> list:
    """(components, draws) centre bins from `components` strings of `draws` base-36 digits, or UserError."""
    where = f"the shaders proposal's {name}"
    if not isinstance(value, list) or len(value) != components:
        raise UserError(f"{where} must be a list of {components} strings (one per weight), got {_brief(value)}")
    centres = []
    for i, digits in enumerate(value):
        if not isinstance(digits, str) or len(digits) != draws:
            raise UserError(f"{where}[{i}] must be a string of {draws} base-36 digits (one per draw), "
                            f"got {_brief(digits)}")
        try:
            row = [int(digit, 36) for digit in digits]
        except ValueError:
            raise UserError(f"{where}[{i}] must hold base-36 digits (0-9, a-z), got {_brief(digits)}") from None
        if max(row) >= bins:
            raise UserError(f"{where}[{i}] names a bin >= bins ({bins})")
        centres.append(row)
    return centres


def encode_centres(centres: Tensor) -> list:
    """(M, D) int bins < MAX_BINS -> M strings of D base-36 digits: the JSON form of kernel centres."""
    return ["".join(_DIGITS[b] for b in row) for row in centres.tolist()]


def _brief(value) -> str:
    text = repr(value) if not isinstance(value, list) else f"a list of {len(value)}"
    return text if len(text) <= 40 else text[:37] + "..."


def _knots(centres: list, bins: int, spread: float) -> Tensor:
    """(M, D) centre bins -> (M, D, bins + 1) float32 CDFs at the bin edges, computed in float64."""
    centres = torch.tensor(centres, dtype=torch.int64)  # (M, D)
    mass = torch.full((*centres.shape, bins), spread / bins, dtype=torch.float64)
    mass.scatter_add_(2, centres.unsqueeze(-1), torch.full((*centres.shape, 1), 1 - spread, dtype=torch.float64))
    cdf = torch.cumsum(mass, -1)
    cdf = torch.cat([torch.zeros_like(cdf[..., :1]), cdf[..., :-1], torch.ones_like(cdf[..., :1])], -1)
    return cdf.to(torch.float32)
