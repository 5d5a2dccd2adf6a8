"""The runtime under everything that runs a model: devices, precision, prediction, frozen copies, evaluation.

Selection, boundary samples, the score and the training loop all import this module; it imports
none of them, so data flows one way (source -> pool -> selection -> batches -> loop -> report).
"""

from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import parallel
from .errors import UserError


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's draws (order, per-epoch selection, boundary samples): a pure
    function of (seed, epoch), so a resumed run redraws exactly the epoch it stopped in."""
    return seed * 100_003 + epoch


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when present, else cpu; any other name is checked (a typo is an error, not a crash)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device '{name}'; valid: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' requested but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"unsupported device '{name}'; valid: auto, cpu, cuda, cuda:N")
    return device


# How a batch goes through per-image work (augmentation ops, shader programs, boundary attacks):
#   gather  group the batch by what each image needs and run each piece on its rows only: least
#           arithmetic, but data-dependent shapes (a host sync to read them). The CPU default.
#   where   run every branch on the whole batch and pick with torch.where: more arithmetic, but
#           the same ops at any batch size and no host sync (CUDA graphs). The accelerator default.
STRATEGIES = ("gather", "where")


def default_strategy(device: "torch.device | str") -> str:
    """'gather' on CPU, where a host sync is free and arithmetic is the cost; 'where' on accelerators."""
    return "gather" if torch.device(device).type == "cpu" else "where"


def resolve_strategy(strategy: "str | None", device: "torch.device | str", what: str = "strategy") -> str:
    """`strategy` checked, or the device's default when None; `what` names it in the error."""
    if strategy is None:
        return default_strategy(device)
    if strategy not in STRATEGIES:
        raise UserError(f"unknown {what} '{strategy}'; valid: {', '.join(STRATEGIES)}")
    return strategy


def _cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_context(device: torch.device, precision: str, cache: bool = True):
    """bf16 autocast where it is fast (CUDA with bf16, CPUs with AVX512-BF16/AMX), else nothing.

    cache=False for a step captured as a CUDA graph: autocast's cache of cast weights would be
    filled during capture and go stale (torch.cuda.make_graphed_callables asks for this)."""
    if precision not in ("auto", "bf16", "fp32"):
        raise UserError(f"unknown precision '{precision}'; valid: auto, bf16, fp32")
    if precision == "fp32":
        return nullcontext()
    if precision == "auto":
        fast = torch.cuda.is_bf16_supported() if device.type == "cuda" else _cpu_has_fast_bf16()
        if not fast:
            return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache)


def inference_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen eval-mode copy of `model` for forward passes only, BatchNorm folded into its convs.

    A frozen teacher runs a forward pass every distillation step; folding its BatchNorms (torch.fx)
    made the demo teacher's forward about 20% faster on CPU (benchmarks/bench_augment.py reports the
    KD step). Networks fx cannot trace are used as they are.
    """
    import copy

    from torch.fx.experimental.optimization import fuse

    if isinstance(model, torch.jit.ScriptModule):  # cannot be copied or traced: used as it is
        return model.eval()
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    try:  # fuse() works on its own copy, so a failure leaves `frozen` intact
        if isinstance(getattr(frozen, "net", None), torch.nn.Module):  # ImageClassifier: fold the network
            frozen.net = fuse(frozen.net)
        else:
            frozen = fuse(frozen)
    except Exception:  # untraceable control flow (some timm/torchvision models): unfolded is still correct
        pass
    return frozen


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 1024, device: torch.device | None = None,
            precision: str = "auto", progress: str | None = None) -> torch.Tensor:
    """Logits (N, K) float32 on the CPU for uint8 images (N, C, H, W), in eval mode."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    starts = range(0, images.shape[0], batch_size)
    with autocast_context(device, precision):
        for start in tqdm(starts, desc=progress, leave=False, disable=progress is None or not parallel.is_main()):
            x = images[start:start + batch_size].to(device, non_blocking=True).float().div_(255)
            out.append(model(x.contiguous(memory_format=torch.channels_last)).float().cpu())
    model.train(was_training)
    return torch.cat(out)


def evaluate_logits(logits: torch.Tensor, labels: torch.Tensor, num_classes: int,
                    reference_logits: torch.Tensor | None = None) -> dict:
    """Top-1 accuracy, per-class accuracy and, given a reference (the teacher), agreement with it."""
    pred = logits.argmax(1)
    correct = (pred == labels).float()
    per_class = torch.zeros(num_classes).index_add_(0, labels, correct) / torch.bincount(labels, minlength=num_classes).clamp(min=1)
    result = {"accuracy": correct.mean().item(), "per_class_accuracy": [round(a, 4) for a in per_class.tolist()]}
    if reference_logits is not None:
        result["teacher_agreement"] = (pred == reference_logits.argmax(1)).float().mean().item()
    return result
