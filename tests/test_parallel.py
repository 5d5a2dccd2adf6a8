"""Data-parallel training (parallel.py): two CPU processes over gloo, one thread each.

Two ranks train like one process on the same global batches (for a model without BatchNorm and
without random augmentation, to float rounding), end with the same weights, resume together,
and write each file once; the command line runs under torchrun.
"""

import gc
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, replace
from typing import Callable

import pytest
import torch
import torch.multiprocessing as mp

from surrogate_kd import parallel
from surrogate_kd.batches import ArrayBatches
from surrogate_kd.cli import main
from surrogate_kd.config import TrainConfig
from surrogate_kd.data import open_images
from surrogate_kd.distill import train
from surrogate_kd.errors import UserError


@dataclass(frozen=True)
class Tiny:
    """What a rank needs to build and train tiny models: conftest's helpers, handed to spawned
    processes by pickle (a fixture cannot reach them)."""

    model: Callable  # spec -> ImageClassifier
    interrupt_at: type  # (batches, step) -> batches that raise KeyboardInterrupt at step
    config: TrainConfig  # 16 steps of 64

    def train(self, data, spec, seed: int = 0, batch_sizes: set | None = None, **kwargs):
        """A tiny model trained on `config`; `batch_sizes` collects the sizes of the batches it trained on."""
        torch.manual_seed(seed)
        model = self.model(spec)
        if batch_sizes is not None:
            model.register_forward_pre_hook(lambda module, args: batch_sizes.add(args[0].shape[0]) if module.training else None)
        run = train(model, ArrayBatches(data, self.config.batch_size, 0, torch.device("cpu")), self.config, **kwargs)
        return model, run


@pytest.fixture
def tiny(tiny_model, interrupt_at, fast_config) -> Tiny:
    return Tiny(tiny_model, interrupt_at, replace(fast_config, epochs=2, log_every=4, checkpoint_every=1, device="cpu"))


@pytest.fixture
def one_thread():
    """Each rank runs one thread; the test process, training beside them, keeps to one as well."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_worker(rank: int, port: int, dataset, spec, out, tiny: Tiny):
    """One of two ranks, as torchrun would start it: a full run, an interrupted and resumed one, and
    one where the ranks' batches differ."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    gc.disable()  # no automatic collection: whatever is freed before exit, parallel.shutdown frees
    data = open_images(str(dataset))
    batch_sizes = set()
    model, run = tiny.train(data, spec, batch_sizes=batch_sizes, eval_set=data, run_dir=out / "full")

    batches = ArrayBatches(data, tiny.config.batch_size, 0, torch.device("cpu"))
    torch.manual_seed(0)
    try:
        train(tiny.model(spec), tiny.interrupt_at(batches, 11), tiny.config, run_dir=out / "resumed")  # state saved at step 8
    except KeyboardInterrupt:
        pass
    resumed, _ = tiny.train(data, spec, seed=123, run_dir=out / "resumed")  # another init: all from state.pt
    with pytest.raises(UserError, match="disagree on the training batch"):  # as if each had other data
        train(tiny.model(spec), ArrayBatches(data, tiny.config.batch_size, rank, torch.device("cpu")), tiny.config)
    parallel.shutdown()
    # The interrupted and refused runs' DDP wrappers sat in reference cycles through their
    # tracebacks; left for interpreter exit, they can abort the process (see parallel.shutdown).
    wrappers_left = sum(isinstance(o, torch.nn.parallel.DistributedDataParallel) for o in gc.get_objects())
    torch.save({"full": model.state_dict(), "resumed": resumed.state_dict(), "accuracy": run.eval_accuracy,
                "loss": run.final_loss, "batch_sizes": batch_sizes, "wrappers_left": wrappers_left},
               out / f"rank{rank}.pt")


def test_two_ranks_train_like_one_process_and_resume_together(tiny_dataset, tiny_spec, tiny, tmp_path, one_thread):
    data = open_images(str(tiny_dataset))
    alone, alone_run = tiny.train(data, tiny_spec, eval_set=data)

    mp.spawn(rank_worker, args=(free_port(), tiny_dataset, tiny_spec, tmp_path, tiny), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["wrappers_left"] == ranks[1]["wrappers_left"] == 0, "no DDP wrapper outlives the process group"
    assert ranks[0]["batch_sizes"] == ranks[1]["batch_sizes"] == {tiny.config.batch_size // 2}, "each rank trains on half"
    for name, weights in alone.state_dict().items():
        # Rank 0 and rank 1 hold the very same weights; each half-batch's gradient averaged over
        # the ranks is the whole batch's gradient, so the pair trains as one process does.
        assert torch.equal(ranks[0]["full"][name], ranks[1]["full"][name])
        torch.testing.assert_close(ranks[0]["full"][name], weights, rtol=1e-5, atol=1e-5)
        # Interrupted at step 11, resumed from the step-8 state: the uninterrupted run's weights.
        torch.testing.assert_close(ranks[1]["resumed"][name], ranks[0]["full"][name], rtol=1e-5, atol=1e-5)
    # Every rank returns the same result: the loss averaged over the ranks, rank 0's accuracy.
    assert ranks[0]["accuracy"] == ranks[1]["accuracy"] == pytest.approx(alone_run.eval_accuracy)
    assert ranks[0]["accuracy"] > 0.95
    assert ranks[0]["loss"] == ranks[1]["loss"] == pytest.approx(alone_run.final_loss, rel=1e-4)
    # One writer: each logged step appears once, and the loss went down.
    records = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 8, 12, 16]
    assert records[-1]["loss"] < records[0]["loss"]


def test_torchrun_runs_distill_from_the_command_line(tiny_dataset, tmp_path, one_thread):
    tiny = ["--batch-size", "32", "--device", "cpu", "--precision", "fp32"]
    teacher = tmp_path / "teacher"
    assert main(["train-teacher", "--data", str(tiny_dataset), "--arch", "convnet_tiny", "--out", str(teacher),
                 "--epochs", "2", *tiny]) == 0
    out = tmp_path / "student"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "surrogate_kd", "distill", "--teacher", str(teacher / "model.safetensors"),
               "--data", str(tiny_dataset), "--out", str(out), "--candidates", "256", "--per-class", "64",
               "--epochs", "3", "--eval-data", str(tiny_dataset), *tiny]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count('"student": "convnet_tiny"') == 1, "rank 0 alone prints the result"
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 24 and result["test_accuracy"] > 0.5  # 4 classes: chance is 0.25
    assert (out / "model.safetensors").exists() and (out / "samples.png").exists()
    assert not (out / "state.pt").exists()
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [8, 16, 24]


def test_a_batch_the_processes_cannot_split_is_a_one_line_error(tiny_dataset, tmp_path, monkeypatch, capsys):
    # As torchrun would set them for rank 0 of 2: the check comes before any process group.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["train-teacher", "--data", str(tiny_dataset), "--arch", "convnet_tiny", "--out", str(tmp_path / "t"),
                 "--batch-size", "33", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["surrogate-kd: error: batch size 33 does not split over 2 processes; use a multiple of 2"]
    assert not (tmp_path / "t").exists()
