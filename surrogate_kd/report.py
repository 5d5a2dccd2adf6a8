"""Tables and plots shared by the demo and any experiment: markdown, class histograms, bars."""

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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
