"""Tables and plots shared by the demo, the score and experiments: markdown, class histograms, bars."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """rows of dicts -> a markdown table; columns are (key, header) pairs; floats get 3-4 digits."""

    def cell(v):
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines)


def rare_classes(counts: list[int], classes: list[str], share: float = 0.25) -> str:
    """The classes the teacher predicts for fewer than `share` of an even split, rarest first,
    with their share of the predictions: why a set is weak, before anyone distills from it.

    Balancing can only repeat the few images of such a class (see `duplicates` in the score)."""
    total = sum(counts)
    if not total:
        return "all (no predictions)"
    even = total / len(counts)
    rare = sorted((c, name) for c, name in zip(counts, classes) if c < share * even)
    return ", ".join(f"{name} ({100 * c / total:.1f}%)" for c, name in rare) or "none"


def plot_class_histograms(histograms: dict[str, list[int]], classes: list[str], path: Path,
                          subtitles: dict[str, str] | None = None) -> Path:
    """One bar chart per image set of how often the teacher predicts each class."""
    n = len(histograms)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.0), sharey=False, squeeze=False)
    for ax, (name, counts) in zip(axes[0], histograms.items()):
        total = max(1, sum(counts))
        ax.bar(range(len(counts)), [c / total for c in counts], color="tab:blue")
        ax.set_title(name + (f"\n{subtitles[name]}" if subtitles and name in subtitles else ""), fontsize=9)
        ax.set_xticks(range(len(classes)))
        ax.set_xticklabels(classes, rotation=90, fontsize=6)
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("fraction of teacher predictions")
    return _save(fig, path)


def plot_bars(values: dict[str, float], path: Path, ylabel: str, reference: float | None = None,
              reference_label: str = "") -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    bars = ax.bar(list(values), list(values.values()), color="tab:green")
    ax.bar_label(bars, labels=[f"{v:.3f}" for v in values.values()], fontsize=8)
    if reference is not None:
        ax.axhline(reference, color="gray", linestyle="--", linewidth=1)
        ax.text(len(values) - 0.5, reference, reference_label, ha="right", va="bottom", fontsize=8, color="gray")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)
    return _save(fig, path)


def plot_accuracy(rows: list[dict], by: tuple[str, ...], sets: tuple[str, ...], path: Path) -> Path:
    """Grouped bars: one group per distillation set, one bar per row (teacher x student x variant)."""
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(sets) * max(1, len(rows)) ** 0.5 + 2), 3.6))
    for i, row in enumerate(rows):
        values = [row.get(s) if row.get(s) is not None else 0.0 for s in sets]
        label = ", ".join(str(row[k]) for k in by if len({str(r[k]) for r in rows}) > 1) or str(row[by[0]])
        bars = ax.bar([x + (i - (len(rows) - 1) / 2) * width for x in range(len(sets))], values, width, label=label)
        if len(rows) <= 4:
            ax.bar_label(bars, labels=[f"{v:.3f}" if v else "" for v in values], fontsize=7)
    ax.set_xticks(range(len(sets)))
    ax.set_xticklabels(sets)
    ax.set_ylabel("student test accuracy")
    ax.set_ylim(0, 1.05)
    if len(rows) > 1:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    """Lay out, write and close the figure (pyplot keeps every open figure alive until closed)."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
