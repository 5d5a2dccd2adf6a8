"""How a source spends its work on a batch: only where it is needed ('gather'), or the same everywhere ('where').

Images differ in what they need: each shader image runs its own program and is redrawn when the
filter rejects it, and a dead-leaves image needs deeper rounds only where gaps are left. Two ways
to render that, with the same bytes on CPU:

    gather  group the work by what each image needs and run it on those images or pixels only:
            least arithmetic, but shapes that depend on the data (a host sync each time they are
            read) and an op count that follows the batch's mix. The CPU default: a sync costs
            nothing there and arithmetic is the cost.
    where   run every branch, every redraw and every round on the whole batch and pick with
            torch.where: several times the arithmetic, but the same ops at any batch size and
            any mix, no host sync and no tensor from Python data, so a GPU runs the batch as one
            stream of large kernels (and a CUDA graph can capture it). The accelerator default.
"""

from typing import Callable, Mapping

from torch import Tensor

from ..augment import apply_grouped  # the one group-by-choice dispatch, shared with augmentation


def per_image(
    choice: Tensor, fns: Mapping[int, Callable[..., "Tensor | tuple[Tensor, ...]"]], *inputs: Tensor,
    outputs: int = 1, strategy: str = "gather",
) -> "Tensor | tuple[Tensor, ...]":
    """Row b of the result is `fns[choice[b]]` applied to row b of the inputs; rows without a function keep them.

    choice: (B,) int64; inputs: (B, ...) each. Each function takes all the inputs and returns new
    values for the first `outputs` of them, shaped like them; it must treat rows independently
    and elementwise, so that a row's result does not depend on the rows beside it.
    'gather' sorts the rows by choice and runs each function on its slice (a host sync to read
    the slice bounds); 'where' runs every function on every row and picks with torch.where.
    """
    return apply_grouped(choice, fns, *inputs, outputs=outputs, sort=strategy != "where")
