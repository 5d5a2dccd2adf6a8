"""The command line: parse, build a config, call one library function, print its result.

Every command is also a Python function of the same name (see api.py, demo.py, pool.py, augment.py).
Bad input ends with a one-line `surrogate-kd: error: ...` and exit status 2.
"""

import argparse
import json
import sys
from dataclasses import replace

from . import __version__
from .config import TrainConfig, from_yaml, override, parse_assignments
from .errors import UserError


def _train_config(args, base: TrainConfig) -> TrainConfig:
    cfg = from_yaml(TrainConfig, args.config) if args.config else base
    flags = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed,
             "device": args.device, "regime": args.regime, "precision": args.precision}
    if getattr(args, "tau", None) is not None:
        flags["tau"] = args.tau
    if getattr(args, "targets", None) is not None:
        flags["targets"] = args.targets
    cfg = replace(cfg, **{k: v for k, v in flags.items() if v is not None})
    if args.no_mixup:
        cfg = replace(cfg, mixup=False)
    return override(cfg, args.set)


def _source_params(items: list[str]) -> dict:
    """--param KEY=VALUE items -> a synthetic source's keyword arguments (values read as YAML)."""
    return dict(parse_assignments(items, "--param"))


def _add_training_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training (defaults: the paper's recipe; see TrainConfig)")
    g.add_argument("--epochs", type=float)
    g.add_argument("--lr", type=float)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--regime", help="augmentation regime: none, standard, high, extreme")
    g.add_argument("--no-mixup", action="store_true")
    g.add_argument("--seed", type=int)
    g.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    g.add_argument("--precision", help="auto (bf16 where fast), bf16, fp32")
    g.add_argument("--config", help="YAML file of TrainConfig defaults")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any TrainConfig field; augment.FIELD=VALUE for a regime field")


def _print(result) -> None:
    from .parallel import is_main

    if not is_main():  # under torchrun every rank holds the result; rank 0 prints it
        return
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=2, default=str))


def cmd_train_teacher(args):
    from .api import train_teacher

    cfg = _train_config(args, TrainConfig(regime="standard", mixup=False))
    _print(train_teacher(args.data, args.out, args.arch, cfg, eval_data=args.eval_data, download=args.download))


def cmd_distill(args):
    from .api import DEFAULT_TAU, default_data_kind, distill

    kind = args.data_kind or default_data_kind(args.data)
    base = TrainConfig(tau=DEFAULT_TAU.get(kind, 4.0), regime="high" if kind == "synthetic" else "standard")
    cfg = _train_config(args, base)
    boundary = None
    if args.boundary_every_epoch and not args.boundary_fraction:
        raise UserError("--boundary-every-epoch needs --boundary-fraction (the share of the set to attack)")
    if args.boundary_fraction:
        boundary = {"fraction": args.boundary_fraction, "targets": args.boundary_targets}
        if args.boundary_every_epoch:
            boundary["every_epoch"] = True
    params = _source_params(args.param)
    if params:
        from .select import is_source

        if not is_source(args.data):
            raise UserError(f"--param sets a synthetic source's parameters; '{args.data}' is not a source")
    _print(distill(args.teacher, args.data, args.out, args.student, cfg, data_kind=kind, candidates=args.candidates,
                   per_class=None if args.per_class == 0 else args.per_class, stream=args.stream,
                   eval_data=args.eval_data, download=args.download, boundary=boundary,
                   source_params=params or None))


def cmd_evaluate(args):
    from .api import evaluate

    _print(evaluate(args.model, args.data, teacher=args.teacher, device=args.device or "auto", download=args.download))


def cmd_demo(args):
    from .demo import demo

    report = demo(args.out, quick=args.quick, device=args.device or "auto")
    print(f"report: {args.out}/report.md")
    print(report["table"])


def cmd_synthesize(args):
    from .pool import synthesize

    path = synthesize(args.source, args.count, args.size, args.out, channels=args.channels, seed=args.seed,
                      device=args.device or "cpu", overwrite=args.overwrite, **_source_params(args.param))
    print(f"wrote {args.count} {args.source} images to {path}")


def cmd_augment_preview(args):
    from .augment import augment_preview, get_regime
    from .data import open_images

    images = open_images(args.data, args.size, args.channels)
    if not 0 <= args.index < len(images):
        raise UserError(f"--index {args.index} out of range: '{args.data}' has {len(images)} images")
    regime = get_regime(args.regime, **dict(kv.split("=", 1) for kv in args.set))
    print(augment_preview(images.images[args.index], regime, args.n, args.out, seed=args.seed))


def cmd_boundary(args):
    from .boundary import boundary

    _print(boundary(args.teacher, args.data, args.out, fraction=args.fraction, targets=args.targets,
                    threshold=args.threshold, max_steps=args.max_steps, epsilon=args.epsilon, seed=args.seed,
                    device=args.device or "auto", overwrite=args.overwrite))


def cmd_select(args):
    from .select import select

    _print(select(args.teacher, args.data, args.out, args.per_class, total=args.total, long_tail=args.long_tail,
                  cap=args.cap, seed=args.seed, candidates=args.candidates, device=args.device or "auto",
                  overwrite=args.overwrite, download=args.download))


def cmd_score(args):
    from .report import markdown_table
    from .score import TABLE_COLUMNS, score

    rows = score(args.teacher, args.data, args.out, candidates=args.candidates, seed=args.seed,
                 device=args.device or "auto")
    print(markdown_table(rows, TABLE_COLUMNS))
    print(f"report: {args.out}/score.json, {args.out}/class_histograms.png")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="surrogate-kd",
        description="Distill an image classifier into a smaller student without the data it was trained on.")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train-teacher", help="train a teacher on labelled data (paper's teacher recipe)")
    p.add_argument("--data", default="fashion-mnist", help="named dataset, .npz, or image folder")
    p.add_argument("--arch", default="resnet_mini")
    p.add_argument("--out", default="runs/teacher")
    p.add_argument("--eval-data", help="labelled set to report accuracy on, e.g. fashion-mnist:test")
    p.add_argument("--download", action="store_true", help="allow downloading named datasets")
    _add_training_flags(p)
    p.set_defaults(func=cmd_train_teacher)

    p = sub.add_parser("distill", help="distill a teacher into a student through surrogate data")
    p.add_argument("--teacher", required=True, help="teacher checkpoint (.safetensors with .json sidecar)")
    p.add_argument("--data", required=True, help="shaders, leaves, noise, photos, a named dataset, .npz, pool or folder")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a parameter of the synthetic source in --data, e.g. figure=0; repeatable")
    p.add_argument("--student", default="convnet_tiny")
    p.add_argument("--out", default="runs/student")
    p.add_argument("--data-kind", choices=["real", "synthetic"], help="picks tau (2 real / 20 synthetic) and regime")
    p.add_argument("--tau", type=float)
    p.add_argument("--targets", choices=["soft", "onehot", "smoothed"])
    p.add_argument("--candidates", type=int, default=50000, help="images drawn before teacher-balanced selection")
    p.add_argument("--per-class", type=int, default=2000, help="images kept per predicted class (0: keep all)")
    p.add_argument("--stream", action="store_true",
                   help="fresh synthetic images every step, teacher-balanced on the fly unless --per-class 0")
    p.add_argument("--boundary-fraction", type=float, default=0.0,
                   help="attack this fraction of the candidates for decision-boundary samples (paper Sect. 4.1)")
    p.add_argument("--boundary-targets", default="least-predicted", choices=["random", "nearest", "least-predicted"])
    p.add_argument("--boundary-every-epoch", action="store_true",
                   help="recompute the boundary samples from the selected set at every epoch (default: once, "
                        "added to the candidates before selection)")
    p.add_argument("--eval-data", help="labelled set to report accuracy on, e.g. fashion-mnist:test")
    p.add_argument("--download", action="store_true")
    _add_training_flags(p)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("evaluate", help="accuracy of a model on a labelled set")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--teacher", help="also report agreement with this teacher")
    p.add_argument("--device")
    p.add_argument("--download", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="Fashion-MNIST teacher distilled through five data sources; writes a report")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="a tiny budget, for checking the pipeline (minutes)")
    p.add_argument("--device")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("synthesize", help="write a pool of synthetic images")
    p.add_argument("source", help="shaders, leaves, noise, photos")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--device")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a source parameter, e.g. figure=0 (shaders), shapes=400 (leaves); repeatable")
    p.set_defaults(func=cmd_synthesize)

    p = sub.add_parser("augment-preview", help="one image under many draws of an augmentation regime")
    p.add_argument("--data", required=True)
    p.add_argument("--regime", default="high")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a regime field")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--index", type=int, default=0)
    p.add_argument("-n", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="augment-preview.png")
    p.set_defaults(func=cmd_augment_preview)

    p = sub.add_parser("boundary", help="add decision-boundary samples (pairs + deeper copies) to an image set")
    p.add_argument("--teacher", required=True)
    p.add_argument("--data", required=True, help="a pool, named dataset, .npz or image folder")
    p.add_argument("--out", required=True, help="the pool to write: the images plus the samples, teacher-labelled")
    p.add_argument("--fraction", type=float, default=1.0, help="share of the images to attack")
    p.add_argument("--targets", choices=["random", "nearest", "least-predicted"], default="random")
    p.add_argument("--threshold", type=float, default=0.9, help="max top softmax of both images of a pair")
    p.add_argument("--max-steps", type=int, default=20)
    p.add_argument("--epsilon", type=float, default=32 / 255, help="L-inf budget in [0, 1] pixel units")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_boundary)

    p = sub.add_parser("select", help="the paper's teacher-balanced set D_K (or a long-tail one) as a pool")
    p.add_argument("--teacher", required=True)
    p.add_argument("--data", required=True, help="shaders, leaves, noise, photos, a named dataset, .npz, pool or folder")
    p.add_argument("--per-class", type=int, required=True, help="images per predicted class (N_i)")
    p.add_argument("--total", type=int, help="images in all (default per-class x classes); kept when classes are missing")
    p.add_argument("--long-tail", type=float, metavar="RATIO", help="quotas decay geometrically, largest/smallest = RATIO")
    p.add_argument("--cap", type=int, default=50000, help="at most this many images (paper: 50K)")
    p.add_argument("--candidates", type=int, default=50000, help="images drawn from a source, or sampled from a set (0: all)")
    p.add_argument("--out", required=True, help="the pool to write: images, teacher labels and logits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--download", action="store_true")
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("score", help="rank candidate distillation sets for a teacher, without distilling")
    p.add_argument("--teacher", required=True)
    p.add_argument("--data", required=True, action="append", help="an image set or source; repeat for several")
    p.add_argument("--candidates", type=int, default=10000, help="images scored per set (0: all of a stored set)")
    p.add_argument("--out", default="runs/score", help="folder for score.json, score.md, class_histograms.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device")
    p.set_defaults(func=cmd_score)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"surrogate-kd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("surrogate-kd: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
