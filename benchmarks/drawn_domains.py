"""The studies' drawn domains: images drawn from a few random parameters, with no photo in them.

benchmarks/domains.py lists every domain and writes them; these are the ones it draws (shapes,
letters, dots, spectra, gratings), each a function of (seed, train, test) -> {"train": (images,
labels), "test": ...} with images uint8 and every class equally often.
"""

import numpy as np


def _shrink_with_noise(image, size: int, rng: np.random.Generator) -> np.ndarray:
    """An image drawn at a multiple of `size`, shrunk to it (smooth edges) with pixel noise of a random strength."""
    from PIL import Image

    small = np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.float64)
    return np.clip(small + rng.normal(0, rng.uniform(0, 12), small.shape), 0, 255).round().astype(np.uint8)


def _drawn_splits(draw, classes: int, seed: int, train: int, test: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Train and test splits of a drawn domain, balanced over `classes`: `draw(label, rng)` makes one image."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, count in (("train", train), ("test", test)):
        labels = np.arange(count, dtype=np.int64) % classes
        rng.shuffle(labels)
        out[split] = (np.stack([draw(int(label), rng) for label in labels]), labels)
    return out


SHAPES = ("disc", "ring", "square", "frame", "triangle", "diamond", "pentagon", "star", "plus", "crescent")


def _polygon(corners: int, radius: float, angle: float, centre: tuple[float, float], inner: float = 1.0) -> list:
    """Corners of a regular polygon (or, with inner < 1, a star alternating radius and inner*radius)."""
    points = []
    steps = corners * (2 if inner < 1 else 1)
    for k in range(steps):
        r = radius * (inner if k % 2 else 1.0) if inner < 1 else radius
        a = angle + 2 * np.pi * k / steps
        points.append((centre[0] + r * np.cos(a), centre[1] + r * np.sin(a)))
    return points


def _shape(kind: int, rng: np.random.Generator, size: int = 28) -> np.ndarray:
    """One image of shape class `kind`: drawn at 4x and downsampled (smooth edges), random place,
    size, angle, grey levels and pixel noise."""
    from PIL import Image, ImageDraw

    scale = 4
    big = size * scale
    background, foreground = rng.uniform(0, 110), rng.uniform(145, 255)
    if rng.random() < 0.5:
        background, foreground = 255 - background, 255 - foreground  # dark on light as often as light on dark
    image = Image.new("L", (big, big), int(background))
    draw = ImageDraw.Draw(image)
    radius = rng.uniform(0.22, 0.42) * big
    centre = tuple(rng.uniform(radius, big - radius, size=2))
    angle = rng.uniform(0, 2 * np.pi)
    width = max(2, int(rng.uniform(0.1, 0.2) * radius))
    fill, box = int(foreground), [centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius]
    name = SHAPES[kind]
    if name == "disc":
        draw.ellipse(box, fill=fill)
    elif name == "ring":
        draw.ellipse(box, outline=fill, width=width)
    elif name in ("square", "frame"):
        corners = _polygon(4, radius, angle, centre)
        draw.polygon(corners, fill=fill) if name == "square" else draw.line(corners + corners[:1], fill=fill, width=width)
    elif name == "triangle":
        draw.polygon(_polygon(3, radius, angle, centre), fill=fill)
    elif name == "diamond":  # a rhombus: a square squashed along one diagonal
        points = [(centre[0] + radius * np.cos(angle + k * np.pi / 2) * (1.0 if k % 2 == 0 else 0.5),
                   centre[1] + radius * np.sin(angle + k * np.pi / 2) * (1.0 if k % 2 == 0 else 0.5)) for k in range(4)]
        draw.polygon(points, fill=fill)
    elif name == "pentagon":
        draw.polygon(_polygon(5, radius, angle, centre), fill=fill)
    elif name == "star":
        draw.polygon(_polygon(5, radius, angle, centre, inner=0.45), fill=fill)
    elif name == "plus":
        for a in (angle, angle + np.pi / 2):
            end = (radius * np.cos(a), radius * np.sin(a))
            draw.line([(centre[0] - end[0], centre[1] - end[1]), (centre[0] + end[0], centre[1] + end[1])],
                      fill=fill, width=2 * width)
    else:  # crescent: a disc with a shifted disc of the background cut out of it
        draw.ellipse(box, fill=fill)
        shift = 0.45 * radius
        cut = (centre[0] + shift * np.cos(angle), centre[1] + shift * np.sin(angle))
        draw.ellipse([cut[0] - radius, cut[1] - radius, cut[0] + radius, cut[1] + radius], fill=int(background))
    return _shrink_with_noise(image, size, rng)


def shapes(seed: int, train: int = 6000, test: int = 2000) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return _drawn_splits(_shape, len(SHAPES), seed, train, test)


LETTERS = "ABEGKMRSWZ"
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _letter(kind: int, rng: np.random.Generator, size: int = 32, letters: str = LETTERS) -> np.ndarray:
    """One RGB image of letter class `kind`: drawn at 4x in Pillow's built-in font (the same on
    every machine), random size, place, angle, colours (at least 80 grey levels apart) and noise."""
    from PIL import Image, ImageDraw, ImageFont

    scale = 4
    big = size * scale
    while True:
        background, foreground = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        if abs(background.mean() - foreground.mean()) >= 80:
            break
    image = Image.new("RGB", (big, big), tuple(int(c) for c in background))
    font = ImageFont.load_default(size=int(rng.uniform(0.5, 0.85) * big))
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), letters[kind], font=font)
    slack_x, slack_y = max(big - (right - left), 1), max(big - (bottom - top), 1)
    position = (rng.uniform(0.2, 0.8) * slack_x - left, rng.uniform(0.2, 0.8) * slack_y - top)
    draw.text(position, letters[kind], font=font, fill=tuple(int(c) for c in foreground))
    image = image.rotate(rng.uniform(-25, 25), resample=Image.BILINEAR, fillcolor=tuple(int(c) for c in background))
    return _shrink_with_noise(image, size, rng)


def letters(seed: int, train: int = 6000, test: int = 2000) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return _drawn_splits(_letter, len(LETTERS), seed, train, test)


def alphabet(seed: int, train: int = 13000, test: int = 2600) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`letters` over all 26 capitals: a teacher of more than ten classes (study 17)."""
    return _drawn_splits(lambda kind, rng: _letter(kind, rng, letters=ALPHABET), len(ALPHABET), seed, train, test)


def _dots(count: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """One grey image of `count` discs that do not touch, drawn at 4x: random radii, places, levels, noise."""
    from PIL import Image, ImageDraw

    scale = 4
    big = size * scale
    background = rng.uniform(0, 100)
    if rng.random() < 0.5:
        background = 255 - background
    image = Image.new("L", (big, big), int(background))
    draw = ImageDraw.Draw(image)
    placed = []
    while len(placed) < count:
        radius = rng.uniform(0.04, 0.08) * big
        centre = rng.uniform(radius + 2, big - radius - 2, size=2)
        if all(np.hypot(*(centre - c)) > radius + r + 4 for c, r in placed):
            placed.append((centre, radius))
    for centre, radius in placed:
        level = rng.uniform(150, 255) if background < 128 else rng.uniform(0, 105)
        draw.ellipse([centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius], fill=int(level))
    return _shrink_with_noise(image, size, rng)


def dots(seed: int, train: int = 6000, test: int = 2000) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return _drawn_splits(lambda label, rng: _dots(label + 1, rng), 10, seed, train, test)


def _spectral_noise(label: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """Grey noise whose power falls as 1/f^(label / 2), at a random mean and contrast."""
    fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
    frequency = np.hypot(fy, fx)
    frequency[0, 0] = 1.0  # the mean is set below, not by the spectrum
    amplitude = frequency ** (-label / 4)  # power 1/f^a is amplitude 1/f^(a/2); a = label / 2
    amplitude[0, 0] = 0.0
    phases = np.exp(2j * np.pi * rng.random((size, size)))
    field = np.fft.ifft2(amplitude * phases).real
    field = (field - field.mean()) / (field.std() + 1e-12)
    image = rng.uniform(0.3, 0.7) + rng.uniform(0.06, 0.2) * field
    return np.clip(image * 255, 0, 255).round().astype(np.uint8)


def spectra(seed: int, train: int = 8000, test: int = 2000) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return _drawn_splits(_spectral_noise, 10, seed, train, test)


GRATING_STEP = 22.5  # degrees between classes: 0, 22.5, 45, 67.5 and 90 degrees from horizontal


def _grating(label: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A grey sine grating whose stripes lie `label` x GRATING_STEP degrees (jittered by up to a quarter
    step) from horizontal, leaning either way: a left-right mirror (every recipe's flip) turns an
    angle a into 180 - a, so both share a class. Random wavelength (4 to 12 pixels), phase, mean,
    contrast and noise."""
    degrees = (label + rng.uniform(-0.25, 0.25)) * GRATING_STEP * rng.choice([-1, 1])
    angle = np.deg2rad(90 + degrees)  # the direction across the stripes
    wavelength, phase = rng.uniform(4, 12), rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    wave = np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / wavelength + phase)
    image = rng.uniform(0.3, 0.7) + rng.uniform(0.1, 0.3) * wave
    image = image * 255 + rng.normal(0, rng.uniform(0, 20), image.shape)
    return np.clip(image, 0, 255).round().astype(np.uint8)


def gratings(seed: int, train: int = 8000, test: int = 2000) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return _drawn_splits(_grating, int(90 / GRATING_STEP) + 1, seed, train, test)
