"""Peak resident memory of `distill` against the number of candidates (issue 15's memory bar).

    python benchmarks/bench_memory.py                      # 8,000 and 40,000 candidates
    python benchmarks/bench_memory.py --candidates 2000 --factor 5 --source shaders
    python benchmarks/bench_memory.py --path in-memory     # the selection as it was: every candidate
                                                           # and its (N, K) logits in memory
    python benchmarks/bench_memory.py --boundary-fraction 0.5 --classes 10 --per-class 200 \
        --candidates 2000 --max-in-memory-mb 64             # boundary samples, in parts beyond 64 MiB

A 1,000-class teacher (`convnet_tiny`, random weights) at 64 px RGB distills into a student through
`surrogate_kd.api.distill` with a tiny training budget, twice, each run in a fresh Python process:
N candidates, then factor x N. Each child reports its own peak RSS (`resource.getrusage`); the
parent prints both and the difference. Bar: factor 5 within +300 MB of the baseline. Peak RSS
does not fall within a process, so every measurement needs its own process. Prints one JSON object.

The bar is the selection's: boundary samples are off unless --boundary-fraction is given. They
hold the attacked images and their samples in memory up to select.MAX_IN_MEMORY_BYTES, and
beyond it attack in parts of that size, each written to disk: their memory grows with the
candidates up to that bound, then stays flat (measure it with --boundary-fraction).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BAR_MB = 300


def child(args: argparse.Namespace) -> None:
    """One run in this process; prints {"peak_rss_mb": ..., ...} as its last line."""
    import torch

    from surrogate_kd import api, select
    from surrogate_kd.checkpoint import save_model
    from surrogate_kd.config import InputSpec
    from surrogate_kd.models import build_model

    if args.max_in_memory_mb:  # a smaller bound, to see the parts at a small scale
        select.MAX_IN_MEMORY_BYTES = args.max_in_memory_mb << 20
    torch.manual_seed(0)
    spec = InputSpec(64, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                     tuple(f"class{i}" for i in range(args.classes)))
    work = Path(args.work)
    teacher = save_model(build_model(args.teacher, spec), work / "teacher" / "model.safetensors")
    started = time.perf_counter()
    if args.path == "chunked":
        result = api.distill(teacher, args.source, work / f"student-{args.candidates}", student=args.student,
                             candidates=args.candidates, per_class=args.per_class, budget_images=args.budget,
                             batch_size=args.batch, device="cpu", eval_every=0,
                             boundary_fraction=args.boundary_fraction)
        selected = result["selected"]
    else:  # the in-memory selection this project had before: every candidate and its logits at once
        from surrogate_kd.select import balanced_indices
        from surrogate_kd.teacher import load_candidates, load_teacher

        model = load_teacher(teacher)
        images, logits = load_candidates(model, args.source, args.candidates, seed=0, device=torch.device("cpu"))
        index = balanced_indices(logits.argmax(1), args.classes, args.per_class)
        selected = len(images.images[index])
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"candidates": args.candidates, "selected": selected, "peak_rss_mb": round(peak_kib / 1024, 1),
                      "seconds": round(time.perf_counter() - started, 1)}))


def measure(args: argparse.Namespace, candidates: int, work: str) -> dict:
    command = [sys.executable, __file__, "--child", "--work", work, "--candidates", str(candidates),
               "--source", args.source, "--per-class", str(args.per_class), "--budget", str(args.budget),
               "--batch", str(args.batch), "--teacher", args.teacher, "--student", args.student, "--path", args.path,
               "--classes", str(args.classes), "--boundary-fraction", str(args.boundary_fraction),
               "--max-in-memory-mb", str(args.max_in_memory_mb)]
    # Selections too large for memory are cached under SURROGATE_KD_CACHE: a scratch one per run.
    env = {**os.environ, "SURROGATE_KD_CACHE": str(Path(work) / "cache")}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"child with {candidates} candidates failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=8000, help="baseline candidate count N")
    parser.add_argument("--factor", type=int, default=5, help="the second run has factor x N candidates")
    parser.add_argument("--source", default="noise", help="a synthetic source (noise renders fastest)")
    parser.add_argument("--per-class", type=int, default=2, help="images kept per class")
    parser.add_argument("--classes", type=int, default=1000, help="the teacher's classes")
    parser.add_argument("--boundary-fraction", type=float, default=0.0,
                        help="boundary samples from this share of the candidates (distill's default: 0.5)")
    parser.add_argument("--max-in-memory-mb", type=int, default=0,
                        help="select.MAX_IN_MEMORY_BYTES in MiB for the runs (0: the library's, 1,024)")
    parser.add_argument("--budget", type=int, default=256, help="training images (a tiny budget)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--teacher", default="convnet_tiny", help="a registered architecture, random weights")
    parser.add_argument("--student", default="convnet_tiny")
    parser.add_argument("--path", choices=("chunked", "in-memory"), default="chunked",
                        help="chunked: api.distill as it is; in-memory: the old all-at-once selection, for reference")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as work:
        base = measure(args, args.candidates, work)
        large = measure(args, args.factor * args.candidates, work)
    difference = round(large["peak_rss_mb"] - base["peak_rss_mb"], 1)
    teacher = f"{args.teacher}, {args.classes} classes, 64 px RGB, random weights"
    print(json.dumps({"path": args.path, "teacher": teacher, "source": args.source,
                      "boundary_fraction": args.boundary_fraction, "baseline": base, "larger": large,
                      "difference_mb": difference,
                      "bar_mb": BAR_MB, "within_bar": difference <= BAR_MB, "load_average": os.getloadavg()[0],
                      "cpus": os.cpu_count(), "threads": os.environ.get("OMP_NUM_THREADS")}, indent=1))


if __name__ == "__main__":
    main()
