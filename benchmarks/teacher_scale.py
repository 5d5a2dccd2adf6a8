"""How large and how peaked a teacher's logits are on a synthetic source: a property known before distilling.

Studies 12 and 14 (docs/recipe.md) found the best KD target (tau 3, tau 4, the logits themselves)
differs between teachers; this prints, per teacher, the spread of its logits over plain renders of
a source (the standard deviation over classes, per image: median and 90th percentile) and its mean
top softmax at tau 1 and 3, so a study can set them beside its cells.

    python benchmarks/teacher_scale.py runs/study/teacher-dots runs/study/teacher-corruptions
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from surrogate_kd.checkpoint import load_model  # noqa: E402
from surrogate_kd.errors import UserError  # noqa: E402
from surrogate_kd.runtime import predict  # noqa: E402
from surrogate_kd.sources import render  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("teachers", nargs="+", help="teacher checkpoints or run directories holding model.safetensors")
    parser.add_argument("--source", default="shaders", help="the synthetic source rendered (plain, not adapted)")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=99, help="the source's seed: apart from the runs' seed 0")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.exit(2, f"teacher_scale: error: --images must be >= 1, got {args.images}\n")
    torch.set_num_threads(args.threads)
    print("| teacher | logit std, median | logit std, 90th percentile | top softmax, tau 1 | top softmax, tau 3 |")
    print("|---|---|---|---|---|")
    for name in args.teachers:
        path = Path(name)
        try:
            teacher = load_model(path / "model.safetensors" if path.is_dir() else path).eval()
            spec = teacher.spec
            images = render(args.source, args.seed, 0, args.images, spec.size, spec.channels)
        except UserError as error:
            parser.exit(2, f"teacher_scale: error: {error}\n")
        logits = predict(teacher, images).float()
        spread = logits.std(1)
        top = [torch.softmax(logits / tau, 1).amax(1).mean().item() for tau in (1.0, 3.0)]
        print(f"| {name} | {spread.median():.2f} | {spread.quantile(0.9):.2f} | {top[0]:.3f} | {top[1]:.3f} |")


if __name__ == "__main__":
    main()
