"""The library owns every default: the same arguments through the API and the CLI give the same run."""

import json

import pytest
from conftest import raises_one_line

from surrogate_kd import api, recipe
from surrogate_kd.cli import main
from surrogate_kd.config import TrainConfig
from surrogate_kd.recipe import (BOUNDARY_FRACTION, BOUNDARY_KEEP, HEAVY_FROM, REFINE_GRAIN_LIMIT, REFINE_STEPS, SHORT_BATCH,
                                 SET_IMAGES, SHORT_BATCH_LR, boundary_fraction, distill_config, distill_recipe,
                                 per_class, refine_steps, resolve, teacher_recipe, why)

TINY_CLI = ["--epochs", "1", "--batch-size", "32", "--device", "cpu", "--precision", "fp32"]
TINY_API = dict(epochs=1, batch_size=32, device="cpu", precision="fp32")


def identity(run) -> dict:
    return json.loads((run / "run.json").read_text())["identity"]


@pytest.fixture(scope="module")
def settings_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "recipe.yaml"
    path.write_text("budget_images: 64\nlr: 0.05\n")
    return path


def test_train_teacher_api_and_cli_resolve_the_same_config(tmp_path, tiny_dataset, settings_file):
    assert main(["train-teacher", "--data", str(tiny_dataset), "--arch", "convnet_tiny", "--out", str(tmp_path / "cli"),
                 "--config", str(settings_file), "--set", "nesterov=true", *TINY_CLI]) == 0
    api.train_teacher(str(tiny_dataset), tmp_path / "api", "convnet_tiny", config=str(settings_file),
                      settings=["nesterov=true"], **TINY_API)
    assert identity(tmp_path / "cli") == identity(tmp_path / "api")
    train = identity(tmp_path / "api")["train"]
    assert train["mixup"] is False and train["regime"] == "standard", "the teacher recipe, not TrainConfig's defaults"
    assert train["lr"] == 0.05 and train["budget_images"] == 64 and train["nesterov"] is True


def test_distill_api_and_cli_resolve_the_same_config(tmp_path, tiny_dataset, settings_file):
    teacher = tmp_path / "teacher"
    api.train_teacher(str(tiny_dataset), teacher, "convnet_tiny", **TINY_API)
    common = ["--teacher", str(teacher / "model.safetensors"), "--data", "shaders", "--candidates", "128",
              "--per-class", "8", "--param", "figure=0", "--config", str(settings_file), "--no-mixup"]
    assert main(["distill", *common, "--out", str(tmp_path / "cli"), "--tau", "4", *TINY_CLI]) == 0
    api.distill(teacher / "model.safetensors", "shaders", tmp_path / "api", candidates=128, per_class=8,
                params={"figure": 0}, config=str(settings_file), mixup=False, tau=4, **TINY_API)
    cli, lib = identity(tmp_path / "cli"), identity(tmp_path / "api")
    assert cli == lib
    assert lib["train"]["regime"] == distill_recipe("synthetic").regime, \
        "a config file that sets other fields keeps the synthetic-data regime"


def test_layers_replace_only_what_they_name(tmp_path):
    synthetic = distill_recipe("synthetic")
    cfg = resolve(synthetic, {"budget_images": 1000}, ["augment.invert_p=0.2"], lr=0.01, tau=None)
    assert (cfg.tau, cfg.regime, cfg.mixup) == (synthetic.tau, synthetic.regime, synthetic.mixup)  # kept from the recipe
    assert (cfg.budget_images, cfg.lr) == (1000, 0.01)
    assert dict(cfg.regime_overrides) == {**dict(synthetic.regime_overrides), "invert_p": 0.2}
    assert resolve(teacher_recipe(), TrainConfig(epochs=3)) == TrainConfig(epochs=3), "a whole config is taken as is"


def test_the_recipe_follows_the_budget_unless_set():
    def at(budget, settings=None, **fields):
        return distill_config("synthetic", lambda base: resolve(base, {"budget_images": budget}, settings, **fields))

    assert at(HEAVY_FROM - 1).regime == "standard" and not at(HEAVY_FROM - 1).regime_overrides
    long = at(HEAVY_FROM)
    assert (long.regime, dict(long.regime_overrides)) == ("high", {"elastic_p": 0.0})
    assert at(1000, regime="high").regime == "high", "a regime the caller sets wins at any budget"
    assert at(10**7, regime="none").regime == "none"
    assert dict(at(10**7, ["augment.elastic_p=0.5"]).regime_overrides) == {"elastic_p": 0.5}
    assert distill_config("synthetic", lambda base: base).regime == "standard", "a budget in epochs"
    assert distill_config("real", lambda base: resolve(base, {"budget_images": 10**7})).regime == "standard"
    short = at(1000)
    assert (short.tau, long.tau) == (3.0, 4.0), "synthetic data: tau 3 at short budgets (study 12), 4 at long ones"
    assert short.mixup == long.mixup
    assert (short.lr, long.lr) == (SHORT_BATCH_LR["synthetic"], 0.05) == (0.025, 0.05), "study 16"
    real_lr = {b: distill_config("real", lambda base: resolve(base, {"budget_images": b})).lr for b in (1000, HEAVY_FROM)}
    assert real_lr == {1000: SHORT_BATCH_LR["real"], HEAVY_FROM: 0.05} and SHORT_BATCH_LR["real"] == 0.0125
    assert distill_config("real", lambda base: base).lr == 0.0125, "a budget in epochs counts as short"
    assert at(1000, lr=0.1).lr == 0.1 and at(1000, ["lr=0.2"]).lr == 0.2, "an lr the caller sets wins"
    assert distill_config("synthetic", lambda base: base).tau == 3.0, "a budget in epochs counts as short"
    assert distill_config("real", lambda base: resolve(base, {"budget_images": 1000})).tau == 4.0
    real = {b: distill_config("real", lambda base: resolve(base, {"budget_images": b})) for b in (1000, HEAVY_FROM)}
    assert (short.batch_size, real[1000].batch_size) == (SHORT_BATCH, SHORT_BATCH)
    assert (long.batch_size, real[HEAVY_FROM].batch_size) == (128, 128) and SHORT_BATCH < 128, \
        "short budgets: more, smaller steps"
    assert distill_config("real", lambda base: base).batch_size == SHORT_BATCH, "a budget in epochs counts as short"
    assert at(1000, batch_size=256).batch_size == 256, "a batch the caller sets wins"
    assert at(1000, tau=6.0).tau == 6.0 and at(10**7, ["tau=1.5"]).tau == 1.5, "a tau the caller sets wins"
    assert why("synthetic", short).endswith(f"for 1,000 images: batch {SHORT_BATCH}, lr 0.025, tau 3, `standard`")
    assert why("synthetic", long).endswith("batch 128, lr 0.05, tau 4, `high`")
    assert why("real", real[HEAVY_FROM]).endswith("for 1,000,000 images: batch 128, lr 0.05")
    assert why("real", real[1000]).endswith("for 1,000 images: batch 32, lr 0.0125")


def test_distill_help_gives_each_default_batch_and_lr_from_the_recipe(capsys):
    assert main(["distill", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert (f"(default: {SHORT_BATCH} for real data and synthetic data; 128 for real data from 1,000,000 images and "
            "synthetic data from 1,000,000 images)") in text
    assert ("(default: 0.0125 for real data; 0.05 for real data from 1,000,000 images and synthetic data from "
            "1,000,000 images; 0.025 for synthetic data)") in text


def test_every_command_is_a_library_function_with_the_same_options():
    """Each CLI option of a command is a parameter of the api function of the same name."""
    import argparse
    import inspect

    from surrogate_kd.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in commands.items():
        fn = getattr(api, name.replace("-", "_"))
        params = inspect.signature(fn).parameters
        takes_settings = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        for action in sub._actions:
            if action.dest in ("help",) or action.dest in params:
                continue
            assert takes_settings and action.dest in {f for f in TrainConfig.__dataclass_fields__}, (name, action.dest)


def test_boundary_samples_are_the_default_for_fixed_synthetic_sets_only():
    assert boundary_fraction("synthetic", False, True)[0] == BOUNDARY_FRACTION > 0
    for off in (("real", False, True),  # real data: not measured
                ("synthetic", True, True),  # --stream: no fixed set to add them to
                ("synthetic", False, False)):  # a black box: no gradients to attack with
        fraction, reason = boundary_fraction(*off)
        assert fraction == 0 and reason.startswith("none"), off


def test_the_set_holds_the_same_number_of_images_whatever_the_teacher_s_classes():
    # The paper fixes the set's size (50,000 for CIFAR-10 and CIFAR-100 alike); a fixed count per
    # class gave a 3-class teacher 6,000 images and would give an ImageNet one 2,000,000.
    assert per_class(10)[0] == 2000, "the ten-class studies' sets are unchanged"
    for classes in (2, 3, 7, 100, 1000):
        count, reason = per_class(classes)
        assert abs(count * classes - SET_IMAGES) <= classes / 2 and f"{classes} classes" in reason
    assert per_class(10 * SET_IMAGES)[0] == 1, "at least one image a class"


def test_distill_keeps_the_recipe_s_set_unless_told_and_the_log_says_why(tmp_path, tiny_dataset, capsys, monkeypatch):
    teacher = tmp_path / "teacher"
    api.train_teacher(str(tiny_dataset), teacher, "convnet_tiny", **TINY_API)  # four classes
    weights = teacher / "model.safetensors"
    monkeypatch.setattr(recipe, "SET_IMAGES", 40)  # a set the size of a test
    common = dict(candidates=64, budget_images=64, batch_size=32, device="cpu", precision="fp32")
    default = api.distill(weights, str(tiny_dataset), tmp_path / "default", **common)
    assert default["config"]["data"]["per_class"] == 10 and default["selected"] == 40
    assert "selection: 10 per class: 40 images over the teacher's 4 classes" in capsys.readouterr().err
    given = api.distill(weights, str(tiny_dataset), tmp_path / "given", per_class=9, **common)
    assert given["config"]["data"]["per_class"] == 9 and given["selected"] == 36
    assert "selection: as given" in capsys.readouterr().err
    every = api.distill(weights, str(tiny_dataset), tmp_path / "every", per_class=0, **common)
    assert every["config"]["data"]["per_class"] is None and "selected" not in every
    assert "selection: none: every candidate is kept" in capsys.readouterr().err


def test_refinement_is_on_by_default_for_teachers_smoother_than_noise_and_the_log_says_why():
    # Studies 8-11 (recipe.py): refinement raised the students of most teachers whose gradient grain
    # is below that of pixel noise (not all: focus) and cost both above it.
    steps, reason = refine_steps("synthetic", False, True, lambda: REFINE_GRAIN_LIMIT - 0.5)
    assert steps == REFINE_STEPS > 0 and "smoother than noise" in reason and "studies" in reason
    steps, reason = refine_steps("synthetic", False, True, lambda: REFINE_GRAIN_LIMIT + 0.5)
    assert steps == 0 and reason.startswith("none") and "rough as noise" in reason

    def unmeasured():
        raise AssertionError("the grain costs a backward pass: measured only where refinement could run")

    for off in (("real", False, True), ("synthetic", True, True), ("synthetic", False, False)):
        steps, reason = refine_steps(*off, unmeasured)
        assert steps == 0 and reason.startswith("none"), off


def test_distill_refines_the_selected_candidates_but_not_the_boundary_samples(tmp_path, tiny_dataset, capsys,
                                                                               monkeypatch):
    teacher = tmp_path / "teacher"
    api.train_teacher(str(tiny_dataset), teacher, "convnet_tiny", **TINY_API)  # has BatchNorm: refinable
    weights = teacher / "model.safetensors"
    common = dict(candidates=64, per_class=8, adapt=False, **TINY_API)
    monkeypatch.setattr(api, "teacher_grain", lambda teacher, device: REFINE_GRAIN_LIMIT + 1)  # rough as noise
    default = api.distill(weights, "shaders", tmp_path / "default", **common)
    assert "refined" not in default and default["config"]["data"]["refine"] is None
    assert "refinement: none: the teacher's pixel gradient is as rough as noise" in capsys.readouterr().err
    monkeypatch.setattr(api, "teacher_grain", lambda teacher, device: REFINE_GRAIN_LIMIT - 1)  # smoother
    smooth = api.distill(weights, "shaders", tmp_path / "default-smooth", **common)
    assert smooth["config"]["data"]["refine"]["steps"] == REFINE_STEPS and smooth["refined"]["images"] > 0
    refined = api.distill(weights, "shaders", tmp_path / "refined", refine_steps=2, **common)
    assert refined["config"]["data"]["refine"]["steps"] == 2, "in the run's identity"
    assert "refinement: as given" in capsys.readouterr().err
    class_term = api.distill(weights, "shaders", tmp_path / "class-term", refine_steps=2, refine_bn_weight=0.0,
                             **common)
    assert class_term["config"]["data"]["refine"]["bn_weight"] == 0.0 and class_term["refined"]["images"] > 0
    blurred_default = api.distill(weights, "shaders", tmp_path / "blur-default", refine_blur=1.0, **common)
    assert blurred_default["config"]["data"]["refine"] == {**smooth["config"]["data"]["refine"], "blur": 1.0}
    monkeypatch.setattr(api, "teacher_grain", lambda teacher, device: REFINE_GRAIN_LIMIT + 1)  # no default refinement
    raises_one_line(lambda: api.distill(weights, "shaders", tmp_path / "weight-alone", refine_bn_weight=0.0, **common),
                    "give --refine-steps too", "rough as noise")
    raises_one_line(lambda: api.distill(weights, "shaders", tmp_path / "blur-alone", refine_blur=1.0, **common),
                    "--refine-blur shapes a refinement")
    raw = api.distill(weights, "shaders", tmp_path / "raw-steps", refine_steps=2, refine_blur=0.0, **common)
    assert raw["config"]["data"]["refine"]["blur"] == 0.0 and raw["refined"]["images"] > 0
    chosen_samples = refined["selected"] - refined["refined"]["images"]
    assert refined["refined"]["images"] > 0 and chosen_samples > 0, "candidates refined, boundary samples kept as made"
    real = api.distill(weights, str(tiny_dataset), tmp_path / "real", candidates=64, per_class=8, **TINY_API)
    assert "refined" not in real and "refinement: none for real data" in capsys.readouterr().err
    raises_one_line(lambda: api.distill(weights, "shaders", tmp_path / "stream", refine_steps=2, stream=True,
                                        boundary_fraction=0, **common), "refining images needs a fixed set")


def test_distill_adds_boundary_samples_unless_told_not_to(tmp_path, tiny_dataset, capsys):
    teacher = tmp_path / "teacher"
    api.train_teacher(str(tiny_dataset), teacher, "convnet_tiny", **TINY_API)
    weights = teacher / "model.safetensors"
    common = dict(candidates=64, per_class=8, adapt=False, **TINY_API)
    default = api.distill(weights, "shaders", tmp_path / "default", **common)
    assert default["boundary"]["fraction"] == BOUNDARY_FRACTION and default["boundary"]["attacked"] == 32
    assert default["config"]["data"]["boundary"]["fraction"] == BOUNDARY_FRACTION, "recorded in the run's identity"
    assert f"boundary samples: from {BOUNDARY_FRACTION:g} of the candidates" in capsys.readouterr().err
    assert BOUNDARY_KEEP == "all" and default["config"]["data"]["boundary"]["deeper"] is True
    for keep, recorded in (("pairs", {"pairs": True, "deeper": False}), ("deeper", {"pairs": False, "deeper": True})):
        kept = api.distill(weights, "shaders", tmp_path / keep, boundary_keep=keep, **common)
        assert {k: kept["config"]["data"]["boundary"][k] for k in recorded} == recorded
        assert kept["boundary"]["attacked"] == 32 and kept["boundary"]["samples"] == 2 * kept["boundary"]["pairs"]
    raises_one_line(lambda: api.distill(weights, "shaders", tmp_path / "bad", boundary_keep="some", **common),
                    "unknown boundary keep 'some'", "all, pairs, deeper")
    off = api.distill(weights, "shaders", tmp_path / "off", boundary_fraction=0, **common)
    assert "boundary" not in off and off["config"]["data"]["boundary"] is None
    assert "boundary samples: as given" in capsys.readouterr().err
    real = api.distill(weights, str(tiny_dataset), tmp_path / "real", candidates=64, per_class=8, **TINY_API)
    assert "boundary" not in real and "boundary samples: none for real data" in capsys.readouterr().err
