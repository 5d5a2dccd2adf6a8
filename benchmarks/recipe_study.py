"""Distill one teacher through one source under recipe variants: an experiment (surrogate_kd/experiment/).

This is how the demo's recipe was chosen (docs/demo.md): each variant is the demo's student recipe
with a few fields changed, one cell of an experiment whose results (results.csv, results.md) land in
--out; finished variants are reused, so a study can be extended or resumed. The same study as a
config: `surrogate-kd experiment` with `teachers: {teacher: {checkpoint: ...}}` and `variants:`.

    python benchmarks/recipe_study.py --teacher runs/demo/teacher/model.safetensors \
        --source shaders --vary tau=8 --vary tau=20 --vary mixup=true --out runs/recipe-study
"""

import argparse
import json
import re

import torch

from surrogate_kd.config import parse_assignments
from surrogate_kd.demo import DemoRecipe
from surrogate_kd.experiment import experiment, recipe_fields


def variant_fields(variant: str) -> dict:
    """'tau=8,source.figure=0' -> the variant's fields ({'tau': 8, 'params': {'figure': 0}})."""
    fields, params = {}, {}
    for item in [] if variant == "base" else variant.split(","):
        [(key, value)] = parse_assignments([item], "--vary")
        if key.startswith("source."):  # a parameter of the synthetic source, e.g. source.figure=0
            params[key.split(".", 1)[1]] = value
        else:
            fields[key] = value
    if any(k.startswith("boundary_") for k in fields):
        fields.setdefault("boundary_fraction", 0.1)
    return fields | ({"params": params} if params else {})


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--source", default="shaders", help="shaders, leaves, noise, photos, or original")
    p.add_argument("--vary", action="append", default=[],
                   help="a variant: comma-separated key=value over TrainConfig fields, or candidates=/per_class=/"
                        "boundary_fraction=/boundary_targets=/boundary_every_epoch=/augment.FIELD= (an "
                        "augmentation override)/source.PARAM= (a source parameter); repeatable; 'base' = the recipe")
    p.add_argument("--out", default="runs/recipe-study")
    p.add_argument("--jobs", type=int, default=1, help="variants trained at once")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = DemoRecipe()
    base_cfg = recipe.student_original if args.source == "original" else recipe.student
    variants = {re.sub(r"[^A-Za-z0-9_+-]", "", v.replace(",", "_")) or "base": variant_fields(v)
                for v in args.vary or ["base"]}
    config = {"name": f"recipe study: {args.source}", "out": args.out, "eval_data": "fashion-mnist:test",
              "teachers": {"teacher": {"checkpoint": args.teacher}}, "students": [recipe.student_arch],
              "sets": {args.source: {"data": "fashion-mnist" if args.source == "original" else args.source,
                                     "candidates": recipe.candidates, "per_class": recipe.per_class}},
              "recipe": recipe_fields(base_cfg), "variants": variants}
    report = experiment(config, jobs=args.jobs)
    for row in report["results"]:
        print(json.dumps({"source": args.source, "variant": row["variant"], "test_accuracy": row["test_accuracy"],
                          "relative_entropy": row["relative_entropy"], "seconds": row["seconds"],
                          "threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
    main()
