"""The gradient attack's 'where' strategy: a fixed number of slots, refilled with the set's next images.

Images cross after very different numbers of steps: most in 1-3, a few never within max_steps. A
batch stepped max_steps times with its finished images frozen (as the bisection runner does)
would compute every image max_steps + 1 times: 22 teacher gradients per image by default, where
the CPU's gather loop computes 3-10. Here B slots each take one step per iteration, and a slot
whose image has finished (crossed, or out of steps) takes the set's next image in the same
iteration: every shape is fixed, nothing syncs with the host, so the launches per iteration do
not depend on B or on how many images finish and the iteration is captured once as a CUDA graph;
and the arithmetic follows the steps taken, as gather's does, plus the drain at the end (the
last images' steps, with slots idle beside them).

An image's trajectory is the gather loop's, step for step (rows are independent): its first
iteration in a slot evaluates the image itself (GradientAttack._start's gradient), each later one
judges a signed step (boundary_attack.judge_step). The host asks once per round of max_steps + 1
iterations (the longest an image stays in a slot) whether the set is done: one sync per round.
Results go to set-sized buffers by index (row N takes the writes of slots with nothing to report).
"""

import torch
from torch import Tensor

from .boundary_attack import GradientAttack, GradientState, _input_gradient, _keep, _signed_step, judge_step


class SlotAttack(GradientAttack):
    """The signed-gradient attack over a whole set in `batch_size` slots; same results as GradientAttack."""

    def __call__(self, originals: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """The whole set: uint8 images (N, C, H, W) and targets (N,) on the device -> GradientAttack's fields."""
        count, slots = len(originals), min(self.batch_size, len(originals))
        self._allocate(originals, targets, slots)
        self._refill()  # the first B images
        iterate = self._iteration
        if self.capture:
            from .capture import ReplayedCall

            iterate = ReplayedCall(self._iteration, "the boundary attack's step (slots)")
        while True:
            for _ in range(self.max_steps + 1):
                iterate()
            self.passes += (self.max_steps + 1) * slots
            if bool(self.next.ge(count).logical_and(~self.state.active.any())):  # the one host sync per round
                break
        return self._results()

    def _allocate(self, originals: Tensor, targets: Tensor, slots: int) -> None:
        """The slots' state (B rows, all free) and the set's result buffers (N + 1 rows), on the device."""
        count, device = len(originals), originals.device
        self.images, self.targets, self.count = originals, targets, count
        x0, low, high = self._ball(originals[:slots])
        nothing = torch.zeros(slots, dtype=torch.bool, device=device)
        self.state = GradientState(
            x0, torch.zeros_like(x0), low, high, torch.full((slots,), self.first_step, device=device),
            top_x=torch.zeros(slots, device=device), class_x=targets[:slots].clone(), targets=targets[:slots].clone(),
            active=nothing.clone(), crossed=nothing.clone(), within=nothing.clone(),
            steps=torch.zeros_like(targets[:slots]),
            pre=x0.clone(), post=x0.clone(), post_gradient=torch.zeros_like(x0), pre_class=targets[:slots].clone())
        self.fresh = nothing.clone()  # (B,) the slot's image is new: this iteration evaluates it
        self.index = torch.full((slots,), count, dtype=torch.int64, device=device)  # (B,) its row in the set
        self.next = torch.zeros(1, dtype=torch.int64, device=device)  # the set's next image to load
        # (N + 1,) rows: the set's results; the last one is where slots with nothing to report write.
        self.out = {"crossed": torch.zeros(count + 1, dtype=torch.bool, device=device),
                    "within": torch.zeros(count + 1, dtype=torch.bool, device=device),
                    "steps": torch.zeros(count + 1, dtype=torch.int64, device=device),
                    "pre_class": torch.zeros(count + 1, dtype=torch.int64, device=device),
                    "step": torch.zeros(count + 1, device=device),
                    # uint8: iterates are on the grid, and the deeper step needs the gradient's sign only
                    "pre": torch.zeros_like(originals[:1]).repeat(count + 1, 1, 1, 1),
                    "post": torch.zeros_like(originals[:1]).repeat(count + 1, 1, 1, 1),
                    "post_sign": torch.zeros(count + 1, *originals.shape[1:], dtype=torch.int8, device=device)}

    def _iteration(self) -> None:
        """Each slot's next teacher gradient: its new image itself, or a signed step; then its verdict,
        its result written if it finished, and a new image if it is free. In place, no host sync."""
        s, fresh = self.state, self.fresh
        stepped = _signed_step(s.x, s.gradient, s.step, s.low, s.high)
        candidate = torch.where(fresh.view(-1, 1, 1, 1), s.x, stepped)
        logits, gradient = _input_gradient(self.teacher, candidate, s.targets, self.autocast)
        top, predicted = logits.softmax(1).max(1)
        was_active = s.active.clone()
        # A new image's evaluation is its start; already t (a precision tie) counts as a failure.
        _keep(fresh, gradient, s.gradient), _keep(fresh, top, s.top_x), _keep(fresh, predicted, s.class_x)
        s.active.logical_and_(~(fresh & (predicted == s.targets)))
        judge_step(s, s.active & ~fresh, candidate, gradient, top, predicted, self.threshold, self.max_step)
        s.active.logical_and_(s.steps < self.max_steps)  # out of steps: a failure
        self._record(was_active & ~s.active)
        self._refill()

    def _record(self, finished: Tensor) -> None:
        """The finished slots' (B,) results into their images' rows of the set's buffers."""
        s, out = self.state, self.out
        rows = torch.where(finished, self.index, self.count)  # (B,) the others write to the spare row
        for name in ("crossed", "within", "steps", "pre_class", "step"):
            out[name].index_copy_(0, rows, getattr(s, name))
        out["pre"].index_copy_(0, rows, s.pre.mul(255).round().to(torch.uint8))
        out["post"].index_copy_(0, rows, s.post.mul(255).round().to(torch.uint8))
        out["post_sign"].index_copy_(0, rows, s.post_gradient.sign().to(torch.int8))

    def _refill(self) -> None:
        """Free slots (not active) take the set's next images, in slot order; past the set's end they stay idle."""
        s = self.state
        free = ~s.active  # (B,)
        wanted = self.next + free.long().cumsum(0) - 1  # (B,) the image each free slot would take
        load = free & (wanted < self.count)
        source = wanted.clamp(max=self.count - 1)
        x0, low, high = self._ball(self.images[source])
        _keep(load, x0, s.x), _keep(load, low, s.low), _keep(load, high, s.high)
        _keep(load, self.targets[source], s.targets)
        s.step.masked_fill_(load, self.first_step), s.steps.masked_fill_(load, 0)
        s.crossed.masked_fill_(load, False), s.within.masked_fill_(load, False)
        s.active.logical_or_(load)
        self.fresh.copy_(load)
        _keep(free, torch.where(load, source, self.count), self.index)
        self.next.add_(free.sum())

    def _results(self) -> dict[str, Tensor]:
        out, count, slots = self.out, self.count, len(self.index)
        crossed, within, steps = out["crossed"][:count], out["within"][:count], out["steps"][:count]
        kept = (crossed & within).nonzero().flatten()  # (K,) a host sync, once per set
        images, labels = [], []
        for chunk in kept.split(slots):  # the deeper copies, a slot-sized batch at a time
            _, low, high = self._ball(self.images[chunk])
            pre, post = out["pre"][chunk].float().div(255), out["post"][chunk].float().div(255)
            samples, classes = self._deeper(pre, post, out["post_sign"][chunk].float(), out["pre_class"][chunk],
                                            self.targets[chunk], low, high, out["step"][chunk])
            images.append(samples), labels.append(classes)
        if not images:
            images.append(torch.zeros(self.roles, 0, *self.images.shape[1:], dtype=torch.uint8,
                                      device=self.images.device))
            labels.append(torch.zeros(self.roles, 0, dtype=torch.int64, device=self.images.device))
        return {"crossed": crossed, "within": within, "steps": steps, "kept": kept,
                "images": torch.cat(images, 1), "labels": torch.cat(labels, 1)}
