"""`make bench-gpu`: the GPU training path measured in one run, as one JSON object and a table.

Measures, on one CUDA device (issues 10 and 11):
  kd_step        the loop's own step (distill.make_batch_step: augment + mixup + teacher forward +
                 student forward/backward + SGD), eager and captured as a CUDA graph, per pair
  augment        `augment` + `mixup` per regime, eager and captured
  sources        synthetic sources' images/s at 32 and 224 px
  boundary       a boundary-sample pass (boundary_pairs, both methods, both loop strategies of
                 boundary_attack.py) at 32 and 224 px with the last pair's teacher: samples/s and
                 the pass's cost in epochs of distillation over the same images, of bare eager KD
                 steps (bench_boundary.py's measure) and, at 32 px, of the loop's step above
  distill        `surrogate-kd distill` end to end through the real CLI (median images/s of its
                 metrics.jsonl), from teachers trained for a few epochs in this run on
                 Fashion-MNIST resized to 32x32x3, and its ratio to the captured step of the pair
  imported       the user's case (issue 15): a torchvision ResNet-50 state dict with 1,000 classes
                 (random weights: only speed is measured) through `import-teacher --preset
                 imagenet`, distilled at 224 px into torchvision's ResNet-18 from shaders, end to
                 end through the CLI, and its ratio to the captured step of the same pair at 224 px
Bars (issue 10, H100/H200): distill >= 0.85x the captured step; high + mixup captured at batch 256
>= 6x the captured ResNet-34 -> ResNet-18 step. Issue 11: a boundary pass <= 3 distillation epochs.
Issue 15: the imported ResNet-50 -> ResNet-18 at 224 px end to end >= 0.85x its captured step.

Without CUDA it says so in one line and exits 1. `--dry-run` runs the same pipeline on the CPU
with tiny sizes (tests/test_bench_gpu.py runs it), captured entries reported as eager-only.
Usage: python benchmarks/bench_gpu.py [--dry-run] [--out runs/bench-gpu]
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from surrogate_kd.augment import REGIMES, augment, get_regime, mixup
from surrogate_kd.config import InputSpec, TrainConfig
from surrogate_kd.data import convert_images, open_images
from surrogate_kd.distill import make_batch_step
from surrogate_kd.models import build_model
from surrogate_kd.runtime import inference_copy
from surrogate_kd.sources import SOURCES, render

FULL = dict(batch=256, size=32, channels=3, seconds=3.0, pairs=[("resnet34", "resnet18"), ("resnet50", "resnet18")],
            teacher_epochs=3, teacher_images=60000, distill_images=1_500_000, candidates=20000, per_class=1000,
            source_sizes=(32, 224), source_count=4096, boundary_count=4096,
            imported=dict(teacher="resnet50", student="resnet18", size=224, classes=1000, batch=256,
                          candidates=10000, per_class=10, images=100_000))
DRY = dict(batch=16, size=16, channels=3, seconds=0.3, pairs=[("convnet_tiny", "convnet_tiny")],
           teacher_epochs=1, teacher_images=256, distill_images=256, candidates=128, per_class=8,
           source_sizes=(16,), source_count=64, boundary_count=64,
           imported=dict(teacher="resnet18", student="resnet18", size=32, classes=1000, batch=16,
                         candidates=64, per_class=1, images=64))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rate(call, images_per_call: int, seconds: float, device: torch.device, warmup: int = 5) -> float:
    """images/s of call() over a window of `seconds` (after warm-up calls, which capture graphs)."""
    for _ in range(warmup):
        call()
    _sync(device)
    calls, start = 0, time.perf_counter()
    while True:
        call()
        calls += 1
        if calls >= 3 and time.perf_counter() - start >= seconds:
            break
        if calls % 10 == 0:
            _sync(device)
    _sync(device)
    return round(calls * images_per_call / (time.perf_counter() - start))


def kd_steps(device, s) -> dict:
    """images/s of the loop's step per pair, eager and captured (captured only on CUDA)."""
    spec = InputSpec(s["size"], s["channels"], (0.5,) * s["channels"], (0.25,) * s["channels"],
                     tuple(str(i) for i in range(s.get("classes", 10))))
    images = torch.randint(0, 256, (s["batch"], s["channels"], s["size"], s["size"]), dtype=torch.uint8, device=device)
    rates = {}
    for teacher_arch, student_arch in s["pairs"]:
        teacher = inference_copy(build_model(teacher_arch, spec).to(device)).to(memory_format=torch.channels_last)
        for capture in (False, True) if device.type == "cuda" else (False,):
            student = build_model(student_arch, spec).to(device, memory_format=torch.channels_last)
            optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
            cfg = TrainConfig(regime="high", tau=4.0, capture=capture, device=device.type)
            run = make_batch_step(student, optimizer, cfg, teacher, device)
            counter = iter(range(10**9))
            rates[f"{teacher_arch}->{student_arch} {'captured' if capture else 'eager'}"] = _rate(
                lambda: run(next(counter), images, None, 0.05), s["batch"], s["seconds"], device)
    return rates


def augment_rates(device, s) -> dict:
    """`augment` + `mixup` per regime at the bench batch, eager and (on CUDA) captured."""
    from surrogate_kd.capture import CapturedStep

    images = torch.randint(0, 256, (s["batch"], s["channels"], s["size"], s["size"]), dtype=torch.uint8, device=device)
    generator = torch.Generator(device=device)
    rates = {}
    for name in REGIMES.names():
        regime = get_regime(name)

        def views(x, labels=None, lr=None):
            return mixup(augment(x, regime, generator), generator)[0]

        rates[f"{name}+mixup eager"] = _rate(lambda: views(images), s["batch"], s["seconds"], device)
        if device.type == "cuda":
            step = CapturedStep(views, views, lambda k: generator.manual_seed(k), generator)
            counter = iter(range(10**9))
            rates[f"{name}+mixup captured"] = _rate(lambda: step(next(counter), images, None, 0.0), s["batch"],
                                                    s["seconds"], device)
    return rates


def source_rates(device, s) -> dict:
    """images/s per source and size; on CUDA both rendering strategies (sources/strategy.py): 'where'
    (the CUDA default: launches independent of the batch, no host syncs) and 'gather' (the CPU's)."""
    rates = {}
    strategies = ("where", "gather") if device.type == "cuda" else (None,)
    for name in SOURCES.names():
        for size in s["source_sizes"]:
            for strategy in strategies:
                count = s["source_count"] if size <= 64 else max(64, s["source_count"] // 8)
                params = {"mean": (0.5,) * 3, "std": (0.25,) * 3} if name == "noise" else {}
                render(name, 0, 0, count, size, 3, device, strategy=strategy, **params)
                _sync(device)
                start = time.perf_counter()  # second call: kernels compiled, photos loaded
                render(name, 0, count, count, size, 3, device, strategy=strategy, **params)
                _sync(device)
                label = f"{name} {size}px" + (f" {strategy}" if strategy else "")
                rates[label] = round(count / (time.perf_counter() - start))
    return rates


def boundary_costs(device, s, kd_rates: dict) -> dict:
    """A boundary pass over `boundary_count` noise images per method x loop strategy x size, with the
    last pair's (fresh, calibrated) teacher: samples/s, and the pass in epochs of distillation over
    the same images: of bare eager KD steps at the bench batch (bench_boundary.py's measure: issue 11
    quoted 27 for ResNet-50 at 32 px on an H200) and, at the bench size, of the loop's own step as
    measured in `kd_steps` (captured on CUDA)."""
    from bench_boundary import run as boundary_run  # benchmarks/ is on sys.path: this script's folder

    teacher_arch, student_arch = s["pairs"][-1]
    mode = "captured" if device.type == "cuda" else "eager"
    step_rate = kd_rates[f"{teacher_arch}->{student_arch} {mode}"]  # images/s of the loop's step
    costs = {}
    for size in s["source_sizes"]:
        count = s["boundary_count"] if size <= 64 else max(64, s["boundary_count"] // 8)
        try:
            setting = boundary_run(teacher_arch, student_arch, size, s["channels"], count, s["batch"], device, None,
                                   methods=("gradient", "bisection"), strategies=("gather", "where"))
        except torch.OutOfMemoryError:  # a CIFAR-style ResNet-50 at 224 px is heavy: say so, measure the rest
            torch.cuda.empty_cache()
            costs[f"{size}px"] = "out of memory"
            continue
        for row in setting["methods"]:
            label = f"{row['method']} {size}px {row['strategy']}"
            costs[f"{label} samples/s"] = round(row["samples_per_s"])
            costs[f"{label} attack batch"] = row["attack_batch"]
            costs[f"{label} pass / bare KD epoch"] = row["pass_in_distill_epochs"]
            if size == s["size"]:
                costs[f"{label} pass / {mode} loop-step epoch"] = round(row["seconds"] * step_rate / count, 2)
    return costs


def fashion_mnist_32(out: Path, s) -> Path:
    """Fashion-MNIST as 32x32 RGB (the issue's teacher data), as an .npz the CLI reads."""
    train = open_images("fashion-mnist")
    count = min(s["teacher_images"], len(train))
    images = convert_images(train.images[:count], s["size"], s["channels"])  # (N, 3, S, S) uint8
    path = out / "fashion-mnist-32.npz"
    np.savez(path, images=images.permute(0, 2, 3, 1).numpy(), labels=train.labels[:count].numpy())
    return path


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "surrogate_kd", *args], check=True, stdout=subprocess.DEVNULL)


def distill_end_to_end(device, s, out: Path) -> dict:
    """Median images/s of real `distill` runs (metrics.jsonl), teachers trained here first."""
    data = fashion_mnist_32(out, s)
    common = ["--batch-size", str(s["batch"]), "--device", device.type, "--overwrite"]
    rates = {}
    for teacher_arch, student_arch in s["pairs"]:
        teacher = out / f"teacher-{teacher_arch}"
        cli("train-teacher", "--data", str(data), "--arch", teacher_arch, "--out", str(teacher),
            "--epochs", str(s["teacher_epochs"]), *common)
        run = out / f"distill-{teacher_arch}-{student_arch}"
        cli("distill", "--teacher", str(teacher / "model.safetensors"), "--data", "shaders", "--student", student_arch,
            "--out", str(run), "--candidates", str(s["candidates"]), "--per-class", str(s["per_class"]),
            "--set", f"budget_images={s['distill_images']}", "--set", "log_every=20", *common)
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        speeds = [line["images_per_s"] for line in lines[1:]] or [lines[0]["images_per_s"]]  # first: warm-up, capture
        rates[f"{teacher_arch}->{student_arch}"] = round(float(np.median(speeds)))
    return rates


def imported_end_to_end(device, s, out: Path) -> dict:
    """The user's teacher: a torchvision state dict imported with ImageNet's input spec, distilled at
    its own size; images/s end to end (median of metrics.jsonl) beside the captured step of the pair."""
    from torchvision import models as tv_models

    m = s["imported"]
    weights = out / f"torchvision-{m['teacher']}.pth"
    torch.save(getattr(tv_models, m["teacher"])(num_classes=m["classes"]).state_dict(), weights)
    teacher = out / f"imported-{m['teacher']}"
    cli("import-teacher", "--weights", str(weights), "--arch", f"torchvision:{m['teacher']}",
        "--num-classes", str(m["classes"]), "--preset", "imagenet", "--size", str(m["size"]), "--out", str(teacher),
        "--overwrite")
    run = out / f"distill-imported-{m['teacher']}-{m['student']}"
    cli("distill", "--teacher", str(teacher), "--data", "shaders", "--student", f"torchvision:{m['student']}",
        "--out", str(run), "--candidates", str(m["candidates"]), "--per-class", str(m["per_class"]),
        "--batch-size", str(m["batch"]), "--device", device.type, "--overwrite",
        "--set", f"budget_images={m['images']}", "--set", "log_every=20")
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    end_to_end = round(float(np.median([line["images_per_s"] for line in lines[1:]] or [lines[0]["images_per_s"]])))
    tv_pair = (f"torchvision:{m['teacher']}", f"torchvision:{m['student']}")
    steps = kd_steps(device, {**s, "batch": m["batch"], "size": m["size"], "channels": 3, "classes": m["classes"],
                              "pairs": [tv_pair]})
    step = steps[f"{tv_pair[0]}->{tv_pair[1]} {'captured' if device.type == 'cuda' else 'eager'}"]
    name = f"{m['teacher']}->{m['student']} {m['size']}px"
    return {f"{name} end to end": end_to_end, f"{name} step": step, f"{name} ratio": round(end_to_end / step, 3)}


def table(result: dict) -> str:
    rows = ["| what | images/s, or as named |", "|---|---|"]
    for section in ("kd_step", "augment", "sources", "boundary", "distill", "imported", "ratios"):
        for name, value in result.get(section, {}).items():
            rows.append(f"| {section}: {name} | {value:,} |" if isinstance(value, int) else f"| {section}: {name} | {value} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="the same pipeline on the CPU, tiny sizes")
    parser.add_argument("--out", default="runs/bench-gpu", help="folder for the runs this benchmark makes")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("bench-gpu: no CUDA device on this machine; `--dry-run` checks the pipeline on the CPU", file=sys.stderr)
        return 1
    s = DRY if args.dry_run else FULL
    device = torch.device("cpu" if args.dry_run else "cuda")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (dry run)",
              "torch": torch.__version__, "batch": s["batch"], "image": [s["channels"], s["size"], s["size"]]}
    result["kd_step"] = kd_steps(device, s)
    result["augment"] = augment_rates(device, s)
    result["sources"] = source_rates(device, s)
    result["boundary"] = boundary_costs(device, s, result["kd_step"])
    result["distill"] = distill_end_to_end(device, s, out)
    result["imported"] = imported_end_to_end(device, s, out)
    mode = "captured" if device.type == "cuda" else "eager"
    result["ratios"] = {f"distill / {mode} step, {pair}": round(rate / result["kd_step"][f"{pair} {mode}"], 3)
                        for pair, rate in result["distill"].items()}
    high = result["augment"].get(f"high+mixup {mode}")
    first_pair = "->".join(s["pairs"][0])
    result["ratios"][f"high+mixup {mode} / {mode} step, {first_pair}"] = round(
        high / result["kd_step"][f"{first_pair} {mode}"], 2)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
