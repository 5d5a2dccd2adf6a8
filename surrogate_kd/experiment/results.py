"""An experiment's results: results.csv, results.json and results.md (tables in the paper's layout)
and the plots, from the runs of this call and those finished earlier."""

import csv
import json
import os
import platform
import sys
from dataclasses import asdict
from pathlib import Path

from ..checkpoint import provenance
from ..errors import UserError
from ..files import atomic_write, atomic_write_text
from ..recipe import describe
from ..rundir import MODEL_FILE, RESULT_FILE, as_json
from .planner import Plan

CSV_COLUMNS = ("cell", "teacher", "student", "set", "variant", "status", "teacher_accuracy", "relative_entropy",
               "relative_entropy_with_boundary", "selected", "test_accuracy", "steps", "seconds", "recipe", "run",
               "error")


def _earlier_result(path: Path, train: dict | None) -> dict | None:
    """A finished run's result.json in `path`, when it was made with this training config (for cells
    and teachers this call did not run: --only)."""
    try:
        result = json.loads((path / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not (path / MODEL_FILE).exists() or (train is not None and result.get("config", {}).get("train") != train):
        return None
    return result


def _rows(plan: Plan, teacher_results: dict, cell_results: dict, failed: dict) -> tuple[dict, list[dict]]:
    teachers = {}
    for name, t in plan.teachers.items():
        result = teacher_results.get(name)
        if result is None and t.out is not None:
            result = _earlier_result(t.out, as_json(asdict(t.config)))
        teachers[name] = {"teacher": name, "arch": t.arch, "data": t.data or "-",
                          "test_accuracy": (result or {}).get("test_accuracy", (result or {}).get("accuracy")),
                          "parameters": (result or {}).get("parameters"), "seconds": (result or {}).get("seconds"),
                          "checkpoint": str(t.checkpoint)}
    rows = []
    for cell in plan.cells:
        result, status = cell_results.get(cell.name), None
        if result is not None:
            status = "reused" if result.get("reused") else "done"
        elif cell.name in failed:
            status = "failed"
        else:
            result = _earlier_result(cell.out, as_json(asdict(cell.config)))
            status = "earlier" if result else "not run"
        result = result or {}
        rows.append({"cell": cell.name, "teacher": cell.teacher, "student": cell.student, "set": cell.set,
                     "variant": cell.variant or "", **dict(cell.axes), "status": status,
                     "teacher_accuracy": teachers[cell.teacher]["test_accuracy"],
                     "relative_entropy": result.get("relative_entropy"),
                     "relative_entropy_with_boundary": result.get("relative_entropy_with_boundary"),
                     "selected": result.get("selected"), "test_accuracy": result.get("test_accuracy"),
                     "steps": result.get("steps"), "seconds": result.get("seconds"), "recipe": describe(cell.config),
                     "run": str(cell.out), "error": failed.get(cell.name, ""),
                     "class_histogram": result.get("class_histogram")})
    return teachers, rows


def pivot(plan: Plan, rows: list[dict], value: str, by: tuple[str, ...]) -> tuple[list[dict], list[tuple[str, str]]]:
    """Rows keyed by `by` (e.g. teacher, student, axes) with one column per set holding `value`."""
    table: dict[tuple, dict] = {}
    for row in rows:
        key = tuple(row.get(k) for k in by)
        entry = table.setdefault(key, {k: row.get(k) for k in by})
        if entry.get(row["set"]) is None:
            entry[row["set"]] = row.get(value)
    return list(table.values()), [(k, k) for k in by] + [(s, s) for s in plan.sets]


def write_results(plan: Plan, teacher_results: dict, cell_results: dict, failed: dict, command: str,
                  seconds: float) -> dict:
    """results.csv, results.json, results.md and the plots in plan.out; returns what they hold."""
    from ..report import markdown_table, plot_accuracy, plot_class_histograms  # matplotlib: only when writing

    teachers, rows = _rows(plan, teacher_results, cell_results, failed)
    out = plan.out
    columns = list(CSV_COLUMNS[:5]) + list(plan.axes) + list(CSV_COLUMNS[5:])

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(out / "results.csv", write_csv)
    labelled = [{**r, "teacher": f"{r['teacher']} ({_fmt(r['teacher_accuracy'])})"} for r in rows]
    by = ("teacher", "student", *plan.axes)
    accuracy_rows, accuracy_columns = pivot(plan, labelled, "test_accuracy", by)
    accuracy_table = markdown_table(accuracy_rows, accuracy_columns)
    entropy_rows, entropy_columns = pivot(plan, rows, "relative_entropy", ("teacher", *plan.set_axes))
    md = [f"# Experiment: {plan.name}", ""] + ([plan.description.strip(), ""] if plan.description else [])
    md += [f"Command: `{command}`", "", f"Machine: {machine()}; {seconds:.0f} s for this call.", "",
           "## Student test accuracy", "",
           "Rows: teacher (its test accuracy) x student" + (f" x {', '.join(plan.axes)}" if plan.axes else "")
           + "; columns: distillation sets (paper Table 1 layout).", "", accuracy_table, "",
           "## Relative entropy of the teacher's predictions over each set's candidates (paper Table 3)", "",
           markdown_table(entropy_rows, entropy_columns), ""]
    if any(r["relative_entropy_with_boundary"] is not None for r in rows):
        boundary_rows, boundary_columns = pivot(plan, rows, "relative_entropy_with_boundary",
                                                ("teacher", *plan.set_axes))
        md += ["With the boundary samples added (before selection):", "",
               markdown_table(boundary_rows, boundary_columns), ""]
    md += ["## Teachers", "", markdown_table(list(teachers.values()), [
        ("teacher", "teacher"), ("arch", "arch"), ("data", "data"), ("parameters", "parameters"),
        ("test_accuracy", "test acc."), ("seconds", "seconds"), ("checkpoint", "checkpoint")]), "",
           "## Cells", "", markdown_table(rows, [("cell", "cell"), ("status", "status"), ("selected", "images"),
                                                 ("steps", "steps"), ("seconds", "seconds"), ("recipe", "recipe")]),
           ""]
    if any(r["test_accuracy"] is not None for r in rows):
        plot_accuracy(accuracy_rows, by, plan.sets, out / "accuracy.png")
        md += ["![student test accuracy](accuracy.png)", ""]
    for name, t in plan.teachers.items():
        histograms = {}
        for r in rows:
            if r["teacher"] == name and r["class_histogram"] and r["set"] not in histograms:
                histograms[r["set"]] = r["class_histogram"]
        if histograms and t.checkpoint.exists():
            from ..teacher import load_teacher

            classes = list(load_teacher(t.checkpoint).spec.classes)
            entropy = {r["set"]: r["relative_entropy"] for r in reversed(rows) if r["teacher"] == name}
            plot_class_histograms(histograms, classes, out / f"class_histograms-{name}.png",
                                  subtitles={s: f"rel. entropy {_fmt(entropy.get(s))}" for s in histograms})
            md += [f"![class histograms of teacher {name}](class_histograms-{name}.png)", ""]
    if failed:
        md += ["## Failed", ""] + [f"- `{name}`: {message}" for name, message in failed.items()] + [""]
    atomic_write_text(out / "results.md", "\n".join(md))
    for r in rows:
        r.pop("class_histogram")
    report = {"name": plan.name, "out": str(out), "command": command, "machine": machine(), **provenance(),
              "teachers": teachers, "results": rows, "failed": failed, "table": accuracy_table,
              "seconds": round(seconds, 1)}
    atomic_write_text(out / "results.json", json.dumps(report, indent=2, default=str))
    if failed:
        first = next(iter(failed.items()))
        raise UserError(f"{len(failed)} of the experiment's runs failed (first: {first[0]}: {first[1]}); "
                        f"the others' results are in {out / 'results.md'}")
    return report


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def machine() -> str:
    """What the numbers were measured on: CPU model and count, torch, and the GPU when there is one."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{os.cpu_count()} x {cpu}{gpu}, torch {torch.__version__}, Python {sys.version.split()[0]}"

