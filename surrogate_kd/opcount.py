"""What a call dispatches, counted on any device: the CPU-visible side of GPU readiness.

On a GPU a 32x32 training step is launch-bound: each aten op is a kernel launch of ~10 us, a
host sync (`.item()`, `nonzero`, boolean-mask indexing) stalls the CPU until the GPU catches up,
and a tensor made from Python data per call (`torch.tensor([...])`) is a host->device copy that
also makes CUDA-graph capture impossible. All three show on a CPU as dispatched aten ops, so
tests and benchmarks count them here, without a GPU:

    with OpCounter() as ops:
        augment(images, regime, generator)
    ops.total, ops.host_syncs, ops.python_tensors

A code path whose op count does not grow with the batch size, with no host syncs and no tensors
from Python data, can be replayed as one CUDA graph.
"""

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Ops that make the host wait for the device (their result's size or value is needed on the host).
HOST_SYNC_OPS = frozenset({
    "aten._local_scalar_dense",  # .item(), int(t), bool(t), float(t)
    "aten.nonzero", "aten.nonzero_static", "aten.masked_select", "aten.unique", "aten._unique2",
    "aten.unique_consecutive", "aten.unique_dim", "aten.repeat_interleave", "aten.equal", "aten.is_nonzero",
    "aten.argwhere", "aten.bincount", "aten._assert_async",
})
# torch.tensor(python data) -> lift_fresh: a new host tensor (and, on a GPU, a copy) on every call.
PYTHON_TENSOR_OPS = frozenset({"aten.lift_fresh", "aten.lift_fresh_copy"})


def op_name(func) -> str:
    return f"aten.{func._schema.name.split('::', 1)[-1]}"


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched inside the block, by name.

    Boolean-mask indexing (`x[mask]`) dispatches `aten.index` with a bool index, which syncs
    like nonzero: it is counted as `aten.index(bool mask)` and among the host syncs.
    """

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = op_name(func)
        if name in ("aten.index", "aten.index_put", "aten.index_put_") and _has_bool_index(args):
            name += "(bool mask)"
        self.ops[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    @property
    def host_syncs(self) -> dict[str, int]:
        return {name: n for name, n in self.ops.items() if name in HOST_SYNC_OPS or name.endswith("(bool mask)")}

    @property
    def python_tensors(self) -> int:
        return sum(n for name, n in self.ops.items() if name in PYTHON_TENSOR_OPS)


def _has_bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else None
    return isinstance(indices, (list, tuple)) and any(
        isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)
