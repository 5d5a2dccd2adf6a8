"""Boundary samples per second, and the whole-set pass measured in epochs of distillation.

    python benchmarks/bench_boundary.py     # convnet_small 32x32x3 on cpu; + resnet50 32x32x3 on cuda if present
    python benchmarks/bench_boundary.py --sizes 32,224            # and at 224 px
    python benchmarks/bench_boundary.py --sizes 28 --channels 1    # the demo's 28x28x1 (docs/boundary.md's older tables)
    python benchmarks/bench_boundary.py --strategies gather,where  # both ways to run the loop (boundary_attack.py)
    python benchmarks/bench_boundary.py --teacher runs/demo/teacher/model.safetensors --cpu-images 512

Each setting attacks images of the noise source (the demo's worst set) with the default budget
(`boundary_pairs`: 20 steps, epsilon 32/255, threshold 0.9, random targets), with both methods
(gradient, bisection) by default, and times, on the same images and device, one KD step per
batch of `batch` (teacher forward, student forward + backward, SGD): `pass_in_distill_epochs` is
the boundary pass over N images divided by one distillation epoch over N images (no
augmentation: the real loop's epochs cost more). The attack's own batch is the library's default
for the device (256 on a CPU, from free memory on CUDA) unless --attack-batch says otherwise. A
fresh teacher is first calibrated on the images (see `_calibrate`), which makes its attacks
easier than a trained teacher's; pass --teacher for a trained one. Prints one JSON object;
wall-clock times move with the machine's load (the JSON records the load average).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from surrogate_kd.boundary import boundary_pairs
from surrogate_kd.config import InputSpec, TrainConfig
from surrogate_kd.distill import make_step
from surrogate_kd.runtime import inference_copy
from surrogate_kd.models import build_model
from surrogate_kd.sources import render


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _calibrate(teacher: torch.nn.Module, images: torch.Tensor, batch: int) -> None:
    """Make a fresh teacher's argmax depend on its input, as a trained one's does.

    BN running statistics come from the images, and the last layer's bias cancels the mean logit
    of each class over them: a fresh net otherwise prefers one class whatever the input, so no
    attack within the budget ever succeeds and the benchmark would time only failures.
    """
    calibration = images[:4 * batch].float().div(255)
    teacher.train()
    with torch.no_grad():
        for chunk in calibration.split(batch):
            teacher(chunk)
        teacher.eval()
        mean_logits = torch.cat([teacher(chunk) for chunk in calibration.split(batch)]).mean(0)
        last = [m for m in teacher.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.bias -= mean_logits


def _distill_seconds(teacher, student, images: torch.Tensor, batch: int, device: torch.device) -> float:
    """Seconds for one distillation epoch over `images`: a KD step per batch (after one warm-up step)."""
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    kd_step = make_step(student, optimizer, TrainConfig(tau=4.0), inference_copy(teacher))

    def step(x):
        kd_step(x.float().div(255).contiguous(memory_format=torch.channels_last))

    step(images[:batch])
    _sync(device)
    started = time.perf_counter()
    for start in range(0, len(images), batch):
        step(images[start:start + batch])
    _sync(device)
    return time.perf_counter() - started


def _attack(teacher, images: torch.Tensor, batch: int | None, device: torch.device, method: str,
            strategy: str | None = None) -> dict:
    """One timed boundary pass over `images` with `method` (after a short warm-up pass).
    `batch` and `strategy` None: the library's defaults for the device."""
    options = {"batch_size": batch, "device": device, "method": method}
    if strategy:  # only when asked: the benchmark also times versions without the option
        options["strategy"] = strategy
    boundary_pairs(teacher, images[:256], max_steps=2, **options)
    _sync(device)
    started, cpu_started = time.perf_counter(), time.process_time()
    result = boundary_pairs(teacher, images, **options)
    _sync(device)
    seconds = time.perf_counter() - started
    # CPU seconds of this process: on a shared CPU, with --threads 1, far steadier than the wall clock.
    process_seconds = time.process_time() - cpu_started
    s = result.summary
    row = {"method": s["method"], "strategy": s.get("strategy"), "attack_batch": s.get("batch_size", batch),
           "success_rate": s["success_rate"], "within_threshold": s["within_threshold"],
           "mean_steps": s["mean_steps"], "pairs": s["pairs"], "seconds": round(seconds, 2),
           "process_seconds": round(process_seconds, 2),
           "samples_per_s": round(s["samples"] / seconds, 1), "attacked_images_per_s": round(len(images) / seconds, 1),
           "gradients_per_image": s["gradients_per_image"], "mean_distance_grey_levels": s["mean_distance"],
           "relative_entropy_before": s["relative_entropy_before"], "relative_entropy_after": s["relative_entropy_after"]}
    if s["method"] == "gradient":
        row["image_gradients_per_s"] = round(s["gradients_per_image"] * len(images) / seconds, 1)
    else:
        row.update(forwards_per_image=s["forwards_per_image"], unreachable=s["unreachable"])
    return row


def run(arch: str, student_arch: str, size: int, channels: int, count: int, batch: int, device: torch.device,
        teacher_path: str | None, methods: tuple[str, ...] = ("gradient", "bisection"), source: str = "noise",
        strategies: tuple[str | None, ...] = (None,), attack_batch: int | None = None) -> dict:
    """One setting: every method x strategy on the same images, and one distillation epoch over them."""
    if teacher_path:
        from surrogate_kd.checkpoint import load_model

        teacher = load_model(teacher_path)
        arch, size, channels = teacher.arch, teacher.spec.size, teacher.spec.channels
    spec = teacher.spec if teacher_path else InputSpec(size, channels, (0.5,) * channels, (0.25,) * channels,
                                                       tuple(map(str, range(10))))
    params = {"mean": spec.mean, "std": spec.std} if source == "noise" else {}
    images = render(source, 0, 0, count, size, channels, "cpu", **params).to(device)
    if not teacher_path:
        torch.manual_seed(0)
        teacher = build_model(arch, spec).to(device)
        _calibrate(teacher, images, batch)
    teacher.to(device, memory_format=torch.channels_last).eval()
    student = build_model(student_arch, teacher.spec).to(device, memory_format=torch.channels_last).train()

    attacks = [_attack(teacher, images, attack_batch, device, method, strategy)
               for method in methods for strategy in strategies]
    epoch = _distill_seconds(teacher, student, images, batch, device)
    for row in attacks:
        row["pass_in_distill_epochs"] = round(row["seconds"] / epoch, 2)
    setting = {"teacher": arch if not teacher_path else teacher_path, "student": student_arch,
               "input": f"{size}x{size}x{channels}", "source": source, "device": str(device), "images": count,
               "batch": batch, "distill_epoch_seconds": round(epoch, 3)}
    # One method: its numbers in the setting itself (the benchmark's original output); several: a list.
    return {**setting, **attacks[0]} if len(attacks) == 1 else {**setting, "methods": attacks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", help="a trained teacher for the cpu setting (default: fresh convnet_small)")
    parser.add_argument("--cpu-images", type=int, default=256)
    parser.add_argument("--cuda-images", type=int, default=8192, help="at 32 px; an eighth of it at 224 px")
    parser.add_argument("--sizes", default="32", help="comma-separated image sizes of the fresh teachers")
    parser.add_argument("--channels", type=int, default=3, help="image channels of the fresh cpu teacher")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--methods", default="gradient,bisection",
                        help="comma-separated attack methods, each on the same images: gradient, bisection")
    parser.add_argument("--strategies", default="",
                        help="comma-separated loop strategies (gather, where); default: the device's own")
    parser.add_argument("--attack-batch", type=int, default=None, help="the attack's batch (default: the library's)")
    parser.add_argument("--source", default="noise", help="the synthetic source of the attacked images")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods = tuple(args.methods.split(","))
    strategies = tuple(args.strategies.split(",")) if args.strategies else (None,)
    sizes = [int(size) for size in args.sizes.split(",")]
    common = dict(methods=methods, source=args.source, strategies=strategies, attack_batch=args.attack_batch)
    results = {"threads": args.threads, "load_average": os.getloadavg()[0],
               "cpu": {f"{size}px": run("convnet_small", "convnet_tiny", size, args.channels, args.cpu_images, 256,
                                        torch.device("cpu"), args.teacher, **common)
                       for size in (sizes[:1] if args.teacher else sizes)}}
    if torch.cuda.is_available():
        results["cuda"] = {f"{size}px": run("resnet50", "resnet18", size, 3,
                                            args.cuda_images if size <= 64 else args.cuda_images // 8, 512,
                                            torch.device("cuda"), None, **common) for size in sizes}
        results["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
