"""The training step replayed as one CUDA graph: augmentation, mixup, teacher, student and SGD.

At 32x32 a distillation step is launch-bound: ~1,200 augmentation ops plus the networks' forward
and backward passes, each a kernel launch of ~10 us, while the arithmetic takes less. Captured
once and replayed, the whole step costs one launch (issue 10 measured 36,600 images/s captured
vs 8,700 end to end on an H200 for ResNet-34 -> ResNet-18).

What makes the step capturable, and is checked on a CPU by tests/test_capture.py:
- no host synchronisation and no tensor made from Python data inside it (opcount.OpCounter);
- static shapes: the batch is copied into fixed input buffers before each replay;
- the learning rate is a device tensor the SGD update reads (`sgd_update`), so the schedule
  needs no re-capture;
- randomness from one CUDA generator registered with the graph and re-seeded on the host
  before every replay with the step's seed: replay k draws exactly what the eager step k
  would, so captured and eager runs agree and a resumed run continues exactly.

Capture is attempted on CUDA, alone (not under torchrun or torch.compile), unless the config
says capture=false; if anything in it fails (a model with data-dependent control flow, an op
without a capturable kernel), training goes on eagerly and says so once.
"""

import sys
from typing import Callable

import torch


@torch.no_grad()
def sgd_update(optimizer: torch.optim.SGD, lr: torch.Tensor) -> None:
    """torch.optim.SGD's update (momentum, dampening 0, weight decay, nesterov) with a tensor
    learning rate, in foreach ops that a CUDA graph can capture: SGD itself turns a tensor lr
    into a Python number (a host sync) outside torch.compile. Uses and updates SGD's own
    momentum buffers, so its state_dict (checkpoints) stays the same. Needs them to exist: at
    least one eager `optimizer.step()` first."""
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        grads = [p.grad for p in params]
        if group["weight_decay"]:
            grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        if group["momentum"]:
            buffers = [optimizer.state[p]["momentum_buffer"] for p in params]
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_add_(buffers, grads)
            grads = torch._foreach_add(grads, buffers, alpha=group["momentum"]) if group["nesterov"] else buffers
        torch._foreach_add_(params, torch._foreach_mul(grads, -lr))


class CapturedStep:
    """Replays `body(images, labels, lr) -> loss` as a CUDA graph after `warmup` eager calls.

    `eager(images, labels, lr: float)` runs one real step the ordinary way (torch.optim's
    update); `body` is the same step with `sgd_update` reading the tensor `lr`. `seed_step(step)`
    re-seeds the generator for a step; `generator` is registered with the graph. The returned
    tensor is the graph's output buffer: valid until the next call. `optimizer` (optional: a
    step without one, such as augmentation alone, can be captured too) has its gradients dropped
    before capture, so the graph allocates them in its own pool.
    """

    def __init__(self, eager: Callable, body: Callable, seed_step: Callable[[int], None],
                 generator: torch.Generator, optimizer: torch.optim.Optimizer | None = None, warmup: int = 3):
        self.eager, self.body, self.seed_step = eager, body, seed_step
        self.generator, self.optimizer, self.warmup = generator, optimizer, warmup
        self.graph = None
        self.failed = False
        self.calls = 0
        self._side_stream = torch.cuda.Stream()

    def __call__(self, step: int, images: torch.Tensor, labels: torch.Tensor | None, lr: float) -> torch.Tensor:
        if self.graph is None and not self.failed and self.calls >= self.warmup:
            self._capture(images, labels)
        self.calls += 1
        if self.graph is None:
            self.seed_step(step)
            if self.failed:
                return self.eager(images, labels, lr)
            # Warm-up on a side stream, as torch.cuda.graphs asks: lazy state (cuDNN plans, SGD's
            # momentum buffers, autocast) is made outside the capture.
            self._side_stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self._side_stream):
                loss = self.eager(images, labels, lr)
            torch.cuda.current_stream().wait_stream(self._side_stream)
            return loss
        self.static_images.copy_(images, non_blocking=True)
        if labels is not None:
            self.static_labels.copy_(labels, non_blocking=True)
        self.static_lr.fill_(lr)
        self.seed_step(step)  # host-side: the replay reads this seed, its offset starts at 0
        self.graph.replay()
        return self.static_loss

    def _capture(self, images: torch.Tensor, labels: torch.Tensor | None) -> None:
        self.static_images = images.clone()
        self.static_labels = None if labels is None else labels.clone()
        self.static_lr = torch.zeros((), device=images.device)
        graph = torch.cuda.CUDAGraph()
        try:
            graph.register_generator_state(self.generator)
            if self.optimizer is not None:
                self.optimizer.zero_grad(set_to_none=True)
            with torch.cuda.graph(graph):
                self.static_loss = self.body(self.static_images, self.static_labels, self.static_lr)
            self.graph = graph
        except Exception as error:  # anything that cannot be captured: train eagerly instead
            self.failed = True
            if self.optimizer is not None:
                self.optimizer.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            print(f"surrogate-kd: the training step could not be captured as a CUDA graph ({message}); "
                  "training eagerly (set capture=false to skip the attempt)", file=sys.stderr, flush=True)


def capture_possible(device: torch.device, compiled: bool, world_size: int) -> str | None:
    """None when the step can be captured here, else why not (said once in the log)."""
    if device.type != "cuda":
        return "not on CUDA"
    if compiled:
        return "torch.compile manages its own graphs"
    if world_size > 1:
        return "data-parallel steps synchronise gradients between processes"
    return None


class ReplayedCall:
    """`body()` replayed as a CUDA graph after `warmup` eager calls: a loop's step without inputs.

    For a loop whose state lives in tensors allocated before the first call and which `body`
    updates in place (the boundary attack's step): there is nothing to copy in, the caller
    refills the state in place between batches, and every call after the warm-up is one graph
    replay. body must hold no host sync, no tensor from Python data, and autocast's cache must be
    off inside it (runtime.autocast_context(cache=False)). If the capture fails, body runs
    eagerly from then on and `what` is said once on stderr.
    """

    def __init__(self, body: Callable[[], None], what: str, warmup: int = 2):
        self.body, self.what, self.warmup = body, what, warmup
        self.graph = None
        self.failed = False
        self.calls = 0
        self._side_stream = torch.cuda.Stream()

    def __call__(self) -> None:
        if self.graph is None and not self.failed and self.calls >= self.warmup:
            self._capture()
        self.calls += 1
        if self.graph is not None:
            self.graph.replay()  # capture records without running: this replay is the call's work
        elif self.failed:
            self.body()
        else:  # warm-up on a side stream, as torch.cuda.graphs asks (cuDNN plans, lazy state)
            self._side_stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self._side_stream):
                self.body()
            torch.cuda.current_stream().wait_stream(self._side_stream)

    def _capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.body()
            self.graph = graph
        except Exception as error:  # anything that cannot be captured: run eagerly instead
            self.failed = True
            torch.cuda.synchronize()
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            print(f"surrogate-kd: {self.what} could not be captured as a CUDA graph ({message}); running it eagerly",
                  file=sys.stderr, flush=True)
