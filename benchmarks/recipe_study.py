"""Distill one teacher through one source under recipe variants; one JSON line per run.

This is how the demo's recipe was chosen (docs/demo.md): each run is `api.distill` with the
demo's recipe and a few fields changed, evaluated on Fashion-MNIST's test split.

    python benchmarks/recipe_study.py --teacher runs/demo/teacher/model.safetensors \
        --source shaders --vary tau=8 --vary tau=20 --vary mixup=true --out runs/recipe-study
"""

import argparse
import json
import time
from pathlib import Path

import torch

from surrogate_kd.api import distill
from surrogate_kd.config import parse_assignments
from surrogate_kd.demo import DemoRecipe


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--source", default="shaders", help="shaders, leaves, noise, photos, or original")
    p.add_argument("--vary", action="append", default=[],
                   help="a variant: comma-separated key=value over TrainConfig fields, or candidates=/per_class=/"
                        "boundary_fraction=/boundary_targets=/boundary_every_epoch=/augment.FIELD= (an "
                        "augmentation override)/source.PARAM= (a source parameter); repeatable; 'base' = the recipe")
    p.add_argument("--out", default="runs/recipe-study")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = DemoRecipe()
    base_cfg = recipe.student_original if args.source == "original" else recipe.student
    data = "fashion-mnist" if args.source == "original" else args.source
    for variant in args.vary or ["base"]:
        options = {"candidates": recipe.candidates, "per_class": recipe.per_class}  # distill's own keyword arguments
        settings, source_params = [], {}  # TrainConfig fields and augment.FIELD: what --set takes
        for item in [] if variant == "base" else variant.split(","):
            [(key, value)] = parse_assignments([item], "--vary")
            if key in ("candidates", "per_class", "boundary_fraction", "boundary_targets", "boundary_every_epoch"):
                options[key] = value
            elif key.startswith("source."):  # a parameter of the synthetic source, e.g. source.figure=0
                source_params[key.split(".", 1)[1]] = value
            else:
                settings.append(item)
        if any(k.startswith("boundary_") for k in options):
            options.setdefault("boundary_fraction", 0.1)
        name = f"{args.source}-{variant.replace(',', '_').replace('=', '')}"
        started = time.perf_counter()
        result = distill(args.teacher, data, Path(args.out) / name, recipe.student_arch, config=base_cfg,
                         settings=settings, eval_data="fashion-mnist:test", params=source_params or None, **options)
        row = {"source": args.source, "variant": variant, "test_accuracy": round(result["test_accuracy"], 4),
               "relative_entropy": result["relative_entropy"], "seconds": round(time.perf_counter() - started, 1),
               "threads": torch.get_num_threads()}
        print(json.dumps(row), flush=True)
        with open(Path(args.out) / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
