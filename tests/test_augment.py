"""Augmentation: each kernel against torchvision on the same parameters, identities, per-sample draws, regimes."""

import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import RandAugment

from surrogate_kd.augment import (
    RANDAUGMENT_OPS,
    REGIMES,
    Regime,
    apply_grouped,
    apply_op,
    apply_ops,
    augment,
    augment_preview,
    default_strategy,
    draw_ops,
    elastic,
    elastic_displacement,
    erase,
    flip_crop,
    get_regime,
    luminance,
    mixup,
    op_magnitudes,
)
from surrogate_kd.errors import UserError
from surrogate_kd.opcount import OpCounter

SIZE = 16


def _images(channels: int, seed: int = 0) -> torch.Tensor:
    """(6, C, 16, 16) uint8 with the cases the ops care about: noise, blocks, flat, low contrast, gradient, dark."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randint(0, 256, (channels, SIZE, SIZE), generator=g, dtype=torch.uint8)
    blocks = noise.clone()
    blocks[:, 3:11, 5:13] = 200
    flat = torch.full((channels, SIZE, SIZE), 77, dtype=torch.uint8)
    low_contrast = torch.randint(100, 141, (channels, SIZE, SIZE), generator=g, dtype=torch.uint8)
    gradient = torch.arange(SIZE * SIZE, dtype=torch.uint8).view(1, SIZE, SIZE).expand(channels, -1, -1).clone()
    dark = torch.randint(0, 30, (channels, SIZE, SIZE), generator=g, dtype=torch.uint8)
    return torch.stack([noise, blocks, flat, low_contrast, gradient, dark])


def _float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0


# torchvision's RandAugment `_apply_op`, written with the public v2 functional API: (uint8 image, magnitude) -> image.
TORCHVISION_OPS = {
    "Identity": lambda im, m: im,
    "ShearX": lambda im, m: TF.affine(
        im, angle=0.0, translate=[0, 0], scale=1.0, shear=[math.degrees(math.atan(m)), 0.0], center=[0, 0]
    ),
    "ShearY": lambda im, m: TF.affine(
        im, angle=0.0, translate=[0, 0], scale=1.0, shear=[0.0, math.degrees(math.atan(m))], center=[0, 0]
    ),
    "TranslateX": lambda im, m: TF.affine(im, angle=0.0, translate=[int(m), 0], scale=1.0, shear=[0.0, 0.0]),
    "TranslateY": lambda im, m: TF.affine(im, angle=0.0, translate=[0, int(m)], scale=1.0, shear=[0.0, 0.0]),
    "Rotate": lambda im, m: TF.rotate(im, m),
    "Brightness": lambda im, m: TF.adjust_brightness(im, 1.0 + m),
    "Color": lambda im, m: TF.adjust_saturation(im, 1.0 + m),
    "Contrast": lambda im, m: TF.adjust_contrast(im, 1.0 + m),
    "Sharpness": lambda im, m: TF.adjust_sharpness(im, 1.0 + m),
    "Posterize": lambda im, m: TF.posterize(im, int(m)),
    "Solarize": lambda im, m: TF.solarize(im, m),
    "AutoContrast": lambda im, m: TF.autocontrast(im),
    "Equalize": lambda im, m: TF.equalize(im),
}
# Same grid and nearest rounding for the warps; the level maps see exact 0-255 levels here.
EXACT = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Posterize", "Solarize", "Equalize")
PARAMETER_FREE = ("Identity", "AutoContrast", "Equalize")


def _magnitudes(name: str) -> torch.Tensor:
    """Six per-image magnitudes for an op, in torchvision's units: several strengths, both signs."""
    if name == "Posterize":
        return torch.tensor([4.0, 5.0, 6.0, 7.0, 8.0, 6.0])
    if name == "Solarize":
        return torch.tensor([0.0, 100.0, 136.0, 255.0, 17.0, 200.0])
    strengths = [op_magnitudes(m, SIZE, SIZE)[0][RANDAUGMENT_OPS.index(name)].item() for m in (5, 14, 30)]
    return torch.tensor([strengths[0], -strengths[1], strengths[2], -strengths[2], strengths[1], -strengths[0]])


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", RANDAUGMENT_OPS)
def test_op_matches_torchvision_per_image(name, channels):
    images = _images(channels)
    magnitude = _magnitudes(name)
    ours = apply_op(_float(images), name, magnitude)
    reference = _float(torch.stack([TORCHVISION_OPS[name](im, float(m)) for im, m in zip(images, magnitude)]))
    if name in EXACT:  # up to float rounding (1 - x vs (255 - level) / 255)
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
    else:  # torchvision truncates to uint8 (and floors the grey it blends with), we stay in float
        torch.testing.assert_close(ours, reference, rtol=0, atol=2 / 255)


@pytest.mark.parametrize("name", [n for n in RANDAUGMENT_OPS if n not in PARAMETER_FREE])
def test_op_at_magnitude_zero_is_identity(name):
    x = _float(_images(3)).clamp(max=254 / 255)  # Solarize at m=0 inverts level 255, as torchvision's does
    neutral = op_magnitudes(0, SIZE, SIZE)[0][RANDAUGMENT_OPS.index(name)]
    torch.testing.assert_close(apply_op(x, name, neutral), x, rtol=0, atol=0)
    strong = op_magnitudes(30, SIZE, SIZE)[0][RANDAUGMENT_OPS.index(name)]
    assert not torch.equal(apply_op(x, name, strong), x)  # and the op does something when asked to


@pytest.mark.parametrize("magnitude", [0, 9, 14, 30])
def test_magnitude_table_is_torchvisions(magnitude):
    space = RandAugment()._augmentation_space(31, (SIZE, SIZE + 4))
    values, signed = op_magnitudes(magnitude, SIZE, SIZE + 4)
    assert list(space) == list(RANDAUGMENT_OPS)
    for i, (table, is_signed) in enumerate(space.values()):
        expected = float(table[magnitude]) if table.ndim > 0 else 0.0
        assert values[i].item() == pytest.approx(expected, abs=1e-5), RANDAUGMENT_OPS[i]
        assert bool(signed[i]) == is_signed


def test_magnitudes_beyond_the_scale_are_clipped_to_each_ops_maximum():
    top, _ = op_magnitudes(30, SIZE, SIZE)
    torch.testing.assert_close(op_magnitudes(45, SIZE, SIZE)[0], top)
    assert not torch.equal(op_magnitudes(29, SIZE, SIZE)[0], top)


def test_flip_crop_matches_torchvision():
    images = _images(3)
    flip = torch.tensor([True, False, True, False, True, False])
    top, left = torch.tensor([0, 8, 3, 5, 4, 1]), torch.tensor([8, 0, 2, 4, 4, 7])
    ours = flip_crop(_float(images), flip, top, left, padding=4)
    reference = []
    for image, flipped, row, col in zip(images, flip, top, left):
        image = TF.horizontal_flip(image) if flipped else image
        reference.append(TF.crop(TF.pad(image, [4]), int(row), int(col), SIZE, SIZE))
    torch.testing.assert_close(ours, _float(torch.stack(reference)), rtol=0, atol=0)


def test_flip_crop_without_flip_at_the_centre_is_identity():
    x = _float(_images(1))
    centre = torch.full((6,), 4)
    torch.testing.assert_close(flip_crop(x, torch.zeros(6, dtype=torch.bool), centre, centre, 4), x, rtol=0, atol=0)
    assert not torch.equal(flip_crop(x, torch.ones(6, dtype=torch.bool), centre, centre, 4), x)


@pytest.mark.parametrize("sigma", [1.0, 1.5])
def test_elastic_matches_torchvision(sigma):
    images = _images(3)
    noise = torch.rand(6, 2, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    displacement = elastic_displacement(noise, alpha=50.0, sigma=sigma)  # (B, H, W, 2)
    taps = int(8 * sigma + 1) | 1
    for b in range(6):  # ElasticTransform.make_params, on the same noise
        dx = TF.gaussian_blur(noise[b : b + 1, :1], [taps, taps], [sigma, sigma]) * 50.0 / SIZE
        dy = TF.gaussian_blur(noise[b : b + 1, 1:], [taps, taps], [sigma, sigma]) * 50.0 / SIZE
        torch.testing.assert_close(displacement[b : b + 1], torch.cat([dx, dy], 1).permute(0, 2, 3, 1))
    ours = elastic(_float(images), displacement)
    reference = torch.stack([TF.elastic(im, d[None], fill=0) for im, d in zip(images, displacement)])
    torch.testing.assert_close(ours, _float(reference), rtol=0, atol=0.51 / 255)  # torchvision rounds to uint8


def test_elastic_with_zero_displacement_is_identity():
    x = _float(_images(3))
    torch.testing.assert_close(elastic(x, torch.zeros(6, SIZE, SIZE, 2)), x, rtol=0, atol=1e-6)


def test_elastic_kernel_may_outgrow_a_small_image():
    field = elastic_displacement(torch.rand(2, 2, SIZE, SIZE) * 2 - 1, alpha=50.0, sigma=5.0)  # 41 taps on 16 px
    assert field.shape == (2, SIZE, SIZE, 2) and torch.isfinite(field).all() and field.abs().max() > 0


def test_erase_matches_torchvision():
    x = _float(_images(3))
    top, left = torch.tensor([1, 0, 3, 5, 0, 2]), torch.tensor([2, 0, 7, 4, 0, 9])
    height, width = torch.tensor([3, 0, 5, 9, 15, 1]), torch.tensor([4, 0, 8, 2, 15, 6])
    ours = erase(x, top, left, height, width)
    reference = [
        TF.erase(image, int(row), int(col), int(h), int(w), torch.tensor(0.0))
        for image, row, col, h, w in zip(x, top, left, height, width)
    ]
    torch.testing.assert_close(ours, torch.stack(reference), rtol=0, atol=0)
    torch.testing.assert_close(ours[1], x[1], rtol=0, atol=0)  # height 0: no box


def test_regime_without_augmentation_is_identity():
    images = _images(3)
    torch.testing.assert_close(augment(images, REGIMES["none"], torch.Generator()), _float(images), rtol=0, atol=0)


@pytest.mark.parametrize("field", ["flip_p", "elastic_p", "invert_p", "erasing_p"])
def test_probability_zero_is_identity_and_one_is_not(field):
    images = _images(3)
    off = augment(images, Regime(**{field: 0.0}), torch.Generator().manual_seed(0))
    on = augment(images, Regime(**{field: 1.0}), torch.Generator().manual_seed(0))
    torch.testing.assert_close(off, _float(images), rtol=0, atol=0)
    assert not torch.equal(on, _float(images))


@pytest.mark.parametrize("field", ["flip_p", "elastic_p", "invert_p", "erasing_p"])
def test_probability_is_per_image(field):
    batch = _images(3)[1].expand(400, -1, -1, -1)  # asymmetric blocks on noise: every op changes it
    out = augment(batch, Regime(**{field: 0.3}), torch.Generator().manual_seed(0))
    changed = (out != _float(batch)).flatten(1).any(dim=1).float().mean()
    assert 0.22 < changed < 0.38


def test_invert_with_probability_one_is_one_minus_x():
    images = _images(1)
    torch.testing.assert_close(augment(images, Regime(invert_p=1.0), torch.Generator()), 1.0 - _float(images))


def test_per_sample_parameters_differ_across_the_batch():
    image = _images(3)[1]  # one image, repeated: any difference between outputs comes from the draws
    batch = image.expand(64, -1, -1, -1)
    out = augment(batch, REGIMES["high"], torch.Generator().manual_seed(0))
    distinct = {tuple(v.flatten().tolist()) for v in out}
    assert len(distinct) > 56
    op_index, magnitude = draw_ops(512, 14, SIZE, SIZE, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert set(op_index.tolist()) == set(range(len(RANDAUGMENT_OPS)))
    rotate = magnitude[op_index == RANDAUGMENT_OPS.index("Rotate")]
    assert (rotate > 0).any() and (rotate < 0).any()  # signed ops get a random sign per image


def test_ops_apply_per_image():
    x = _float(_images(3))
    op_index = torch.tensor([RANDAUGMENT_OPS.index(n) for n in ("Rotate", "Equalize", "Identity", "Posterize")] * 2)[:6]
    magnitude = torch.tensor([14.0, 0.0, 0.0, 4.0, -14.0, 0.0])
    ours = apply_ops(x, op_index, magnitude)
    for b in range(6):
        alone = apply_op(x[b : b + 1], RANDAUGMENT_OPS[op_index[b]], magnitude[b : b + 1])
        torch.testing.assert_close(ours[b : b + 1], alone, rtol=0, atol=0)


# The regimes that group images by the op they drew (RandAugment ops, elastic): `none` never groups.
GROUPING_REGIMES = [name for name, regime in REGIMES.items() if regime.randaugment_n > 0 or regime.elastic_p > 0]


@pytest.mark.parametrize("name", GROUPING_REGIMES)
def test_gather_and_where_strategies_agree(name):
    images = _images(3).repeat(4, 1, 1, 1)
    gathered = augment(images, REGIMES[name], torch.Generator().manual_seed(3))  # the CPU default
    selected = augment(images, REGIMES[name], torch.Generator().manual_seed(3), strategy="where")
    torch.testing.assert_close(selected, gathered, rtol=0, atol=1e-6)
    assert not torch.equal(gathered, _float(images))


def test_unknown_strategy_lists_the_valid_ones():
    with pytest.raises(UserError, match="unknown augmentation strategy 'sorted'; valid: gather, where"):
        augment(_images(1), REGIMES["high"], torch.Generator(), strategy="sorted")


def _dispatched(name: str, mixup_kind: str, batch: int) -> OpCounter:
    """The aten ops of one `augment` + `mixup` at `batch` on the path CUDA takes, run on CPU after a warm-up."""
    pixels = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, SIZE, SIZE), generator=pixels, dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    strategy = default_strategy("cuda")

    def step():
        return mixup(augment(images, REGIMES[name], generator, strategy=strategy), generator,
                     per_sample=mixup_kind == "per-sample")

    step()  # the first call builds the cached constants, as the warm-up before a CUDA-graph capture does
    with OpCounter() as ops:
        step()
    return ops


@pytest.mark.parametrize("mixup_kind", ["batch", "per-sample"])
@pytest.mark.parametrize("name", list(REGIMES))
def test_accelerator_path_can_be_captured_in_a_cuda_graph(name, mixup_kind):
    """What CUDA-graph capture needs, seen on CPU: no host sync, no tensor from Python data, the
    same ops whatever the batch (a graph replays a fixed sequence of kernels)."""
    small, large = _dispatched(name, mixup_kind, 64), _dispatched(name, mixup_kind, 1024)
    assert small.host_syncs == {} and large.host_syncs == {}
    assert small.python_tensors == 0 and large.python_tensors == 0
    assert small.total == large.total, (small.ops - large.ops) + (large.ops - small.ops)


@pytest.mark.parametrize("strategy", ["gather", "where"])
def test_augment_and_mixup_draw_only_from_the_given_generator(strategy):
    torch.manual_seed(0)
    global_state = torch.get_rng_state()
    images = _images(3).repeat(4, 1, 1, 1)
    first = mixup(augment(images, REGIMES["extreme"], torch.Generator().manual_seed(5), strategy=strategy),
                  torch.Generator().manual_seed(6), per_sample=True)
    assert torch.equal(torch.get_rng_state(), global_state)
    torch.manual_seed(1)  # another global state changes nothing
    again = mixup(augment(images, REGIMES["extreme"], torch.Generator().manual_seed(5), strategy=strategy),
                  torch.Generator().manual_seed(6), per_sample=True)
    for a, b in zip(first, again):
        assert torch.equal(a, b)


@pytest.mark.parametrize("sort", [True, False])
def test_apply_grouped_runs_each_rows_own_function(sort):
    g = torch.Generator().manual_seed(0)
    x, y, scale = torch.rand(40, 3, generator=g), torch.rand(40, 3, generator=g), torch.rand(40, 1, generator=g)
    group = torch.randint(0, 4, (40,), generator=g)
    group[:3] = torch.tensor([0, 1, 3])  # every group present; group 2 has no function
    fns = {
        0: lambda x, y, s: (x + y, y),
        1: lambda x, y, s: (x * s, y - s),
        3: lambda x, y, s: (y, x),
    }
    new_x, new_y = apply_grouped(group, fns, x, y, scale, outputs=2, sort=sort)
    for b in range(40):
        row = (x[b : b + 1], y[b : b + 1], scale[b : b + 1])
        expected = fns[int(group[b])](*row) if int(group[b]) in fns else row[:2]
        torch.testing.assert_close((new_x[b : b + 1], new_y[b : b + 1]), expected, rtol=0, atol=0)
    single = apply_grouped(group, {1: lambda x, s: x * s}, x, scale, sort=sort)  # one output: a tensor
    torch.testing.assert_close(single, torch.where(group[:, None] == 1, x * scale, x), rtol=0, atol=0)
    torch.testing.assert_close(apply_grouped(torch.zeros_like(group), {1: lambda x: x + 1}, x, sort=sort), x)


def test_luminance_is_pils_gray():
    import numpy as np
    from PIL import Image

    rgb = torch.randint(0, 256, (1, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    pil = Image.fromarray(rgb[0].permute(1, 2, 0).numpy()).convert("L")
    ours = luminance(rgb.float())[0, 0]
    assert (ours - torch.tensor(np.asarray(pil), dtype=torch.float32)).abs().max() <= 0.5
    batch = torch.rand(17, 3, 5, 5)
    assert torch.equal(luminance(batch)[3:4], luminance(batch[3:4]))  # per image, whatever the batch


def test_determinism_under_a_seed():
    images = _images(3).repeat(4, 1, 1, 1)
    first = augment(images, REGIMES["extreme"], torch.Generator().manual_seed(7))
    again = augment(images, REGIMES["extreme"], torch.Generator().manual_seed(7))
    other = augment(images, REGIMES["extreme"], torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", list(REGIMES))
def test_regimes_give_float_images_in_unit_range(name, channels, device):
    images = _images(channels, seed=5).repeat(3, 1, 1, 1).to(device)
    out = augment(images, REGIMES[name], torch.Generator(device=device).manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.float32 and out.device == images.device
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.gpu
def test_cuda_matches_cpu_with_a_cpu_generator():
    images = _images(3).repeat(8, 1, 1, 1)
    on_cpu = augment(images, REGIMES["extreme"], torch.Generator().manual_seed(0))
    on_cuda = augment(images.cuda(), REGIMES["extreme"], torch.Generator().manual_seed(0))
    assert (on_cuda.cpu() - on_cpu).abs().gt(2 / 255).float().mean() < 0.01  # rare nearest-rounding flips only


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(REGIMES))
def test_cuda_graph_replays_augment_and_mixup_with_fresh_draws(name):
    images = _images(3).repeat(8, 1, 1, 1).cuda()
    generator = torch.Generator(device="cuda").manual_seed(0)
    regime = REGIMES[name]
    warmup = torch.cuda.Stream()  # the cached constants are built here, outside the capture
    warmup.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(warmup):
        for _ in range(2):
            mixup(augment(images, regime, generator), generator, per_sample=True)
    torch.cuda.current_stream().wait_stream(warmup)
    graph = torch.cuda.CUDAGraph()
    if hasattr(graph, "register_generator_state"):  # newer torch registers generators on first use
        graph.register_generator_state(generator)
    with torch.cuda.graph(graph):
        mixed, lam, perm = mixup(augment(images, regime, generator), generator, per_sample=True)
    graph.replay()
    first = lam.clone()
    graph.replay()
    assert not torch.equal(lam, first)  # each replay draws anew from the generator


@pytest.mark.parametrize("per_sample", [False, True])
def test_mixup_is_a_convex_combination_with_the_drawn_lambda(per_sample):
    x = _float(_images(3)).repeat(4, 1, 1, 1)
    mixed, lam, perm = mixup(x, torch.Generator().manual_seed(0), per_sample=per_sample)
    assert lam.shape == ((24,) if per_sample else (1,))
    assert ((lam >= 0) & (lam <= 1)).all()
    assert sorted(perm.tolist()) == list(range(24)) and not torch.equal(perm, torch.arange(24))
    weight = lam.view(-1, 1, 1, 1)
    torch.testing.assert_close(mixed, weight * x + (1 - weight) * x[perm])
    assert (mixed >= torch.minimum(x, x[perm]) - 1e-6).all() and (mixed <= torch.maximum(x, x[perm]) + 1e-6).all()
    if per_sample:
        assert lam.unique().numel() == 24


def test_unknown_regime_lists_the_valid_ones():
    with pytest.raises(UserError, match="unknown augmentation regime 'strong'; valid: extreme, high, none, standard"):
        get_regime("strong")


def test_unknown_op_lists_the_valid_ones():
    with pytest.raises(UserError, match="Identity, ShearX.*Equalize"):
        apply_op(torch.zeros(1, 1, 4, 4), "Blur", 1.0)


def test_regime_overrides_are_typed_and_checked():
    regime = get_regime("high", randaugment_n="2", invert_p="0.25")  # as they come from --set on the command line
    assert regime.randaugment_n == 2 and regime.invert_p == 0.25 and regime.elastic_p == 0.5
    yaml_values = get_regime("high", randaugment_n=3.0, randaugment_m=9)  # as YAML reads `3.0` and `9`
    assert yaml_values.randaugment_n == 3 and isinstance(yaml_values.randaugment_n, int)
    assert yaml_values.randaugment_m == 9.0 and isinstance(yaml_values.randaugment_m, float)
    with pytest.raises(UserError, match="randaugment_n, randaugment_m, flip_p"):
        get_regime("high", rand_n=2)
    with pytest.raises(UserError, match=r"flip_p must be in \[0, 1\]"):
        get_regime("high", flip_p=1.5)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"invert_p": "abc"}, "augmentation invert_p must be a number, got 'abc'"),
        ({"invert_p": True}, "augmentation invert_p must be a number, got True"),
        ({"elastic_alpha": None}, "augmentation elastic_alpha must be a number, got None"),
        ({"randaugment_m": [1, 2]}, "augmentation randaugment_m must be a number, got [1, 2]"),
        ({"randaugment_m": "nan"}, "augmentation randaugment_m must be a number, got 'nan'"),
        ({"randaugment_n": "2.5"}, "augmentation randaugment_n must be an integer, got '2.5'"),
        ({"crop_padding": False}, "augmentation crop_padding must be an integer, got False"),
    ],
)
def test_bad_regime_values_are_one_line_user_errors(override, message):
    with pytest.raises(UserError) as error:
        get_regime("standard", **override)
    assert str(error.value) == message


def test_presets_follow_the_paper():
    assert (REGIMES["standard"].randaugment_n, REGIMES["standard"].randaugment_m) == (2, 14)
    high = REGIMES["high"]
    assert (high.randaugment_n, high.elastic_p, high.elastic_alpha, high.elastic_sigma, high.invert_p) == (
        4, 0.5, 50.0, 5.0, 0.1,
    )  # fmt: skip
    extreme = REGIMES["extreme"]
    assert (extreme.randaugment_n, extreme.randaugment_m, extreme.elastic_p) == (8, 30, 0.5) and extreme.erasing_p > 0


def test_augment_rejects_float_images():
    with pytest.raises(UserError, match="uint8"):
        augment(torch.zeros(2, 3, 8, 8), REGIMES["high"], torch.Generator())


def test_augment_preview_writes_a_grid(tmp_path):
    from PIL import Image

    path = augment_preview(_images(3)[1], REGIMES["high"], n=9, out_png=tmp_path / "grid.png")
    with Image.open(path) as grid:
        assert grid.size == (3 * (SIZE + 1) + 1, 3 * (SIZE + 1) + 1)  # 3 x 3 views, 1 px apart
