"""Image sources: shapes, determinism per (seed, index), variety, the simplicity filter, errors."""

import math

import pytest
import torch
from conftest import raises_one_line

from surrogate_kd.errors import UserError
from surrogate_kd.opcount import OpCounter
from surrogate_kd.sources import SOURCES, is_simple, luminance, render, render_at
from surrogate_kd.sources import leaves as leaves_module
from surrogate_kd.sources.rng import Draws, mix64

NAMES = ["shaders", "leaves", "noise", "photos"]


@pytest.fixture(params=NAMES)
def name(request) -> str:
    if request.param == "photos":
        pytest.importorskip("skimage")
        pytest.importorskip("sklearn")
    return request.param


def test_all_sources_registered():
    assert SOURCES.names() == sorted(NAMES)


@pytest.mark.parametrize("channels", [1, 3])
def test_shape_dtype_and_range(name, channels, device):
    images = render(name, 0, 0, 6, 12, channels, device=device)
    assert images.shape == (6, channels, 12, 12)
    assert images.dtype == torch.uint8 and images.device.type == torch.device(device).type
    per_image_range = images.flatten(1).amax(1).int() - images.flatten(1).amin(1).int()
    assert (per_image_range > 20).all()  # no blank images; uint8 bounds hold by type


def test_byte_identical_whatever_the_batch(name):
    full = render(name, 7, 0, 40, 11)
    assert torch.equal(render(name, 7, 0, 40, 11), full)
    for start, stop in [(5, 8), (1, 40), (17, 18), (39, 40)]:
        assert torch.equal(render(name, 7, start, stop - start, 11), full[start:stop]), (start, stop)


# What each source's 'where' strategy must reproduce: the filter's redraws, figures and frames
# for shaders, deep rounds for leaves (30 shapes a round: images finish after 3 to 32 rounds).
SAME_BYTES_CASES = {
    "shaders": [{}, {"figure": 0.5, "frames": 3}, {"min_std": 0.2, "min_colors": 12}],
    "leaves": [{}, {"shapes": 30}, {"shapes": 5, "max_rounds": 3}],
    "noise": [{}, {"mean": [0.2, 0.5, 0.8], "std": [0.05, 0.1, 0.3]}],
    "photos": [{}],
}


@pytest.mark.parametrize("size", [11, 32])
def test_where_strategy_gives_the_bytes_of_gather(name, size):
    for params in SAME_BYTES_CASES[name]:
        per_channel = any(isinstance(value, list) for value in params.values())
        for channels in (3,) if per_channel else (1, 3):
            gather = render(name, 7, 3, 40, size, channels, strategy="gather", **params)
            where = render(name, 7, 3, 40, size, channels, strategy="where", **params)
            assert torch.equal(where, gather), (params, channels)


def _dispatched(name: str, count: int, device: str) -> OpCounter:
    with OpCounter() as ops:
        render(name, 0, 0, count, 32, device=device, strategy="where")
    return ops


def test_where_strategy_dispatches_the_same_ops_at_any_batch(name):
    """The GPU contract, seen on CPU: no host sync, no tensor from Python data, ops that do not grow with the batch.

    256 and 4,096 images are counted on the meta device, which runs the dispatch without data (a
    data-dependent step such as a host sync cannot run there at all), in a second where rendering
    4,096 leaves on this CPU takes minutes; 16 images on the CPU must dispatch exactly the ops of
    256 on meta.
    """
    render(name, 0, 0, 1, 32, strategy="where")  # photos: the atlas, built once per process and device
    render(name, 0, 0, 1, 32, device="meta", strategy="where")
    cpu, small, large = _dispatched(name, 16, "cpu"), _dispatched(name, 256, "meta"), _dispatched(name, 4096, "meta")
    assert cpu.ops == small.ops
    for ops in (cpu, small, large):
        assert not ops.host_syncs, ops.host_syncs
        assert ops.python_tensors == 0
    assert abs(large.total - small.total) <= 0.05 * small.total, (small.total, large.total)


def test_unknown_strategy_is_a_user_error():
    with pytest.raises(UserError, match="valid: gather, where"):
        render("noise", 0, 0, 1, 8, strategy="scatter")


def test_seeds_and_indices_differ(name):
    a, b = render(name, 0, 0, 16, 12), render(name, 1, 0, 16, 12)
    assert all(not torch.equal(x, y) for x, y in zip(a, b))
    flat = a.flatten(1).float()
    distinct = torch.cdist(flat, flat) > 0
    assert distinct.sum() == 16 * 15  # every pair of images in a batch differs


def test_shaders_carry_structure():
    figures = render("shaders", 0, 0, 64, 16)
    assert luminance(figures.float() / 255).flatten(1).std(1).mean() > 0.12 and not is_simple(figures).any()
    images = render("shaders", 0, 0, 64, 16, figure=0.0)  # the textures alone, without the shared black ground
    std = luminance(images.float() / 255).flatten(1).std(1)
    assert std.mean() > 0.12 and not is_simple(images).any()
    # Per-sample programs: not one pattern recoloured, so luminance maps are far apart too.
    gray = luminance(images.float() / 255).flatten(1)
    corr = torch.corrcoef(gray)[~torch.eye(64, dtype=torch.bool)]
    assert corr.abs().mean() < 0.3


def test_filter_flags_planted_simple_images():
    g = torch.Generator().manual_seed(0)
    varied = render("noise", 0, 0, 1, 16, mean=0.5, std=0.3)[0]
    constant = torch.full((3, 16, 16), 128, dtype=torch.uint8)
    two_colours = constant.clone()
    two_colours[:, :, 8:] = 0
    stray = constant.clone()  # "few coloured pixels": a flat image with one odd pixel
    stray[:, 3, 3] = torch.randint(0, 256, (3,), generator=g, dtype=torch.uint8)
    batch = torch.stack([varied, constant, two_colours, stray])
    assert is_simple(batch).tolist() == [False, True, True, True]
    assert not is_simple(batch, min_std=0.0, min_colors=1).any()  # thresholds are parameters
    assert is_simple(batch[:1], min_std=0.9).item()
    gray = batch[:, :1]
    assert is_simple(gray).tolist() == [False, True, True, True]


def test_shaders_redraw_only_rejected_renders():
    strict = dict(min_std=0.2, min_colors=12)
    first_try = render("shaders", 0, 0, 48, 12, attempts=1, **strict)
    rejected = is_simple(first_try, **strict)
    assert 0 < rejected.sum() < 48  # thresholds that bite, or this test proves nothing
    redrawn = render("shaders", 0, 0, 48, 12, attempts=8, **strict)
    assert torch.equal(redrawn[~rejected], first_try[~rejected])
    assert is_simple(redrawn, **strict).sum() < rejected.sum()


def test_shader_figures_are_shapes_on_black_and_leave_plain_renders_alone():
    plain = render("shaders", 0, 0, 200, 16, figure=0.0)
    mixed = render("shaders", 0, 0, 200, 16, figure=0.5)
    unchanged = (plain == mixed).flatten(1).all(1)
    assert 0.3 < unchanged.float().mean() < 0.7, "about half the programs become figures"
    figures = mixed[~unchanged].float()
    corners = figures[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners == 0).float().mean() > 0.5 and (plain[:, :, [0, 0, -1, -1], [0, -1, 0, -1]] == 0).float().mean() < 0.2
    assert (figures.flatten(1) > 0).float().mean(1).min() > 0.02, "every figure keeps some of its texture"
    all_figures = render("shaders", 0, 0, 64, 16, figure=1.0)
    assert not (all_figures == render("shaders", 0, 0, 64, 16, figure=0.0)).flatten(1).all(1).any()


def test_shader_frames_share_a_program():
    images = render("shaders", 0, 0, 64, 16, frames=4).float()
    same_program = (images[0::4] - images[1::4]).abs().mean()
    next_program = (images[0:60:4] - images[4:64:4]).abs().mean()
    assert same_program < 0.8 * next_program


def test_noise_follows_per_channel_statistics():
    images = render("noise", 0, 0, 64, 16, mean=[0.2, 0.5, 0.8], std=[0.05, 0.1, 0.05]).float() / 255
    assert torch.allclose(images.mean((0, 2, 3)), torch.tensor([0.2, 0.5, 0.8]), atol=0.01)
    assert torch.allclose(images.std((0, 2, 3)), torch.tensor([0.05, 0.1, 0.05]), atol=0.01)


def _reference_round(params: torch.Tensor, size: int, radii=(0.03, 1.0, 3.0)) -> torch.Tensor:
    """Brute force for one round: every pixel centre tested against every shape, the last cover wins.

    params: (N, S, 6) uniforms (centre x, centre y, radius, kind, angle, aspect) -> (N, H, W)
    topmost shape of the round per pixel, -1 where none covers it.
    """
    cx, cy, radius_u, kind_u, angle_u, aspect_u = params.unbind(-1)  # (N, S)
    kind = (kind_u * 5).long().clamp(max=4)
    radius = leaves_module.power_law_radius(radius_u, *radii)
    angle = torch.where(kind <= 1, 0.0, angle_u * 2 * math.pi)  # circles and squares upright
    aspect = torch.where(kind == 3, 0.25 + 0.75 * aspect_u, 1.0)
    centres = (torch.arange(size) + 0.5) / size
    dx = centres.view(1, 1, 1, -1) - cx[..., None, None]  # (N, S, H, W)
    dy = centres.view(1, 1, -1, 1) - cy[..., None, None]
    cos, sin = torch.cos(angle)[..., None, None], torch.sin(angle)[..., None, None]
    u, v = dx * cos + dy * sin, dy * cos - dx * sin
    r = radius[..., None, None]
    circle = u * u + v * v <= r * r
    box = (u.abs() <= r) & (v.abs() <= r * aspect[..., None, None])
    s60 = math.sqrt(3) / 2
    triangle = (v <= r / 2) & (-s60 * u - 0.5 * v <= r / 2) & (s60 * u - 0.5 * v <= r / 2)
    k = kind[..., None, None]
    inside = torch.where(k == 0, circle, torch.where(k == 4, triangle, box))
    order = torch.arange(params.shape[1]).view(1, -1, 1, 1)
    return torch.where(inside, order, -1).amax(1)  # (N, H, W)


def _reference_draws(seed: int, count: int, shapes: int, round_: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, S, 6) shape uniforms and (N, S(+1), 3) colours of a round, as leaves.py lays out its draws."""
    draws = Draws(seed, torch.arange(count), salt=round_)
    if round_ == 0:  # all at once; colour S is the background
        return draws.uniform(shapes, 6), draws.uniform(shapes + 1, 3)
    place = draws.uniform(shapes, 3)  # centre and size from (seed, i, round), the rest per shape
    order = torch.arange(shapes).repeat(count)
    per_shape = Draws(seed, torch.arange(count).repeat_interleave(shapes), salt=-(round_ * 2**32 + order) - 1)
    rest = per_shape.uniform(6).view(count, shapes, 6)  # kind, angle, aspect, colour
    return torch.cat([place, rest[..., :3]], -1), rest[..., 3:]


def _reference_leaves(seed: int, count: int, size: int, shapes: int, max_rounds: int, radii=(0.03, 1.0, 3.0)):
    """Brute force for every round of every image: round r shows only where rounds < r left a gap."""
    uncovered = torch.ones(count, size, size, dtype=torch.bool)
    for round_ in range(max_rounds):
        params, colours = _reference_draws(seed, count, shapes, round_)
        top = _reference_round(params, size, radii)
        if round_ == 0:
            colour = colours[:, shapes].view(count, 1, 1, 3).expand(-1, size, size, -1).clone()
        picked = torch.gather(colours, 1, top.clamp(min=0).flatten(1).unsqueeze(-1).expand(-1, -1, 3))
        fill = uncovered & (top >= 0)
        colour[fill] = picked.view(count, size, size, 3)[fill]
        uncovered &= top < 0
    return (colour.permute(0, 3, 1, 2) * 255).round().to(torch.uint8)


def test_leaves_match_brute_force_rasterisation():
    cases = [
        (150, 1, 24, (0.03, 1.0, 3.0)),  # one round, with gaps
        (20, 32, 24, (0.03, 1.0, 3.0)),  # many rounds beneath each other, several to a pass
        (4, 32, 40, (0.15, 0.4, 2.0)),  # large shapes: later rounds' culling must keep every one that shows
    ]
    for shapes, max_rounds, size, radii in cases:
        params = dict(zip(["min_radius", "max_radius", "exponent"], radii))
        fast = render("leaves", 4, 0, 8, size, shapes=shapes, max_rounds=max_rounds, **params)
        slow = _reference_leaves(4, 8, size, shapes, max_rounds, radii)
        assert (fast != slow).any(1).sum() <= 2  # of 8 * size^2: only centres exactly on an edge may differ


def _shows_background(images: torch.Tensor, seed: int, shapes: int) -> torch.Tensor:
    """(N, H, W) bool: pixels with the background colour (round 0's colour S) of images 0..N-1."""
    draws = Draws(seed, torch.arange(images.shape[0]))
    draws.uniform(shapes, 6)  # the shapes of round 0, then its colours
    background = (draws.uniform(shapes + 1, 3)[:, shapes] * 255).round().to(torch.uint8)
    return (images == background.view(-1, 3, 1, 1)).all(1)


def test_leaves_stack_rounds_until_covered():
    images = render("leaves", 0, 0, 64, 32)  # the defaults: 200 shapes per round, up to 32 rounds
    assert not _shows_background(images, 0, 200).any()  # no pixel left to the background
    one_round = render("leaves", 0, 0, 64, 32, max_rounds=1)
    assert _shows_background(one_round, 0, 200).flatten(1).any(1).float().mean() > 0.5  # round 0 leaves gaps
    top_layer = ~_shows_background(one_round, 0, 200).any(0)  # pixels round 0 covers in every image
    assert torch.equal(one_round[:, :, top_layer], images[:, :, top_layer])  # later rounds lie beneath
    few = render("leaves", 0, 0, 64, 32, shapes=5, max_rounds=1)
    shows = _shows_background(few, 0, 5)
    assert shows.float().mean() > 0.5  # a few shapes and no second round: mostly background
    _, uncovered = leaves_module._layers(0, torch.arange(64), 32, 3, 5, (0.03, 1.0, 3.0), 1)
    assert torch.equal(uncovered, shows)  # the internal mask is the background the images show
    _, uncovered = leaves_module._layers(0, torch.arange(64), 32, 3, 5, (0.03, 1.0, 3.0), 32)
    assert uncovered.float().mean() < shows.float().mean() / 4  # 31 rounds beneath fill most gaps


def test_leaves_rounds_are_byte_identical_whatever_the_batch():
    full = render("leaves", 7, 0, 40, 16, shapes=30)  # images finish after 3 to 32 rounds
    for start, stop in [(5, 8), (1, 40), (17, 18), (39, 40)]:
        part = render("leaves", 7, start, stop - start, 16, shapes=30)
        assert torch.equal(part, full[start:stop]), (start, stop)


def test_leaves_cover_the_canvas_with_many_colours():
    one_shape = render("leaves", 0, 0, 32, 16, shapes=1, max_rounds=1)
    colours = [torch.unique(image.flatten(1), dim=1).shape[1] for image in one_shape]
    assert max(colours) == 2 and min(colours) >= 1  # one shape on the background
    images = render("leaves", 0, 0, 8, 32)
    assert all(torch.unique(image.flatten(1), dim=1).shape[1] > 10 for image in images)


def test_photos_gray_is_luminance_of_colour():
    pytest.importorskip("skimage")
    colour = render("photos", 0, 0, 8, 16, 3).float()
    gray = render("photos", 0, 0, 8, 16, 1).float()
    assert (luminance(colour / 255) * 255 - gray).abs().max() <= 1.0


def test_draws_are_uniform_and_normal():
    draws = Draws(0, torch.arange(4000))
    u, z = draws.uniform(5), draws.normal(5)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02
    assert torch.unique(mix64(torch.arange(10000))).numel() == 10000


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: render("nope", 0, 0, 1, 8), "valid: leaves, noise, photos, shaders"),
        (lambda: render("noise", 0, 0, 1, 0), "image size"),
        (lambda: render("noise", 0, 0, 1, -3), "image size"),
        (lambda: render("noise", 0, 0, 1, 8, channels=2), "channels must be 1 or 3"),
        (lambda: render("noise", 0, 0, -1, 8), "image count"),
        (lambda: render("noise", 0, -5, 1, 8), "start index"),
        (lambda: render("noise", "zero", 0, 1, 8), "seed"),
        (lambda: render("noise", 0, 0, 1, 8, colour=1), "no parameter colour; valid: mean, std"),
        (lambda: render("noise", 0, 0, 1, 8, mean=[0.1, 0.2]), "1 or 3 values"),
        (lambda: render("leaves", 0, 0, 1, 8, shapes=0), "shapes >= 1"),
        (lambda: render("leaves", 0, 0, 1, 8, max_rounds=0), "max_rounds >= 1"),
        (lambda: render("shaders", 0, 0, 1, 8, layers=0), "layers >= 1"),
        (lambda: render("shaders", 0, 0, 1, 8, figure=1.5), "0 <= figure <= 1"),
        (lambda: render("leaves", 0, 0, 1, 8, min_radius="abc"),
         "source 'leaves' parameter min_radius must be a number, got 'abc'"),
        (lambda: render("leaves", 0, 0, 1, 8, shapes=2.5), "parameter shapes must be an integer, got 2.5"),
        (lambda: render("leaves", 0, 0, 1, 8, max_rounds=True), "parameter max_rounds must be an integer, got True"),
        (lambda: render("shaders", 0, 0, 1, 8, figure=None), "parameter figure must be a number, got None"),
        (lambda: render("shaders", 0, 0, 1, 8, min_std=False), "parameter min_std must be a number, got False"),
        (lambda: render("noise", 0, 0, 1, 8, mean="grey"), "mean must be a number or a list of numbers, got 'grey'"),
        (lambda: render("noise", 0, 0, 1, 8, std=[0.1, "x", 0.2]), "std must be a number or a list of numbers"),
        (lambda: render("photos", 0, 0, 1, 8, min_scale=[0.5]), "parameter min_scale must be a number, got [0.5]"),
    ],
)
def test_bad_arguments_are_one_line_user_errors(call, message):
    with pytest.raises(UserError) as error:
        call()
    assert message in str(error.value) and "\n" not in str(error.value)


def test_parameters_of_the_declared_types_are_accepted():
    # As YAML reads them from --param: ints where floats are declared, lists for per-channel values.
    assert render("leaves", 0, 0, 2, 8, shapes=20, min_radius=1, max_radius=1, exponent=2).shape == (2, 3, 8, 8)
    assert render("noise", 0, 0, 2, 8, mean=[0, 0.5, 1], std=(0.1,)).shape == (2, 3, 8, 8)
    assert torch.equal(render("shaders", 0, 0, 2, 8, figure=1), render("shaders", 0, 0, 2, 8, figure=1.0))


@pytest.mark.gpu
def test_cuda_renders_the_same_distribution(name):
    cpu, cuda = render(name, 0, 0, 256, 16), render(name, 0, 0, 256, 16, device="cuda").cpu()
    assert cuda.shape == cpu.shape and cuda.dtype == torch.uint8
    assert (cuda != cpu).any(1).float().mean() < 0.05  # same programs; rare last-bit flips only
    assert abs(cuda.float().std() - cpu.float().std()) < 2.0


@pytest.mark.parametrize("source", ["shaders", "leaves", "noise", "photos"])
def test_render_at_any_indices_gives_renders_bytes(source):
    """A selection (any order, repeats) rendered in one pass: image i is the same bytes as in `render`."""
    indices = torch.tensor([17, 3, 3, 40, 0, 17])
    assert torch.equal(render_at(source, 5, indices, 16, 3), render(source, 5, 0, 41, 16, 3)[indices])


def test_render_at_refuses_negative_indices_in_one_line():
    raises_one_line(lambda: render_at("noise", 0, torch.tensor([1, -2]), 8, 1), "non-negative integers")
