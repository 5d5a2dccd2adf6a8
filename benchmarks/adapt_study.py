"""Plain vs adaptive shaders on each teacher: coverage of its classes before balancing, and the search's cost.

For every teacher: `--candidates` shader images (seed 0) rendered plain and with a proposal from
`adapt.fit_proposal` (options `--set key=value`, e.g. --set rounds=8), the relative entropy of the
teacher's top-1 histogram over them, the rarest class's count, and the distinct images per class
after balancing to `--per-class` with the library's own selection (`select.balanced_indices`).
The search's cost: seconds on this machine and teacher forward passes. Prints a markdown table;
`--save DIR` also writes each proposal as DIR/<teacher>.json.

    python benchmarks/adapt_study.py --threads 1 runs/demo/teacher runs/study/teacher-mnist-5k
"""

import argparse
import json
import time
from pathlib import Path

import torch

from surrogate_kd.adapt import fit_proposal, shader_params
from surrogate_kd.config import parse_assignments
from surrogate_kd.runtime import predict
from surrogate_kd.select import balanced_indices
from surrogate_kd.sources import render
from surrogate_kd.teacher import class_histogram, load_teacher, relative_entropy


def coverage(teacher, candidates: int, per_class: int, proposal: "dict | None", params: dict) -> dict:
    """The teacher's class histogram over `candidates` shader images and what balancing makes of it."""
    spec, classes = teacher.spec, teacher.num_classes
    started = time.perf_counter()
    images = render("shaders", 0, 0, candidates, spec.size, spec.channels, **params)
    render_seconds = time.perf_counter() - started
    predictions = predict(teacher, images).argmax(1)
    counts = class_histogram(predictions, classes)
    chosen = balanced_indices(predictions, classes, per_class)
    distinct = [int(chosen[predictions[chosen] == c].unique().numel()) for c in range(classes)]
    return {"relative_entropy": relative_entropy(counts), "rarest": int(counts.min()), "counts": counts.tolist(),
            "distinct_min": min(distinct), "distinct_total": sum(distinct), "render_seconds": render_seconds}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("teachers", nargs="+", help="teacher checkpoints (directories or model files)")
    parser.add_argument("--candidates", type=int, default=20000)
    parser.add_argument("--per-class", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], help="a fit_proposal option, e.g. rounds=8")
    parser.add_argument("--param", action="append", default=[],
                        help="a shader parameter for the search and the adaptive renders, e.g. figure=0.5")
    parser.add_argument("--save", help="a directory for the fitted proposals")
    parser.add_argument("--verbose", action="store_true", help="print the search's rounds")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    options = dict(parse_assignments(args.set, "--set"))
    params = dict(parse_assignments(args.param, "--param"))
    rows = []
    for path in args.teachers:
        teacher, name = load_teacher(path), Path(path).name
        plain = coverage(teacher, args.candidates, args.per_class, None, {})
        started = time.perf_counter()
        proposal = fit_proposal(teacher, source_params=params, log=print if args.verbose else None, **options)
        search_seconds = time.perf_counter() - started
        adaptive = coverage(teacher, args.candidates, args.per_class, proposal, shader_params(proposal, params))
        if args.save:
            Path(args.save).mkdir(parents=True, exist_ok=True)
            (Path(args.save) / f"{name}.json").write_text(json.dumps(proposal))
        rows.append((name, teacher, plain, adaptive, search_seconds, proposal))
        print(json.dumps({"teacher": name, "plain": plain, "adaptive": adaptive, "search_seconds": search_seconds,
                          "forward_passes": proposal["about"]["forward_passes"]}), flush=True)
    total = args.candidates
    print(f"\n| teacher | classes, size | relative entropy plain -> adaptive | rarest class of {total:,} "
          f"| distinct images per class at {args.per_class:,} (least) | search s | teacher forward passes "
          f"| rendering {total:,}: s plain / adaptive |")
    print("|---|---|---|---|---|---|---|---|")
    for name, teacher, plain, adaptive, seconds, proposal in rows:
        spec = teacher.spec
        print(f"| {name} | {teacher.num_classes}, {spec.size}x{spec.size}x{spec.channels} "
              f"| {plain['relative_entropy']:.3f} -> **{adaptive['relative_entropy']:.3f}** "
              f"| {plain['rarest']:,} -> {adaptive['rarest']:,} "
              f"| {plain['distinct_min']:,} -> {adaptive['distinct_min']:,} "
              f"| {seconds:.1f} | {proposal['about']['forward_passes']:,} "
              f"| {plain['render_seconds']:.1f} / {adaptive['render_seconds']:.1f} |")


if __name__ == "__main__":
    main()
