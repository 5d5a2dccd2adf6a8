"""Images/s of every source at 32x32 and 224x224 on cpu (and cuda), plus what the images are like.

    python benchmarks/bench_sources.py                   # all sources, JSON on stdout
    python benchmarks/bench_sources.py --sources shaders --sizes 32 --seconds 1
    python benchmarks/bench_sources.py --teacher runs/demo/teacher/model.safetensors
    python benchmarks/bench_sources.py --sizes 32 --ops --seconds 0   # op counts only

Per source it reports: images/s per device and size (best of a few timed batches, after a
warm-up), the mean per-image std of luminance, the fraction of images the `is_simple` filter
flags before any redraw (for shaders: renders it redraws), and, given a teacher checkpoint,
the relative entropy of the teacher's class predictions over 10,000 images (paper Table 3).
`--strategy` times one strategy on every device (default: each device's own, 'gather' on CPU,
'where' on CUDA). `--ops` adds, per strategy and size, the aten ops one `render` call dispatches
for each batch of `--ops-batches` images, counted on CPU, with the host syncs and the tensors made
from Python data among them (surrogate_kd/opcount.py): on a GPU each op is a kernel launch and
each sync a stall, so the 'where' strategy's counts must not grow with the batch and hold no sync.
Targets (issue 3): >= 2,000 images/s per source at 32x32 on 2 CPU cores; shaders >= 200,000
images/s at 32x32 on CUDA.
"""

import argparse
import json
import os
import time

import torch

from surrogate_kd.opcount import OpCounter
from surrogate_kd.sources import SOURCES, STRATEGIES, is_simple, luminance, render

UNFILTERED = {"shaders": {"attempts": 1}}  # the first render of every program, before the filter


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def images_per_second(name: str, size: int, device: str, seconds: float, strategy: "str | None" = None) -> float:
    """Best rate over timed batches of about 0.2 s each, after a warm-up batch."""
    batch = max(8, (1 << 21) // (size * size))  # 2048 images at 32x32, 41 at 224x224
    render(name, 0, 0, batch, size, device=device, strategy=strategy)
    best, start, spent = 0.0, batch, 0.0
    while spent < seconds:
        _sync(device)
        began = time.perf_counter()
        render(name, 0, start, batch, size, device=device, strategy=strategy)
        _sync(device)
        elapsed = time.perf_counter() - began
        best, start, spent = max(best, batch / elapsed), start + batch, spent + elapsed
    return best


def dispatched_ops(name: str, size: int, batches: list[int]) -> dict:
    """Per strategy and batch: the aten ops one CPU `render` call dispatches, host syncs and Python-data tensors."""
    counts = {}
    for strategy in STRATEGIES:
        render(name, 0, 0, 1, size, strategy=strategy)  # once-per-process setup (the photo atlas) is not counted
        counts[strategy] = {}
        for batch in batches:
            with OpCounter() as ops:
                render(name, 0, 0, batch, size, strategy=strategy)
            counts[strategy][batch] = {"ops": ops.total, "host_syncs": sum(ops.host_syncs.values()),
                                       "python_tensors": ops.python_tensors}  # fmt: skip
    return counts


def image_statistics(name: str, count: int = 2048, size: int = 32) -> dict:
    unfiltered = render(name, 1, 0, count, size, **UNFILTERED.get(name, {}))
    delivered = render(name, 1, 0, count, size)
    return {
        "mean_image_std": round(luminance(delivered.float() / 255).flatten(1).std(1).mean().item(), 4),
        "filter_rejects": round(is_simple(unfiltered).float().mean().item(), 4),
        "simple_after_filter": round(is_simple(delivered).float().mean().item(), 4),
    }


def teacher_relative_entropy(name: str, teacher_path: str, count: int = 10_000) -> float:
    from surrogate_kd.checkpoint import load_model
    from surrogate_kd.runtime import predict
    from surrogate_kd.teacher import class_histogram, relative_entropy

    teacher = load_model(teacher_path)
    spec = teacher.spec
    params = {"mean": list(spec.mean), "std": list(spec.std)} if name == "noise" else {}
    images = render(name, 2, 0, count, spec.size, spec.channels, **params)
    predictions = predict(teacher, images, device=torch.device("cpu")).argmax(1)
    return round(relative_entropy(class_histogram(predictions, len(spec.classes))), 4) + 0.0  # no -0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", default=",".join(SOURCES.names()))
    parser.add_argument("--sizes", default="32,224")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per source, size and device")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--teacher", help="a teacher checkpoint: adds the relative entropy of its predictions")
    parser.add_argument("--strategy", choices=STRATEGIES, help="time this strategy (default: each device's own)")
    parser.add_argument("--ops", action="store_true", help="add the ops a render dispatches, per strategy and size")
    parser.add_argument("--ops-batches", default="256,4096", help="batch sizes whose ops --ops counts")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    sizes = args.sizes.split(",")
    report = {"threads": args.threads, "torch": torch.__version__, "strategy": args.strategy or "device default",
              "sources": {}}  # fmt: skip
    for name in args.sources.split(","):
        rates = {
            device: {size: round(images_per_second(name, int(size), device, args.seconds, args.strategy))
                     for size in sizes}  # fmt: skip
            for device in devices
        }
        entry = {"images_per_s": rates, **image_statistics(name)}
        if args.ops:
            batches = [int(batch) for batch in args.ops_batches.split(",")]
            entry["dispatched_ops_cpu"] = {size: dispatched_ops(name, int(size), batches) for size in sizes}
        if args.teacher:
            entry["teacher_relative_entropy"] = teacher_relative_entropy(name, args.teacher)
        report["sources"][name] = entry
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
