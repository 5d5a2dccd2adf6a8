"""How well an image set samples a teacher, measured before anyone distills (paper Sect. 4, Discussion).

The paper's criteria for a good distillation set, each measured on the teacher's view of the set:
  relative_entropy   all classes predicted equally often: H(p) / log(C) of the class histogram
  class_coverage     each class's decision region spanned: mean over *all* classes of the
                     within-class dispersion of penultimate features (0 for a class never predicted)
  feature_diversity  diverse images, as the teacher sees them: dispersion of all features
  boundary           information near decision boundaries: 1 - mean max-softmax, rescaled to [0, 1]
  duplicates         fraction of images that repeat another one exactly (select's replication)
  relative_entropy_distinct  relative entropy over the distinct images (each counted once)
Dispersion of a group of features is 1 - |mean of f/|f||^2, the mean pairwise cosine distance
(in [0, 1] for the non-negative features of ReLU nets): scale-free, so sets compare for one teacher.

distillability = relative_entropy_distinct * feature_diversity ** 0.5: see docs/selection.md for
why these two, why this form, and the studies on four teachers that chose it over two earlier
forms. Relative entropy alone is the baseline the score has to beat.
"""

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .adapt import adapted_params, should_adapt
from .errors import UserError
from .files import writable_directory
from .report import rare_classes
from .runtime import predict, resolve_device
from .teacher import class_histogram, load_candidates, load_teacher, relative_entropy

THUMBNAIL = 8  # side of the thumbnails whose spread is the pixel-space diversity figure


class _Penultimate(nn.Module):
    """The teacher's penultimate features as a module, so `predict` batches them like logits."""

    def __init__(self, teacher):
        super().__init__()
        self.teacher = teacher

    def forward(self, x):
        return self.teacher.features(x)


def dispersion(features: torch.Tensor) -> float:
    """(N, D) -> mean pairwise cosine distance 1 - |mean of unit vectors|^2; 0 for fewer than 2 rows."""
    if features.shape[0] < 2:
        return 0.0
    unit = F.normalize(features.double(), dim=1)
    n = unit.shape[0]
    # Mean over pairs i != j (not i == j, whose distance is 0): n/(n-1) corrects the plain mean.
    return float((1 - unit.mean(0).square().sum()) * n / (n - 1))


def criteria(logits: torch.Tensor, features: torch.Tensor, images: torch.Tensor) -> dict:
    """The paper's criteria for one set: logits (N, K), features (N, D), uint8 images (N, C, H, W)."""
    num_classes = logits.shape[1]
    predictions = logits.argmax(1)
    counts = class_histogram(predictions, num_classes)
    max_softmax = logits.float().softmax(1).max(1).values  # (N,)
    spreads = [dispersion(features[predictions == c]) for c in range(num_classes)]
    thumbnails = F.adaptive_avg_pool2d(images.float().div(255), THUMBNAIL).flatten(1)  # (N, C*8*8)
    # RMS distance between two random thumbnails, per pixel: sqrt(2 * total variance / dims).
    pixel_spread = (2 * thumbnails.var(0).sum() / thumbnails.shape[1]).sqrt().item() if len(images) > 1 else 0.0
    # Each distinct image counted once (its first copy): replicating an image adds rows, not information.
    rows = images.flatten(1).cpu().contiguous().numpy()
    first = np.unique(rows.view(np.dtype((np.void, rows.shape[1]))).ravel(), return_index=True)[1]
    distinct_counts = class_histogram(predictions[torch.from_numpy(first).to(predictions.device)], num_classes)
    return {
        "images": len(predictions),
        "relative_entropy": relative_entropy(counts),
        "relative_entropy_distinct": relative_entropy(distinct_counts),
        "classes_missing": int((counts == 0).sum()),
        "class_histogram": counts.tolist(),
        "max_softmax_mean": max_softmax.mean().item(),
        "max_softmax_std": max_softmax.std().item() if len(max_softmax) > 1 else 0.0,
        "boundary": (1 - max_softmax.mean().item()) / (1 - 1 / num_classes),
        "class_spread": [round(s, 4) for s in spreads],
        "class_coverage": sum(spreads) / num_classes,
        "feature_diversity": dispersion(features),
        "pixel_diversity": pixel_spread,
        "duplicates": 1 - len(first) / max(len(rows), 1),
    }


def distillability(row: dict) -> float:
    """One number from the criteria: relative entropy over the distinct images (are all classes
    predicted evenly, without counting copies?), discounted by how little of the teacher's feature
    space the set spans (are the images diverse as the teacher sees them?). Monotone in both; 0
    when the teacher predicts a single class or sees every image alike."""
    return row["relative_entropy_distinct"] * row["feature_diversity"] ** 0.5


def teacher_features(teacher, images: torch.Tensor, logits: torch.Tensor, device, batch_size: int):
    """(N, D) penultimate features, or the logits when the architecture exposes none (named in the row)."""
    if not hasattr(teacher.net, "features"):
        return logits, "logits"
    return predict(_Penultimate(teacher), images, batch_size=batch_size, device=device), "penultimate"


def score(teacher, datas: list[str], out_dir: str | Path | None = None, candidates: int = 10000, seed: int = 0,
          device: str = "auto", batch_size: int = 1024, adapt: bool | None = None) -> list[dict]:
    """Rank candidate distillation sets for `teacher`, best first, without distilling.

    Each set is read as `select` reads it (a pool, .npz, folder, named dataset, or a synthetic
    source's first `candidates` images) and at most `candidates` random images of it are scored,
    so every set is measured at the same size. `shaders` are scored as `distill` would render
    them: steered by the teacher when `adapt` (None: `distill`'s rule, adapt.adapts_by_default),
    plain otherwise; the row says which. With `out_dir`, writes score.json, score.md and
    class_histograms.png there.
    """
    if not datas:
        raise UserError("score needs at least one image set")
    if adapt and "shaders" not in datas:
        raise UserError(f"adapt steers shader programs; none of {', '.join(datas)} is shaders")
    if out_dir is not None:
        writable_directory(Path(out_dir))  # a bad --out fails now, not after every set is scored
    model = load_teacher(teacher)
    dev = resolve_device(device)
    rows = []
    for data in datas:
        steered = data == "shaders" and should_adapt(data, model.num_classes, adapt)
        params = adapted_params(model, {}, seed, dev)[0] if steered else None
        images, logits = load_candidates(model, data, candidates, seed, dev, batch_size=batch_size,
                                         source_params=params)
        features, space = teacher_features(model, images.images, logits, dev, batch_size)
        row = {"data": data + (" (adaptive)" if steered else ""), **criteria(logits, features, images.images),
               "feature_space": space}
        row["rare_classes"] = rare_classes(row["class_histogram"], list(model.spec.classes))
        row["distillability"] = distillability(row)
        rows.append(row)
    rows.sort(key=lambda r: -r["distillability"])
    if out_dir is not None:
        write_report(rows, list(model.spec.classes), Path(out_dir))
    return rows


TABLE_COLUMNS = [("data", "image set"), ("distillability", "distillability"), ("relative_entropy", "rel. entropy"),
                 ("relative_entropy_distinct", "rel. entropy, distinct"), ("classes_missing", "classes missing"),
                 ("class_coverage", "class coverage"), ("feature_diversity", "feature diversity"),
                 ("pixel_diversity", "pixel diversity"), ("duplicates", "duplicates"),
                 ("max_softmax_mean", "max-softmax mean"), ("max_softmax_std", "max-softmax std"),
                 ("rare_classes", "rarely predicted (< 1/4 of an even share)")]


def write_report(rows: list[dict], classes: list[str], out: Path) -> str:
    """score.json, score.md (the table) and class_histograms.png in `out`; returns the table."""
    from .files import atomic_write_text
    from .report import markdown_table, plot_class_histograms

    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows, TABLE_COLUMNS)
    atomic_write_text(out / "score.json", json.dumps(rows, indent=2))
    atomic_write_text(out / "score.md", table + "\n")
    plot_class_histograms({r["data"]: r["class_histogram"] for r in rows}, classes, out / "class_histograms.png",
                          subtitles={r["data"]: f"score {r['distillability']:.3f}, rel. ent. {r['relative_entropy']:.3f}"
                                     for r in rows})
    return table
