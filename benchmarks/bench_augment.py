"""Augmentation throughput, side by side with torchvision's per-image pipeline and with a KD step.

    python benchmarks/bench_augment.py                    # 32x32 RGB, batch 256, cpu (+ cuda if present)
    python benchmarks/bench_augment.py --size 28 --channels 1 --seconds 1 --skip-torchvision
    python benchmarks/bench_augment.py --ops              # aten ops per call, per regime and strategy

Prints one JSON object (images/s): each regime with mixup on each device (`augment` + `mixup`,
data already on the device); torchvision's per-image `high` pipeline (RandAugment n=4 m=14, flip,
crop pad 4, elastic p=0.5, invert p=0.1), with and without elastic, through a DataLoader with
one worker per core, mixup applied to the collated batch like ours; and, on CUDA (or with
--kd-step on), the plain KD step ResNet-50 -> ResNet-18 and ResNet-34 -> ResNet-18 (bf16 +
channels_last on CUDA), with the ratio the issue targets: `high`+mixup >= 4x the fastest step.
Timings are wall-clock over a fixed time window after warm-up; on a shared machine they move
with the load (the JSON records the load average). On CPU it also prints images per CPU-second
of the process (`images_per_cpu_s`): with `--threads 1` that figure hardly moves with other jobs,
so compare before/after with it on a busy machine.

`--strategy` forces how images meet the ops they drew ('gather' is the CPU default, 'where' the
accelerators'); `--ops` prints instead, per regime with mixup and per strategy, the aten ops one
call dispatches at batch 64 and 1024, its host syncs and its tensors made from Python data
(`surrogate_kd.opcount`): the CPU-visible side of CUDA-graph capture.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from surrogate_kd.augment import REGIMES, STRATEGIES, augment, mixup
from surrogate_kd.opcount import OpCounter


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def _rates(step, batch: int, seconds: float, device: torch.device, warmup: int = 2) -> tuple[float, float]:
    """Images per second, and per CPU-second of this process, of `step()` (one batch) over about `seconds`
    after `warmup` calls."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    calls, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while calls < 3 or time.perf_counter() - start < seconds:
        step()
        calls += 1
        if device.type == "cuda" and calls % 10 == 0:
            sync()  # keep the timer honest without syncing every call
    sync()
    return calls * batch / (time.perf_counter() - start), calls * batch / (time.process_time() - cpu_start)


def _rate(step, batch: int, seconds: float, device: torch.device, warmup: int = 2) -> float:
    """Images per second of `step()` (one batch) over about `seconds` after `warmup` calls."""
    return _rates(step, batch, seconds, device, warmup)[0]


def ours(device: torch.device, args) -> tuple[dict[str, float], dict[str, float]]:
    """`augment` + `mixup` per regime, uint8 batch already on the device, generator on the device:
    images per second and per CPU-second."""
    images = torch.randint(0, 256, (args.batch, args.channels, args.size, args.size), dtype=torch.uint8, device=device)
    generator = torch.Generator(device=device).manual_seed(0)

    def step(regime):
        return lambda: mixup(augment(images, regime, generator, strategy=args.strategy), generator)

    rates = {f"{name}+mixup": _rates(step(r), args.batch, args.seconds, device) for name, r in REGIMES.items()}
    return {k: round(wall) for k, (wall, _) in rates.items()}, {k: round(cpu) for k, (_, cpu) in rates.items()}


def dispatched_ops(args) -> dict[str, dict]:
    """Per strategy and regime (with mixup), the aten ops of one call on CPU after a warm-up, at batch 64 and 1024."""
    result = {}
    for strategy in STRATEGIES:
        for name, regime in REGIMES.items():
            counts = {}
            for batch in (64, 1024):
                images = torch.randint(0, 256, (batch, args.channels, args.size, args.size), dtype=torch.uint8)
                generator = torch.Generator().manual_seed(0)
                mixup(augment(images, regime, generator, strategy=strategy), generator)  # builds the cached constants
                with OpCounter() as ops:
                    mixup(augment(images, regime, generator, strategy=strategy), generator)
                counts[batch] = ops
            result.setdefault(strategy, {})[f"{name}+mixup"] = {
                "ops_batch_64": counts[64].total,
                "ops_batch_1024": counts[1024].total,
                "host_syncs": counts[1024].host_syncs,
                "python_tensors": counts[1024].python_tensors,
            }
    return result


class _UInt8Images(torch.utils.data.Dataset):
    """Random uint8 images through a per-image transform, as a data set on disk would be read."""

    def __init__(self, count: int, shape: tuple[int, int, int], transform):
        self.images = torch.randint(0, 256, (count, *shape), dtype=torch.uint8)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.images[i])


def torchvision_reference(args, elastic: bool) -> float:
    """torchvision's per-image `high` pipeline in DataLoader workers, mixup on the collated batch."""
    from torchvision.transforms import v2

    transforms = [
        v2.RandAugment(num_ops=4, magnitude=14),
        v2.RandomHorizontalFlip(),
        v2.RandomCrop(args.size, padding=4),
        v2.RandomApply([v2.ElasticTransform(alpha=50.0, sigma=5.0)], p=0.5) if elastic else v2.Identity(),
        v2.RandomInvert(p=0.1),
        v2.ToDtype(torch.float32, scale=True),
    ]
    data = _UInt8Images(args.batch * 64, (args.channels, args.size, args.size), v2.Compose(transforms))
    loader = torch.utils.data.DataLoader(
        data, batch_size=args.batch, shuffle=True, num_workers=args.workers, persistent_workers=args.workers > 0
    )
    generator = torch.Generator().manual_seed(0)
    batches = iter(loader)
    next(batches)  # worker start-up is not throughput
    count, start = 0, time.perf_counter()
    for batch in batches:
        mixup(batch, generator)
        count += len(batch)
        if time.perf_counter() - start > args.seconds * 2:  # per-image pipelines are slow: give them longer
            break
    return round(count / (time.perf_counter() - start))


def kd_steps(device: torch.device, args) -> dict[str, float]:
    """The loop's KD step (`distill.make_step`) on data already augmented: frozen teacher forward,
    student forward + backward + SGD. ResNet-50/34 -> ResNet-18 at 32x32 RGB (the issue's pairs);
    on CPU also the demo's pair, convnet_24 -> convnet_tiny at 28x28 gray, batch 128, with the
    teacher as trained and with its BatchNorm folded (`distill.inference_copy`, what the loop uses).
    """
    from dataclasses import replace

    from surrogate_kd.config import TrainConfig
    from surrogate_kd.distill import make_step
    from surrogate_kd.runtime import inference_copy
    from surrogate_kd.models import create_network

    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    cfg = TrainConfig(tau=2.0, precision="bf16" if device.type == "cuda" else "auto")
    pairs = [("resnet50", "resnet18", 32, 3, args.batch, True), ("resnet34", "resnet18", 32, 3, args.batch, True)]
    if device.type == "cpu":
        memory_format = torch.channels_last  # what the loop uses on CPU too
        pairs += [("convnet_24", "convnet_tiny", 28, 1, 128, False), ("convnet_24", "convnet_tiny", 28, 1, 128, True)]
    rates = {}
    for teacher_arch, student_arch, size, channels, batch, fold in pairs:
        x = torch.rand(batch, channels, size, size, device=device).contiguous(memory_format=memory_format)
        teacher = create_network(teacher_arch, 10, channels).to(device, memory_format=memory_format).eval()
        teacher = inference_copy(teacher) if fold else teacher.requires_grad_(False)
        student = create_network(student_arch, 10, channels).to(device, memory_format=memory_format)
        optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
        step = make_step(student, optimizer, replace(cfg, tau=4.0) if size == 28 else cfg, teacher)
        seconds = args.seconds if device.type == "cuda" or size == 28 else 0.0  # big nets on CPU: a few steps
        name = f"{teacher_arch}->{student_arch}" + ("" if fold else " (teacher BN not folded)")
        rates[name] = round(_rate(lambda: step(x), batch, seconds, device, warmup=1))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3))
    parser.add_argument("--seconds", type=float, default=2.0, help="time window per measurement")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="DataLoader workers (default: cores)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads for ours on CPU")
    parser.add_argument("--skip-torchvision", action="store_true")
    parser.add_argument("--kd-step", choices=("auto", "on", "off"), default="auto", help="auto: on CUDA only")
    parser.add_argument("--strategy", choices=STRATEGIES, default=None, help="default: gather on CPU, where on CUDA")
    parser.add_argument("--ops", action="store_true", help="print the aten ops per call (on CPU) instead of timing")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.ops:
        shape = [args.channels, args.size, args.size]
        print(json.dumps({"shape": shape, "dispatched_ops": dispatched_ops(args)}, indent=2))
        return

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    result = {
        "machine": {
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "load_average": os.getloadavg()[0],
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "shape": [args.batch, args.channels, args.size, args.size],
        "strategy": args.strategy or "device default",
    }
    rates = {device.type: ours(device, args) for device in devices}
    result["images_per_s"] = {device: wall for device, (wall, _) in rates.items()}
    result["images_per_cpu_s"] = rates["cpu"][1]
    if not args.skip_torchvision:
        result["torchvision_dataloader"] = {
            "workers": args.workers,
            "high+mixup": torchvision_reference(args, elastic=True),
            "high_without_elastic+mixup": torchvision_reference(args, elastic=False),
        }
    kd_devices = [d for d in devices if args.kd_step == "on" or (args.kd_step == "auto" and d.type == "cuda")]
    if kd_devices:
        result["kd_step_images_per_s"] = {device.type: kd_steps(device, args) for device in kd_devices}
        for device in kd_devices:
            # The ratio is against its ResNet pairs, not the demo's small CPU nets.
            fastest = max(v for k, v in result["kd_step_images_per_s"][device.type].items() if k.startswith("resnet"))
            result[f"high+mixup_over_fastest_kd_step_{device.type}"] = round(
                result["images_per_s"][device.type]["high+mixup"] / fastest, 2
            )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
