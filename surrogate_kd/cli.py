"""The command line: parse, call the library function of the same name, print its result.

Every command is a function of `surrogate_kd.api` with the same name and the same options
(`train-teacher --epochs 3` is `api.train_teacher(epochs=3)`). Options default to "unset" and
only what the user gave is passed on, so the library owns every default (recipe.py for training)
and `--help` shows the library's values. Bad input ends with one line, `surrogate-kd: error: ...`,
and exit status 2.
"""

import argparse
import inspect
import json
import sys

from . import __version__
from .config import BOUNDARY_KEEPS, KD_TARGETS, RefineConfig, parse_assignments
from .recipe import (BOUNDARY_FRACTION, BOUNDARY_KEEP, HEAVY_FROM, REFINE_GRAIN_LIMIT, REFINE_STEPS, SET_IMAGES,
                     distill_recipe, teacher_recipe)
from .errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line and exit status 2 like every other bad input."""

    def error(self, message: str):
        print(f"surrogate-kd: error: {self.prog.removeprefix('surrogate-kd ')}: {message}", file=sys.stderr)
        sys.exit(2)


def _library(name: str):
    from . import api

    return getattr(api, name)


def _default(command: str, name: str):
    """The library's default for a parameter of a command, for --help."""
    return inspect.signature(_library(command)).parameters[name].default


def _add(p, command: str, flag: str, help: str, **kwargs) -> None:
    """An option whose default is the library's (shown in --help), passed on only when given."""
    dest = kwargs.pop("dest", flag.lstrip("-").replace("-", "_"))
    default = _default(command, dest)
    unset = default is inspect.Parameter.empty or default is None or kwargs.get("action") == "store_true"
    shown = "" if unset else f" (default: {default})"
    p.add_argument(flag, dest=dest, default=None, help=help + shown, **kwargs)


def _add_training_flags(p, recipes: dict) -> None:
    """Flags over TrainConfig; --help shows each default from the library's recipes (recipe.py),
    per data kind where they differ, so no default is written here."""

    def default(name: str) -> str:
        kinds_of: dict[str, list[str]] = {}  # each value, with the kinds that take it
        for kind, cfg in recipes.items():
            kinds_of.setdefault(str(getattr(cfg, name)), []).append(kind)
        if len(kinds_of) == 1:
            return f"default: {next(iter(kinds_of))}"
        listed = {value: ", ".join(kinds[:-1]) + " and " * (len(kinds) > 1) + kinds[-1] for value, kinds in kinds_of.items()}
        return "default: " + "; ".join(f"{value} for {kinds}" for value, kinds in listed.items())

    g = p.add_argument_group("training (defaults: the recipe for the command and data kind, see recipe.py; "
                             "--set KEY=VALUE reaches every TrainConfig field)")
    g.add_argument("--epochs", type=float, help=f"passes over the set ({default('epochs')})")
    g.add_argument("--lr", type=float, help=f"peak learning rate, cosine to 0 ({default('lr')})")
    g.add_argument("--batch-size", type=int, help=f"images per step, over all processes ({default('batch_size')})")
    g.add_argument("--regime", help=f"augmentation regime: none, standard, high, extreme ({default('regime')})")
    g.add_argument("--no-mixup", dest="mixup", action="store_const", const=False,
                   help=f"no mixup (mixup {default('mixup')})")
    g.add_argument("--seed", type=int, help=f"fixes weights, data order and augmentation ({default('seed')})")
    g.add_argument("--device", help=f"auto, cpu, cuda, cuda:N ({default('device')})")
    g.add_argument("--precision", help=f"auto (bf16 where fast), bf16, fp32 ({default('precision')})")
    g.add_argument("--config", help="YAML file of TrainConfig settings, layered over the defaults")
    g.add_argument("--set", dest="settings", action="append", metavar="KEY=VALUE",
                   help="set any TrainConfig field, e.g. tau=4; augment.FIELD=VALUE for a regime field; repeatable")
    g.add_argument("--overwrite", action="store_true", default=None,
                   help="replace another run in --out (never a teacher, never files that are not a run)")


def _call(command: str, args) -> dict:
    """Call the library function with the options the user gave (unset ones keep the library's defaults)."""
    fn = _library(command)
    accepted = inspect.signature(fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    given = {k: v for k, v in vars(args).items() if v is not None and k not in ("func", "command")}
    return fn(**{k: v for k, v in given.items() if k in accepted or takes_any})


def _print(result) -> None:
    from .parallel import is_main

    if not is_main():  # under torchrun every rank holds the result; rank 0 prints it
        return
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=2, default=str))


def _params(args) -> None:
    """--param KEY=VALUE items -> a synthetic source's keyword arguments (values read as YAML)."""
    if args.params is not None:
        args.params = dict(parse_assignments(args.params, "--param"))


def cmd_train_teacher(args):
    _print(_call("train_teacher", args))


def cmd_distill(args):
    _params(args)
    _print(_call("distill", args))


def cmd_evaluate(args):
    _print(_call("evaluate", args))


def cmd_demo(args):
    report = _call("demo", args)
    print(f"report: {report['out']}/report.md")
    print(report["table"])


def cmd_synthesize(args):
    _params(args)
    path = _call("synthesize", args)
    print(f"wrote {args.count} {args.source} images to {path}")


def cmd_augment_preview(args):
    print(_call("augment_preview", args))


def cmd_boundary(args):
    _print(_call("boundary", args))


def cmd_select(args):
    _print(_call("select", args))


def cmd_split(args):
    _print(_call("split", args))


def cmd_import_teacher(args):
    _print(_call("import_teacher", args))


def cmd_experiment(args):
    report = _call("experiment", args)
    print(report["table"])
    print(f"results: {report['out']}/results.md, results.csv")


def cmd_explain(args):
    report = _call("explain", args)
    print(json.dumps({k: v for k, v in report.items() if k not in ("config",)}, indent=2, default=str))


def cmd_score(args):
    from .report import markdown_table
    from .score import TABLE_COLUMNS

    rows = _call("score", args)
    print(markdown_table(rows, TABLE_COLUMNS))
    print(f"report: {args.out or _default('score', 'out')}/score.json, score.md, class_histograms.png")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="surrogate-kd",
                     description="Distill an image classifier into a smaller student without the data it was trained on.")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = "train_teacher"
    p = sub.add_parser("train-teacher", help="train a teacher on labelled data (paper's teacher recipe)")
    _add(p, c, "--data", "named dataset (fashion-mnist, mnist, cifar10, cifar100), .npz, pool or image folder")
    _add(p, c, "--arch", "architecture: a registered name, torchvision:NAME or timm:NAME")
    _add(p, c, "--out", "run directory: weights, sidecar, metrics, result")
    _add(p, c, "--eval-data", "labelled set to report accuracy on, e.g. fashion-mnist:test")
    _add(p, c, "--download", "allow downloading named datasets", action="store_true")
    _add_training_flags(p, {"teachers": teacher_recipe()})
    p.set_defaults(func=cmd_train_teacher)

    c = "distill"
    p = sub.add_parser("distill", help="distill a teacher into a student through surrogate data")
    p.add_argument("--teacher", required=True, help="teacher checkpoint (.safetensors with its .json sidecar)")
    p.add_argument("--data", required=True,
                   help="shaders, leaves, noise, photos, a named dataset, .npz, pool or image folder")
    _add(p, c, "--param", "a parameter of the synthetic source in --data, e.g. figure=0; repeatable",
         dest="params", action="append", metavar="KEY=VALUE")
    _add(p, c, "--student", "student architecture")
    _add(p, c, "--out", "run directory: weights, sidecar, metrics, result, samples.png")
    _add(p, c, "--data-kind", "picks the recipe (tau, regime); default: synthetic for sources but photos, else real",
         choices=["real", "synthetic"])
    p.add_argument("--tau", type=float, help=f"KD temperature (default: {distill_recipe('real').tau:g} for real data, "
                                             f"{distill_recipe('synthetic').tau:g} for synthetic below {HEAVY_FROM:,} images and "
                                             f"{distill_recipe('synthetic', HEAVY_FROM).tau:g} from there)")
    p.add_argument("--targets", choices=KD_TARGETS, help="what the student learns from the teacher: soft (its tempered softmax), logits (the "
                                                          "logits themselves), onehot / smoothed (its argmax as a label), per-image (soft at "
                                                          "tau x the spread of the teacher's logits on each image over the batch's median); "
                                                          f"default: {distill_recipe('synthetic').targets}")
    _add(p, c, "--candidates", "images drawn before teacher-balanced selection", type=int)
    _add(p, c, "--per-class", f"images kept per predicted class (default: {SET_IMAGES:,} images split over the teacher's "
                                "classes; 0: keep all)", type=int)
    _add(p, c, "--stream", "fresh synthetic images every step, teacher-balanced on the fly unless --per-class 0",
         action="store_true")
    _add(p, c, "--boundary-fraction", "attack this fraction of the candidates for decision-boundary samples "
                                      f"(paper Sect. 4.1; default: {BOUNDARY_FRACTION:g} for a fixed synthetic set of a "
                                      "teacher with gradients, else 0)", type=float)
    _add(p, c, "--boundary-targets", "class each boundary pair is pushed towards",
         choices=["random", "nearest", "least-predicted"])
    _add(p, c, "--boundary-method", "how boundary pairs are found: gradient (signed-gradient attack), bisection "
                                    "(forward passes only), auto (bisection for black-box teachers)",
         choices=["auto", "gradient", "bisection"])
    _add(p, c, "--boundary-keep", "which of each boundary pair's samples join the set: all (the pair and its deeper "
                                  "copies, one more step into each side), pairs, or deeper (the copies alone); "
                                  f"default: {BOUNDARY_KEEP}",
         choices=list(BOUNDARY_KEEPS))
    _add(p, c, "--refine-steps", "refine the selected images (not the boundary samples) this many steps towards the "
                                  "teacher's BatchNorm statistics (DeepInversion's prior; a fixed synthetic set of a "
                                  f"teacher with BatchNorm; default: {REFINE_STEPS} when the teacher's pixel gradient "
                                  f"is smoother than noise (grain below {REFINE_GRAIN_LIMIT:g}, docs/recipe.md study "
                                  "11), else 0; the log says which)",
         type=int)
    _add(p, c, "--refine-bn-weight", "for a refinement: the weight of the BatchNorm statistics term against the "
                                      f"class term (default: {RefineConfig.bn_weight}; 0: the class term alone)",
         type=float)
    _add(p, c, "--refine-blur", "for a refinement: the Gaussian sigma in pixels that smooths each step, so that "
                                "refinement cannot add pixel-scale grain (default: "
                                f"{RefineConfig.blur}; 0: raw gradient steps)",
         type=float)
    _add(p, c, "--adapt", "steer the shader programs with the teacher's predictions first (default: on for "
                          "shaders and teachers of up to 100 classes; --no-adapt: plain shaders)",
         action=argparse.BooleanOptionalAction)
    _add(p, c, "--boundary-every-epoch", "recompute the boundary samples from the selected set every epoch "
                                         "(default: once, added to the candidates before selection)",
         action="store_true")
    _add(p, c, "--eval-data", "labelled set to report accuracy on, e.g. fashion-mnist:test")
    _add(p, c, "--download", "allow downloading named datasets", action="store_true")
    _add_training_flags(p, {f"{kind} data{suffix}": distill_recipe(kind, budget) for kind in ("real", "synthetic")
                            for budget, suffix in ((None, ""), (HEAVY_FROM, f" from {HEAVY_FROM:,} images"))})
    p.set_defaults(func=cmd_distill)

    c = "evaluate"
    p = sub.add_parser("evaluate", help="accuracy of a model on a labelled set")
    p.add_argument("--model", required=True, help="checkpoint (.safetensors with its .json sidecar)")
    p.add_argument("--data", required=True, help="labelled set: named dataset, .npz, pool or image folder")
    _add(p, c, "--teacher", "also report agreement with this teacher")
    _add(p, c, "--device", "auto, cpu, cuda, cuda:N")
    _add(p, c, "--download", "allow downloading named datasets", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    c = "demo"
    p = sub.add_parser("demo", help="Fashion-MNIST teacher distilled through five data sources; writes a report")
    _add(p, c, "--out", "folder for the runs and report.md")
    _add(p, c, "--quick", "a tiny budget, for checking the pipeline (minutes)", action="store_true")
    _add(p, c, "--device", "auto, cpu, cuda, cuda:N")
    p.set_defaults(func=cmd_demo)

    c = "synthesize"
    p = sub.add_parser("synthesize", help="write a pool of synthetic images")
    p.add_argument("source", help="shaders, leaves, noise, photos")
    p.add_argument("--count", type=int, required=True, help="images to render")
    p.add_argument("--out", required=True, help="the pool directory to write")
    _add(p, c, "--size", "image side in pixels", type=int)
    _add(p, c, "--channels", "1 or 3", type=int)
    _add(p, c, "--seed", "stream seed: image i is a pure function of (seed, i)", type=int)
    _add(p, c, "--overwrite", "replace a pool at --out", action="store_true")
    _add(p, c, "--device", "cpu, cuda, cuda:N")
    _add(p, c, "--param", "a source parameter, e.g. figure=0 (shaders), shapes=400 (leaves); repeatable",
         dest="params", action="append", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_synthesize)

    c = "augment_preview"
    p = sub.add_parser("augment-preview", help="one image under many draws of an augmentation regime")
    p.add_argument("--data", required=True, help="image set: named dataset, .npz, pool or image folder")
    _add(p, c, "--regime", "none, standard, high, extreme")
    _add(p, c, "--set", "override a regime field, e.g. elastic_p=0; repeatable", dest="settings",
         action="append", metavar="KEY=VALUE")
    _add(p, c, "--size", "image side in pixels", type=int)
    _add(p, c, "--channels", "1 or 3", type=int)
    _add(p, c, "--index", "which image of the set", type=int)
    _add(p, c, "-n", "number of draws", type=int, dest="n")
    _add(p, c, "--seed", "draws' seed", type=int)
    _add(p, c, "--out", "PNG file to write")
    p.set_defaults(func=cmd_augment_preview)

    c = "boundary"
    p = sub.add_parser("boundary", help="add decision-boundary samples (pairs + deeper copies) to an image set")
    p.add_argument("--teacher", required=True, help="teacher checkpoint")
    p.add_argument("--data", required=True, help="a pool, named dataset, .npz or image folder")
    p.add_argument("--out", required=True, help="the pool to write: the images plus the samples, teacher-labelled")
    _add(p, c, "--fraction", "share of the images to attack", type=float)
    _add(p, c, "--targets", "class each pair is pushed towards", choices=["random", "nearest", "least-predicted"])
    _add(p, c, "--threshold", "max top softmax of both images of a pair", type=float)
    _add(p, c, "--max-steps", "attack steps per image", type=int)
    _add(p, c, "--epsilon", "L-inf budget in [0, 1] pixel units", type=float)
    _add(p, c, "--seed", "which images are attacked, and their targets", type=int)
    _add(p, c, "--method", "gradient attack, or gradient-free bisection (auto: bisection for black-box teachers)",
         choices=["auto", "gradient", "bisection"])
    _add(p, c, "--keep", "which of each pair's samples join the pool: all (the pair and its deeper copies), "
         "pairs, or deeper (the copies alone)", choices=list(BOUNDARY_KEEPS))
    _add(p, c, "--device", "auto, cpu, cuda, cuda:N")
    _add(p, c, "--overwrite", "replace a pool at --out", action="store_true")
    p.set_defaults(func=cmd_boundary)

    c = "select"
    p = sub.add_parser("select", help="the paper's teacher-balanced set D_K (or a long-tail one) as a pool")
    p.add_argument("--teacher", required=True, help="teacher checkpoint")
    p.add_argument("--data", required=True,
                   help="shaders, leaves, noise, photos, a named dataset, .npz, pool or image folder")
    p.add_argument("--per-class", type=int, required=True, help="images per predicted class (N_i)")
    p.add_argument("--out", required=True, help="the pool to write: images, teacher labels and logits")
    _add(p, c, "--total", "images in all (default per-class x classes); kept when classes are missing", type=int)
    _add(p, c, "--long-tail", "quotas decay geometrically, largest/smallest = RATIO", type=float, metavar="RATIO")
    _add(p, c, "--cap", "at most this many images (paper: 50K)", type=int)
    _add(p, c, "--candidates", "images drawn from a source, or sampled from a set (0: all)", type=int)
    _add(p, c, "--seed", "candidates and draws", type=int)
    _add(p, c, "--device", "auto, cpu, cuda, cuda:N")
    _add(p, c, "--overwrite", "replace a pool at --out", action="store_true")
    _add(p, c, "--download", "allow downloading named datasets", action="store_true")
    _add(p, c, "--adapt", "steer the shader programs with the teacher's predictions first, as distill does "
                          "(default: distill's rule, on for teachers of up to 100 classes; --no-adapt: plain shaders)",
         action=argparse.BooleanOptionalAction)
    p.set_defaults(func=cmd_select)

    c = "split"
    p = sub.add_parser("split", help="split a labelled real set into in-domain and out-of-domain pools by a class map")
    p.add_argument("--data", required=True, help="labelled set: named dataset, .npz, pool or image folder")
    p.add_argument("--class-map", required=True, help="YAML/JSON: every teacher class -> the dataset labels showing it")
    p.add_argument("--teacher", required=True, help="teacher checkpoint (for its class names)")
    p.add_argument("--out", required=True, help="folder for the pools id/ and ood/")
    _add(p, c, "--overwrite", "replace pools at --out", action="store_true")
    p.set_defaults(func=cmd_split)

    c = "experiment"
    p = sub.add_parser("experiment", help="a grid of distillation runs from one YAML file, and its tables")
    p.add_argument("config", help="the experiment's YAML file (configs/ has the paper's studies)")
    _add(p, c, "--set", "KEY=VALUE over the file, dotted keys, e.g. recipe.budget_images=1000; repeatable",
         dest="settings", action="append", metavar="KEY=VALUE")
    _add(p, c, "--only", "run only the cells matching NAME (a cell, teacher, set, variant or axis=value); repeatable",
         action="append", metavar="NAME")
    _add(p, c, "--jobs", "cells run in parallel (processes)", type=int)
    p.set_defaults(func=cmd_experiment)

    c = "explain"
    p = sub.add_parser("explain", help="the paper's Fig. 2 toy: decision regions of a 2-D feature teacher and its students")
    _add(p, c, "--out", "folder for the runs and figures")
    _add(p, c, "--sets", "distillation sets, e.g. digits shaders fashion-mnist", nargs="+")
    _add(p, c, "--candidates", "images drawn per set", type=int)
    _add(p, c, "--budget-images", "training images per student", type=int)
    _add(p, c, "--teacher-epochs", "epochs of the toy teacher", type=float)
    _add(p, c, "--seed", "everything drawn", type=int)
    _add(p, c, "--device", "auto, cpu, cuda, cuda:N")
    _add(p, c, "--download", "allow downloading named datasets", action="store_true")
    p.set_defaults(func=cmd_explain)

    c = "score"
    p = sub.add_parser("score", help="rank candidate distillation sets for a teacher, without distilling")
    p.add_argument("--teacher", required=True, help="teacher checkpoint")
    p.add_argument("--data", required=True, action="append", help="an image set or source; repeat for several")
    _add(p, c, "--candidates", "images scored per set (0: all of a stored set)", type=int)
    _add(p, c, "--out", "folder for score.json, score.md, class_histograms.png")
    _add(p, c, "--seed", "which candidates", type=int)
    _add(p, c, "--device", "auto, cpu, cuda, cuda:N")
    _add(p, c, "--adapt", "score shaders steered by the teacher, as distill renders them (default: distill's rule, "
                          "on for teachers of up to 100 classes; --no-adapt: plain shaders)",
         action=argparse.BooleanOptionalAction)
    p.set_defaults(func=cmd_score)

    c = "import_teacher"
    p = sub.add_parser("import-teacher", help="a checkpoint directory from a state dict, TorchScript file or ONNX "
                                              "model trained elsewhere")
    p.add_argument("--out", required=True, help="the checkpoint directory to write (then: --teacher DIR)")
    teacher_file = p.add_argument_group("the teacher file (one of)")
    _add(teacher_file, c, "--weights", "a state dict: .safetensors, or .pt/.pth (read with weights_only=True)")
    _add(teacher_file, c, "--torchscript", "a TorchScript file (torch.jit.save), used as a black box")
    _add(teacher_file, c, "--onnx", "an ONNX model, run with onnxruntime, without gradients")
    _add(p, c, "--arch", "the architecture of --weights: torchvision:NAME, timm:NAME or a registered name")
    _add(p, c, "--classes", "a text file of class names, one a line, in the order of the outputs")
    _add(p, c, "--num-classes", "the number of classes, named 0..N-1 (instead of --classes; an ONNX model's "
                                "output shape may give it)", type=int)
    from .foreign import PRESETS

    _add(p, c, "--preset", "size, channels, mean and std by name; the options below replace its values",
         choices=list(PRESETS))
    _add(p, c, "--size", "input side in pixels (an ONNX model's input shape may give it)", type=int)
    _add(p, c, "--channels", "1 or 3 (default: 3, or the preset's)", type=int)
    _add(p, c, "--mean", "per-channel mean on the [0, 1] scale, e.g. 0.485 0.456 0.406", type=float, nargs="+")
    _add(p, c, "--std", "per-channel std on the [0, 1] scale, e.g. 0.229 0.224 0.225", type=float, nargs="+")
    _add(p, c, "--overwrite", "replace a checkpoint at --out", action="store_true")
    p.set_defaults(func=cmd_import_teacher)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error already printed as one line
        return int(e.code or 0)
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
