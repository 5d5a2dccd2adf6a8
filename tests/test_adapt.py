"""Adaptive shaders: a proposal fitted to a teacher evens out its classes, renders reproducibly, and is checked."""

import json

import pytest
import torch
from torch import nn

from conftest import raises_one_line
from surrogate_kd.adapt import fit_proposal, shader_params
from surrogate_kd.config import InputSpec
from surrogate_kd.models import ImageClassifier
from surrogate_kd.opcount import OpCounter
from surrogate_kd.sources import render
from surrogate_kd.sources.proposal import FORMAT
from surrogate_kd.sources.shaders import draw_counts
from surrogate_kd.teacher import class_histogram, relative_entropy

BRIGHTNESS_SPEC = InputSpec(16, 1, (0.0,), (1.0,), ("dark", "dim", "mid", "bright"))


class Brightness(nn.Module):
    """Logits: the closest of four mean intensities wins. Plain shaders (figures on black) are
    mostly dark, so 'bright' (mean 0.6) gets about 3% of them: an unbalanced teacher."""

    def __init__(self):
        super().__init__()
        self.centres = nn.Parameter(torch.tensor([0.05, 0.15, 0.3, 0.6]), requires_grad=False)

    def forward(self, x):  # (B, 1, H, W) in [0, 1] -> (B, 4)
        return -200 * (x.mean((1, 2, 3)).unsqueeze(1) - self.centres) ** 2


@pytest.fixture(scope="module")
def teacher() -> ImageClassifier:
    return ImageClassifier(Brightness(), "brightness", BRIGHTNESS_SPEC)


@pytest.fixture(scope="module")
def proposal(teacher) -> dict:
    return fit_proposal(teacher, rounds=3, per_round=400, elites=10)


def _render(proposal, seed, start, count, size, channels=3, **options):
    return render("shaders", seed, start, count, size, channels, **options, **shader_params(proposal))


def _histogram(teacher, images) -> torch.Tensor:
    with torch.no_grad():
        return class_histogram(teacher(images.float() / 255).argmax(1), teacher.num_classes)


def test_proposal_evens_out_an_unbalanced_teacher(teacher, proposal):
    plain = _histogram(teacher, render("shaders", 0, 0, 2000, 16, 1))
    adaptive = _histogram(teacher, _render(proposal, 0, 0, 2000, 16, 1))
    assert relative_entropy(plain) < 0.9 and plain[3] < 0.05 * 2000  # the premise: 'bright' is rare
    assert relative_entropy(adaptive) > 0.97, adaptive
    assert adaptive.min() > 0.15 * 2000, adaptive


def test_adaptive_images_are_byte_identical_whatever_the_batch(proposal):
    full = _render(proposal, 5, 0, 40, 12)
    for start, stop in [(3, 9), (17, 18), (30, 40)]:
        assert torch.equal(_render(proposal, 5, start, stop - start, 12), full[start:stop])
    assert torch.equal(_render(proposal, 5, 0, 40, 12, strategy="where"), full)
    assert torch.equal(_render(proposal, 5, 0, 40, 12, channels=1, attempts=3, min_std=0.2),
                       _render(proposal, 5, 0, 40, 12, channels=1, attempts=3, min_std=0.2, strategy="where"))
    plain = render("shaders", 5, 0, 40, 12, 3, figure=proposal["shader"]["figure"])
    assert (plain != full).flatten(1).any(1).all()  # the proposal changes every program


def test_proposal_round_trips_through_json(proposal):
    again = json.loads(json.dumps(proposal))
    assert again == proposal
    assert torch.equal(_render(again, 1, 0, 16, 12), _render(proposal, 1, 0, 16, 12))
    assert proposal["format"] == FORMAT and proposal["about"]["forward_passes"] == 4 * 400
    assert len(json.dumps(proposal)) < 1.5 * 40 * 86  # 40 kernels of 86 draws: about a character a draw


def test_fitting_is_reproducible(teacher, proposal):
    assert fit_proposal(teacher, rounds=3, per_round=400, elites=10) == proposal


def test_where_strategy_keeps_its_contract_with_a_proposal(proposal):
    """Fixed ops whatever the batch, no host sync, no tensor from Python data (once the proposal was seen)."""
    for device in ("cpu", "meta"):
        _render(proposal, 0, 0, 1, 32, device=device, strategy="where")
    counts = []
    for count, device in [(16, "cpu"), (256, "meta"), (4096, "meta")]:
        with OpCounter() as ops:
            _render(proposal, 0, 0, count, 32, device=device, strategy="where")
        assert not ops.host_syncs and ops.python_tensors == 0, (ops.host_syncs, ops.python_tensors)
        counts.append(ops)
    assert counts[0].ops == counts[1].ops
    assert abs(counts[2].total - counts[1].total) <= 0.05 * counts[1].total


def _valid() -> dict:
    program, figure = draw_counts(3)
    return {"format": FORMAT, "shader": {"layers": 3, "figure": 1.0}, "bins": 4, "spread": 0.5, "weights": [1.0, 1.0],
            "program_bins": ["0123" * (program // 4) + "0" * (program % 4)] * 2, "figure_bins": ["3" * figure] * 2}


def _with(**changes) -> dict:
    return {**_valid(), **changes}


@pytest.mark.parametrize("proposal, fragment", [
    ("rounds=4", "JSON object"),
    (_with(format="v0"), "format must be 'shaders-proposal/1'"),
    (_with(shader={"layers": 2, "figure": 1.0}), "fitted for figure=1.0 layers=2; render it with those"),
    (_with(shader={"layers": 3, "figure": 0.5}), "got figure=1.0 layers=3"),
    (_with(bins=1), "bins in 2..36"),
    (_with(spread=0), "spread in (0, 1]"),
    (_with(weights=[]), "weights must be a non-empty list"),
    (_with(weights=[0, 0]), "positive sum"),
    (_with(weights=[1, -1]), "finite numbers >= 0"),
    (_with(program_bins=[]), "program_bins must be a list of 2 strings"),
    (_with(figure_bins=["3" * 9, "3" * 8]), "figure_bins[1] must be a string of 9 base-36 digits"),
    (_with(figure_bins=["3" * 9, "3" * 8 + "?"]), "must hold base-36 digits"),
    (_with(figure_bins=["3" * 9, "3" * 8 + "4"]), "names a bin >= bins (4)"),
    (_with(colour=[1]), "unknown keys colour"),
    ({**_valid(), "weights": [1.0, float("nan")]}, "JSON object of numbers"),
])
def test_invalid_proposals_are_one_line_user_errors(proposal, fragment):
    raises_one_line(lambda: render("shaders", 0, 0, 2, 8, proposal=proposal), fragment)


def test_a_kernel_keeps_its_centre_bins():
    """A sample of a kernel draws each uniform from its centre's bin, bar a share `spread` drawn afresh."""
    from surrogate_kd.sources.shaders import first_renders

    proposal = _with(spread=0.1, weights=[1.0], program_bins=["2" * draw_counts(3)[0]], figure_bins=["1" * 9])
    _, uniforms, _ = first_renders(0, torch.arange(500), 8, 1, 3, 1.0, proposal)
    in_bin = torch.cat([(uniforms[:, :77] * 4).floor() == 2, (uniforms[:, 77:] * 4).floor() == 1], 1)
    assert abs(in_bin.float().mean() - (0.9 + 0.1 / 4)) < 0.01


def test_score_measures_shaders_as_distill_renders_them(teacher):
    """`score` steers shaders like `distill` does (default for <= 100 classes), so its relative
    entropy is the one the run will get; --no-adapt scores plain shaders."""
    from surrogate_kd.errors import UserError
    from surrogate_kd.score import score

    [steered] = score(teacher, ["shaders"], candidates=512, device="cpu")
    [plain] = score(teacher, ["shaders"], candidates=512, device="cpu", adapt=False)
    assert (steered["data"], plain["data"]) == ("shaders (adaptive)", "shaders")
    assert steered["relative_entropy"] > plain["relative_entropy"] + 0.1
    with pytest.raises(UserError, match="none of noise is shaders"):
        score(teacher, ["noise"], candidates=64, device="cpu", adapt=True)


def test_select_draws_the_shaders_distill_would(teacher, tmp_path):
    """`select --data shaders` steers the programs like `distill` (default for <= 100 classes): its
    pool has the candidates' evener histogram; --no-adapt selects from plain shaders."""
    from surrogate_kd.errors import UserError
    from surrogate_kd.pool import Pool
    from surrogate_kd.select import select

    steered = select(teacher, "shaders", tmp_path / "steered", per_class=64, candidates=512, device="cpu")
    plain = select(teacher, "shaders", tmp_path / "plain", per_class=64, candidates=512, device="cpu", adapt=False)
    assert steered["adapt"]["forward_passes"] > 0 and "adapt" not in plain
    assert steered["relative_entropy_candidates"] > plain["relative_entropy_candidates"] + 0.1
    assert steered["replicated"] < plain["replicated"], "fewer copies of the rare classes' images"
    assert Pool(tmp_path / "steered").manifest["params"]["adapt"]["forward_passes"] > 0, "recorded in the pool"
    with pytest.raises(UserError, match="'noise' is not shaders"):
        select(teacher, "noise", tmp_path / "noise", per_class=8, candidates=64, device="cpu", adapt=True)
