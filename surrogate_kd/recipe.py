"""The one owner of every default: the recipe a command starts from, per data kind.

`train-teacher` and `distill` (and their API functions) resolve their TrainConfig here, and only
here: library defaults for the command and the data kind, then a YAML file of settings
(--config), then KEY=VALUE settings (--set) and explicit arguments, each layer replacing only
the fields it names. The CLI passes through what the user set and nothing else, so the same
arguments give the same config through the API and the CLI.

Teachers train with flip + crop + RandAugment (`standard`) and no mixup. Students take the
recipe measured in docs/recipe.md (configs/studies/: three teachers of three domains, 15,000 to
250,000 images, then checked on three domains no study used): tau 4, no mixup, lr 0.05 at batch
128 with Nesterov momentum, `standard` augmentation, for real and synthetic data alike; the batch is 32
below HEAVY_FROM images and 128 from there (study 15: at short budgets the student is short of
steps). More follows the budget for synthetic data: below HEAVY_FROM images tau is 3 (study 12: on
nine teachers it tied tau 4 on average and left fewer students far below the original data's),
and from there on the regime is `high` (without its elastic warp) at tau 4. The lr at batch 32 is
0.0125 for real data and 0.025 for synthetic data, 0.05 from HEAVY_FROM (study 16). The
paper's recipe (Sect. 4: tau 2 real / 20 synthetic, mixup, batch 256 at lr 0.1, `high` for
synthetic data) is for schedules of tens of millions of images; at the studies' budgets it left
students far behind (synthetic 0.23-0.42x the original data's student against 0.38-0.79x; real
data on a digit teacher 0.759 against 0.954).

A fixed synthetic set also gets the paper's decision-boundary samples (boundary.py) from
BOUNDARY_FRACTION of its candidates when the teacher has gradients (study 4 in docs/recipe.md:
seven teachers of six domains, two seeds), and its selected candidates are refined towards the
teacher's BatchNorm statistics when the teacher's pixel gradient is smoother than noise (studies
8-11: it raised those teachers' students and cost the two rougher ones).
"""

from typing import Any, Callable

from .config import RefineConfig, TrainConfig, override, read_settings
from .errors import UserError
from .refine import NOISE_GRAIN

DATA_KINDS = ("real", "synthetic")
# The fixed set `distill` trains on: this many candidates (the paper's Sect. 3.1 cap of 50,000
# surrogate images), of which SET_IMAGES are kept, split evenly over the classes the teacher
# predicts (D_K, Eq. 1: N_i per class). The paper fixes the set's size, not the share of a class
# (50,000 images for CIFAR-10 and CIFAR-100 alike). Every ten-class study in docs/recipe.md ran with
# 20,000 (2,000 per class); twice that (study 6: seven teachers, two seeds, 120,000 images) tied
# on average by trading teachers, lost 5.6 points on dots (held out) and took 1.5x the time. A fixed
# count per class instead would give a three-class teacher 6,000 images and an ImageNet one
# 2,000,000 (300 GB at 224 px), most of them copies of its 50,000 candidates (study 17).
CANDIDATES = 50_000
SET_IMAGES = 20_000
# Measured (docs/recipe.md): put back one at a time, the paper's tau 20 and mixup cost accuracy on
# two of three teachers at every budget tried; for real data the paper's whole recipe lost to this
# one on every teacher at 120,000 images. The lr (study 5, seven teachers, shaders at 120,000
# images): 0.1 lost 3.1 points on average, 0.025 tied 0.05 by trading teachers (shapes +4.7,
# Fashion-MNIST -3.2).
SHORT_SCHEDULE = dict(tau=4.0, mixup=False, batch_size=128, lr=0.05, nesterov=True, regime="standard")
# Below HEAVY_FROM images the batch is SHORT_BATCH, for real and synthetic data alike (study 15,
# docs/recipe.md: nine teachers at 120,000 images, the demo's at 250,000; batch 128 to 16 at the
# same lr). A budget in images fixes how many images the student sees, not how many steps it
# takes, and at these budgets the student is short of steps: at 120,000 images batch 128 is 937 of
# them. Real data: the original data's students averaged 0.905 at batch 32 over the nine teachers,
# against 0.897 at 16, 0.885 at 64 and 0.868 at 128. Synthetic data: 64 and 32 raised the shader
# students over 128 by 11.3 and 10.6 points on average on five cells of four teachers (dots 0.41 ->
# 0.69 / 0.63 at seed 0), and tied each other (0.815x and 0.809x the original data's student at 32),
# where the worst cell, study 12's tie-break, is 32's (0.658x against 0.626x). At 250,000 images on
# the demo's teacher, over two seeds, the shader students at 128, 64 and 32 were within 0.3 points
# of each other and the original data's half a point better at 32 than at 128. From HEAVY_FROM the
# batch stays SHORT_SCHEDULE's 128: nothing smaller was measured there.
SHORT_BATCH = 32
# The lr at SHORT_BATCH, per data kind (study 16, docs/recipe.md: batch 32 at 120,000 images).
# Study 5's 0.05 was measured at batch 128; at batch 32 it takes four times the steps, each as
# large. Real data: the original data's students of nine teachers over two seeds averaged 0.912 at
# 0.0125 (the 0.05 of batch 128 scaled with the batch) against 0.899 at 0.05, worst teacher 0.754
# against 0.727. Synthetic data: at 0.025 the mean share of the original data's student over nine
# shader cells of eight teachers rose from 0.861x to 0.886x and the worst cell from 0.658x to
# 0.779x (dots +6.1 and +12.6 points; rotations and the 8x8 digits -1.1 and -1.5).
SHORT_BATCH_LR = {"real": 0.0125, "synthetic": 0.025}
# The augmentation regime for synthetic data follows the budget (docs/recipe.md, adaptive shaders).
# From 60,000 to 250,000 images `standard` beat `high` on average over three teachers at every
# budget measured (mean 0.81x against 0.67x the original data's student at 60,000 images). `high`
# is for long schedules: the paper's best for shaders at 400 epochs, and the one 1,000,000-image
# measurement (issue 14, one H200) used it without its elastic warp, which at 250,000 images did
# no worse than with it (docs/recipe.md). Between 250,000 and 1,000,000 images nothing is measured.
HEAVY_FROM = 1_000_000
LONG_SCHEDULE = dict(regime="high", regime_overrides=(("elastic_p", 0.0),))
# Below HEAVY_FROM, synthetic data distils at tau 3 (study 12, docs/recipe.md: nine teachers, 18
# cells of 120,000 images, tau 4, 3 and 2). It began with a student that underfit its teacher
# (corruptions' disagreed with it on fresh shader images more at tau 4 than at tau 2): at short
# budgets a lower tau weights the teacher's top classes more. Tau is teacher-dependent: tau 3
# raised corruptions by 6.4 points over three seeds and shapes by 6.2 over two, cost noise spectra
# 8.5 over three, and moved dots by -20 / +16 / +4 with the seed; the mean share of the original
# data's student tied (0.855x against 0.856x), and for a tie the study's rule, set in advance, takes
# the higher worst cell (0.591x against 0.523x; cells under issue 14's 0.80x: four against six).
# Tau 2 did no better than tau 3 on any of the five cells it ran, and the logits themselves (tau's
# limit, `targets="logits"`; study 14) lost 6.6 points over nine. The long schedule keeps tau 4:
# nothing lower was measured there.
SYNTHETIC_SHORT = dict(tau=3.0)
MEASURED = "measured on three teachers of three domains at 15k-250k images (docs/recipe.md)"
# Decision-boundary samples (the paper's "teacher exploitation", Sect. 4.1; boundary.py) for a fixed
# synthetic set: attack this share of the candidates before the teacher-balanced selection, towards
# the least-predicted classes. Study 4 in docs/recipe.md (adaptive shaders, 120,000 images, seven
# teachers of six domains): from half of the candidates they raised the student on six teachers,
# by 0.4 to 15 points (shapes), and lowered it on one (digits, 7 points over two seeds); from a
# tenth, the gains were smaller and less steady. The attack took 1.5-2x the rest of a 120,000-image
# run on a CPU; it is fixed by the candidates, so it weighs less at longer budgets.
BOUNDARY_FRACTION = 0.5
# Which of a boundary pair's samples join the set (config.BOUNDARY_KEEPS): "all", the pair and its
# two deeper copies (one more step into each side), as in the paper. Study 4's `pairs` arm
# (docs/recipe.md) dropped the copies: 0.862x against 0.878x the original data's student, lower on
# six of seven teachers (8x8 digits -7.8 points). "deeper" (the copies alone) tied on the seven
# (0.884x) and cost 9.5 points on dots, the domain no study used.
BOUNDARY_KEEP = "all"


# Refining the selected candidates (not the boundary samples) towards the teacher's BatchNorm
# statistics (refine.py) for REFINE_STEPS steps, on teachers whose pixel gradient is smoother than
# noise. Study 8 (docs/recipe.md; 120,000 images) found 40 steps raised the student on the seven
# teachers it used (seed 0: 0.892x -> 0.944x the original data's student). Studies 9-10 found it cost
# `corruptions` and `spectra` (image quality, noise spectra) 15-19 and up to 8 points: teachers that
# read pixel-scale statistics, whose statistics-term gradient on plain shaders is rougher than
# independent noise (refine.teacher_grain 3.9 and 3.1; every teacher it helped 0.5-2.0). Study 11
# tested that line on three domains built after it was drawn: orientation and hue tied at their
# ceiling, blur level (grain 2.35) lost 3.9 points over three seeds (its student still 0.91x-1.01x
# the original data's): the line misses some teachers refinement costs. Over the twelve teachers
# below it refinement gained on average on eight, and issue 14's bar (seed 0) holds on ten of eleven
# held-out domains against seven without. The line is noise's own grain, not fitted. Refinement
# doubles a CPU run's time; it is fixed by the set, not the budget. 120 steps traded teachers
# (study 9).
REFINE_STEPS = RefineConfig.steps
REFINE_GRAIN_LIMIT = NOISE_GRAIN  # refine only teachers whose gradient grain is below this


def data_kind(data: str) -> str:
    """'synthetic' for generated sources; 'real' for image sets and for `photos` (real photographs,
    out of domain). The kind picks tau below HEAVY_FROM images and the regime from there."""
    from .teacher import is_source

    return "synthetic" if is_source(data) and data != "photos" else "real"


def teacher_recipe() -> TrainConfig:
    """Defaults for training a teacher on labelled data."""
    return TrainConfig(regime="standard", mixup=False)


def distill_recipe(kind: str, budget_images: "int | None" = None) -> TrainConfig:
    """Defaults for distilling through data of `kind` ('real' or 'synthetic') with a budget of
    `budget_images` training images (None: not given in images, e.g. in epochs)."""
    if kind not in DATA_KINDS:
        raise UserError(f"unknown data kind '{kind}'; valid: {', '.join(DATA_KINDS)}")
    long = budget_images is not None and budget_images >= HEAVY_FROM
    synthetic = (LONG_SCHEDULE if long else SYNTHETIC_SHORT) if kind == "synthetic" else {}
    short = {} if long else dict(batch_size=SHORT_BATCH, lr=SHORT_BATCH_LR[kind])
    return TrainConfig(**{**SHORT_SCHEDULE, **short, **synthetic})


def boundary_fraction(kind: str, stream: bool, differentiable: bool) -> tuple[float, str]:
    """The share of the candidates attacked for boundary samples when the caller does not say, and
    why: BOUNDARY_FRACTION for a fixed synthetic set of a teacher with gradients; 0 for real data
    and black-box teachers (not measured) and --stream (no fixed set)."""
    if kind != "synthetic":
        return 0.0, "none for real data"
    for off, reason in ((stream, "--stream draws fresh images"), (not differentiable, "the teacher has no gradients")):
        if off:
            return 0.0, f"none: {reason}"
    return BOUNDARY_FRACTION, f"from {BOUNDARY_FRACTION:g} of the candidates (synthetic data, docs/recipe.md study 4)"


def refine_steps(kind: str, stream: bool, refinable: bool, grain: Callable[[], float]) -> tuple[int, str]:
    """The refinement steps when the caller does not say, and why (the run's log line): REFINE_STEPS
    for a fixed synthetic set of a teacher with BatchNorm statistics and gradients whose `grain()`
    (refine.teacher_grain, measured only when all else allows refinement) is below
    REFINE_GRAIN_LIMIT; else 0."""
    if kind != "synthetic":
        return 0, "none for real data"
    for off, reason in ((stream, "--stream draws fresh images"),
                        (not refinable, "the teacher has no BatchNorm statistics or no gradients")):
        if off:
            return 0, f"none: {reason}"
    measured = grain()
    if measured >= REFINE_GRAIN_LIMIT:
        return 0, (f"none: the teacher's pixel gradient is as rough as noise (grain {measured:.2f}, limit "
                   f"{REFINE_GRAIN_LIMIT:g}), where refinement cost the studies' students (docs/recipe.md, studies 10-11)")
    return REFINE_STEPS, (f"{REFINE_STEPS} steps towards the teacher's BatchNorm statistics: its pixel gradient is "
                          f"smoother than noise (grain {measured:.2f}, limit {REFINE_GRAIN_LIMIT:g}; docs/recipe.md, "
                          f"studies 8-11)")


def per_class(num_classes: int) -> tuple[int, str]:
    """The images kept per predicted class when the caller does not say, and why (the run's log
    line): SET_IMAGES split evenly over the teacher's classes, at least one each."""
    count = max(1, round(SET_IMAGES / num_classes))
    return count, (f"{count:,} per class: {SET_IMAGES:,} images over the teacher's {num_classes} classes "
                   f"(docs/recipe.md, study 17)")


def distill_config(kind: str, layers: Callable[[TrainConfig], TrainConfig]) -> TrainConfig:
    """The distillation config: the library's recipe for `kind` with the caller's `layers` on top
    (a function of the base, e.g. `lambda base: resolve(base, config, settings)`). The recipe
    depends on the budget, which the layers may set, so they are applied twice: once to learn the
    budget, once over the recipe for it. A field the caller sets always wins."""
    budget = layers(distill_recipe(kind)).budget_images
    return layers(distill_recipe(kind, budget))


def why(kind: str, cfg: TrainConfig) -> str:
    """Why the defaults of a distillation config are what they are (the run's log line)."""
    budget = f"{cfg.budget_images:,} images" if cfg.budget_images else "a budget in epochs"
    chosen, short, long = (distill_recipe(kind, b) for b in (cfg.budget_images, None, HEAVY_FROM))
    if kind == "synthetic":
        return (f"{MEASURED}; the batch, lr, tau and the regime follow the budget in images: batch "
                f"{short.batch_size}, lr {short.lr:g}, tau {short.tau:g} and `{short.regime}` below {HEAVY_FROM:,} "
                f"(studies 12, 15 and 16), batch {long.batch_size}, lr {long.lr:g}, tau {long.tau:g} and "
                f"`{long.regime}` without its elastic warp from there on (budgets in epochs: below); for {budget}: "
                f"batch {chosen.batch_size}, lr {chosen.lr:g}, tau {chosen.tau:g}, `{chosen.regime}`")
    return (f"{MEASURED}; the batch and lr follow the budget in images: batch {short.batch_size} and lr "
            f"{short.lr:g} below {HEAVY_FROM:,} (studies 15 and 16), batch {long.batch_size} and lr {long.lr:g} from "
            f"there on (budgets in epochs: below); for {budget}: batch {chosen.batch_size}, lr {chosen.lr:g}")


def resolve(base: TrainConfig, config: "TrainConfig | str | dict | None" = None,
            settings: "list[str] | dict[str, Any] | None" = None, **fields) -> TrainConfig:
    """`base` with the caller's layers on top: `config` (a YAML path or a dict of settings; a whole
    TrainConfig replaces `base`), then `settings` (KEY=VALUE strings or a dict), then `fields`
    (keyword arguments named like TrainConfig's fields; None means unset)."""
    if isinstance(config, TrainConfig):
        cfg = config
    else:
        cfg = override(base, read_settings(config) if isinstance(config, str) or hasattr(config, "__fspath__")
                       else config)
    cfg = override(cfg, settings)
    return override(cfg, {k: v for k, v in fields.items() if v is not None})


def describe(cfg: TrainConfig) -> str:
    """A short human description of a recipe (logs and report columns)."""
    overrides = ",".join(f"{k}={v}" for k, v in cfg.regime_overrides)
    budget = f"{cfg.budget_images:,} images" if cfg.budget_images else f"{cfg.epochs:g} epochs"
    return (f"{budget}, batch {cfg.batch_size}, lr {cfg.lr:g}, tau {cfg.tau:g}, "
            f"{cfg.regime}{'(' + overrides + ')' if overrides else ''}, mixup {'on' if cfg.mixup else 'off'}")

