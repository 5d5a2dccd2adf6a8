"""Running a Plan's cells: teachers first, each one's cells as soon as it is ready, in this process
(jobs=1) or in worker processes that share out the CPU threads and GPUs. A cell is one `distill`
run directory, so a finished one is reused and an interrupted one resumes (rundir.py)."""

import json
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from .. import api
from ..errors import UserError, first_line
from ..files import atomic_write_text, writable_directory
from .planner import Cell, Plan, Teacher


def _distill(long_tail: float | None = None, pool: str | None = None, **kwargs) -> dict:
    """api.distill; with `long_tail`, from a long-tailed selection written to `pool` first (reused when
    it was made by this teacher with these options)."""
    if long_tail is None:
        return api.distill(**kwargs)
    from ..teacher import load_teacher, teacher_fingerprint

    teacher = load_teacher(kwargs["teacher"])
    wanted = {"teacher_fingerprint": teacher_fingerprint(teacher), "data": kwargs["data"],
              "per_class": kwargs["per_class"], "long_tail": long_tail, "candidates": kwargs["candidates"],
              "seed": kwargs["config"].seed, "adapt": kwargs.get("adapt")}
    summary_file = Path(pool + ".json")
    try:
        summary = json.loads(summary_file.read_text())
        if summary.get("wanted") != wanted or not (Path(pool) / "manifest.json").exists():
            summary = None
    except (OSError, ValueError):
        summary = None
    if summary is None:
        summary = api.select(teacher, kwargs["data"], pool, kwargs["per_class"], long_tail=long_tail,
                             candidates=kwargs["candidates"], seed=wanted["seed"], overwrite=True,
                             download=kwargs.get("download", False), adapt=wanted["adapt"])
        summary = {"wanted": wanted, **{k: v for k, v in summary.items() if k != "out"}}
        atomic_write_text(summary_file, json.dumps(summary, indent=2))
    # The long-tailed pool is the whole set (the spec allows no boundary samples beside it).
    result = api.distill(**{**kwargs, "data": pool, "candidates": 0, "per_class": 0, "boundary_fraction": 0.0})
    # The candidates' relative entropy, like every other cell's (the pool's own is the long tail's).
    return {**result, "relative_entropy": summary["relative_entropy_candidates"],
            "relative_entropy_selected": summary["relative_entropy_selected"]}


def _work(kind: str, kwargs: dict, log: str | None) -> dict:
    """One teacher or cell, in this process or a worker; with `log`, its output goes there."""
    fn = {"teacher": api.train_teacher, "evaluate": api.evaluate, "distill": _distill}[kind]
    if log is None:
        return fn(**kwargs)
    with open(log, "a") as f, redirect_stdout(f), redirect_stderr(f):
        return fn(**kwargs)


def _init_worker(threads: int, slots, gpus: list[int]) -> None:
    """A worker process: its share of the CPU threads, and one GPU of its own when there are several."""
    slot = slots.get()
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus[slot % len(gpus)])
    import torch

    torch.set_num_threads(threads)


class _InProcess:
    """The executor for jobs=1: each task runs in this process, output on the terminal, when `next_done`
    asks for it, in the order submitted (so a teacher's line prints before its cells run)."""

    def __init__(self):
        self._tasks: dict[Future, tuple] = {}

    def submit(self, fn, *args) -> Future:
        future = Future()
        self._tasks[future] = (fn, args)
        return future

    def next_done(self, pending) -> list[Future]:
        future = next(iter(pending))
        fn, args = self._tasks.pop(future)
        try:
            future.set_result(fn(*args))
        except Exception as e:  # noqa: BLE001  reported with the cell, like a worker's exception
            future.set_exception(e)
        return [future]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _executor(jobs: int, device: str | None):
    if jobs <= 1:
        return _InProcess()
    import multiprocessing

    import torch

    context = multiprocessing.get_context("spawn")  # no forked copies of torch's threads
    slots = context.Queue()
    for i in range(jobs):
        slots.put(i)
    gpus = list(range(torch.cuda.device_count())) if device != "cpu" and torch.cuda.device_count() > 1 else []
    threads = max(1, (os.cpu_count() or 1) // jobs)
    return ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker, initargs=(threads, slots, gpus))


def _teacher_task(plan: Plan, t: Teacher) -> tuple[str, dict]:
    if t.config is None:  # a checkpoint: only its accuracy to find out
        return "evaluate", {"model": str(t.checkpoint), "data": t.eval_data, "download": plan.download}
    return "teacher", {"data": t.data, "out": str(t.out), "arch": t.arch, "eval_data": t.eval_data,
                       "download": plan.download, "overwrite": plan.overwrite, "config": t.config}


def _cell_task(plan: Plan, cell: Cell) -> dict:
    return {"teacher": str(plan.teachers[cell.teacher].checkpoint), "out": str(cell.out), "student": cell.arch,
            **cell.options, "download": plan.download, "overwrite": plan.overwrite, "config": cell.config}


def say(message: str) -> None:
    print(f"experiment: {message}", flush=True)


def run_cells(plan: Plan, cells: list[Cell], jobs: int) -> tuple[dict[str, dict], dict[str, dict], dict[str, str]]:
    """Teachers first, each one's cells as soon as it is ready; returns teacher results, cell results, failures."""
    teacher_results, cell_results, failed = {}, {}, {}
    logs = writable_directory(plan.out / "logs") if jobs > 1 else None
    with _executor(jobs, cells[0].config.device) as pool:
        pending: dict[Future, tuple[str, str]] = {}

        def submit(kind: str, name: str, task: str, kwargs: dict) -> None:
            log = str(logs / (name.replace("/", "--") + ".log")) if logs else None
            if logs:
                say(f"{kind} {name}: started (log: {log})")
            pending[pool.submit(_work, task, kwargs, log)] = (kind, name)

        for name in dict.fromkeys(c.teacher for c in cells):
            submit("teacher", name, *_teacher_task(plan, plan.teachers[name]))
        while pending:
            if isinstance(pool, _InProcess):
                done = pool.next_done(pending)
            else:
                done = wait(list(pending), return_when=FIRST_COMPLETED)[0]
            for future in done:
                kind, name = pending.pop(future)
                try:
                    result = future.result()
                except Exception as e:  # noqa: BLE001  one failed cell must not lose the others
                    failed[name] = first_line(e) if isinstance(e, UserError) else f"{type(e).__name__}: {first_line(e)}"
                    say(f"{kind} {name}: failed: {failed[name]}")
                    if kind == "teacher":
                        for c in cells:
                            if c.teacher == name:
                                failed[c.name] = f"teacher {name} failed"
                    continue
                accuracy = result.get("test_accuracy") or result.get("accuracy")
                how = ("reused" if result.get("reused") else f"{result['seconds']:.0f} s" if "seconds" in result
                       else "checkpoint")
                say(f"{kind} {name}: test accuracy {'-' if accuracy is None else f'{accuracy:.4f}'} ({how})")
                if kind == "teacher":
                    teacher_results[name] = result
                    for c in cells:
                        if c.teacher == name:
                            submit("cell", c.name, "distill", _cell_task(plan, c))
                else:
                    cell_results[name] = result
    return teacher_results, cell_results, failed
