"""How grainy a teacher's pixel gradient is: why refinement's steps can be smoothed (--refine-blur).

    python benchmarks/refine_grain.py --teacher runs/study/teacher-corruptions/model.safetensors
    python benchmarks/refine_grain.py --teacher T --blur 1,2 --images 256 --seed 0

On a batch of the first `images` plain shader images at the teacher's size, labelled with the
teacher's own classes, it takes the gradient of refinement's two terms with respect to the pixels
(refine.py: the cross-entropy of those classes, and 0.05 x the distance of every BatchNorm input's
batch moments from the running statistics) and prints, for each term and for the images
themselves, the grain: the mean absolute difference between neighbouring pixels (down and across,
summed) over the mean absolute value (refine.grain). Smooth images score below 1; independent pixel
noise about 2.8; a checkerboard 4. `distill` decides whether to refine by default from the
statistics term's figure on 64 images (refine.teacher_grain; `--images 64` here prints the same
number). Each --blur sigma adds the same figure after refine.py's Gaussian. Prints
one JSON object.
"""

from __future__ import annotations

import argparse
import json

import torch

from surrogate_kd.errors import UserError
from surrogate_kd.refine import _gaussian_blur, grain, require_refinable, term_gradients
from surrogate_kd.sources import render
from surrogate_kd.teacher import load_teacher


def _sigmas(text: str) -> list[float]:
    try:
        sigmas = [float(part) for part in text.split(",")]
    except ValueError:
        sigmas = []
    if not sigmas or any(sigma <= 0 for sigma in sigmas):
        raise argparse.ArgumentTypeError(f"expected positive sigmas separated by commas, got '{text}'")
    return sigmas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--blur", default="1", type=_sigmas, help="comma-separated Gaussian sigmas in pixels")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:  # a wrong path or a teacher without BatchNorm: one line, as the CLI says it
        teacher = load_teacher(args.teacher).eval()
        require_refinable(teacher)
    except UserError as error:
        parser.exit(2, f"refine_grain: error: {error}\n")
    spec = teacher.spec
    x = render("shaders", args.seed, 0, args.images, spec.size, spec.channels).float().div(255)
    terms = term_gradients(teacher, x)
    images = x - x.mean((2, 3), keepdim=True)  # each image's own mean taken out, like a gradient's

    def grains(z: dict) -> dict:
        return {name: round(grain(g), 3) for name, g in z.items()}

    out = {"teacher": args.teacher, "images": args.images, "image_grain": round(grain(images), 3),
           "gradient_grain": grains(terms)}
    for sigma in args.blur:
        blur = _gaussian_blur(sigma, spec.channels, torch.device("cpu"))
        out[f"gradient_grain_blur_{sigma:g}"] = grains({name: blur(g) for name, g in terms.items()})
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
