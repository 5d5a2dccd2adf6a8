"""`surrogate-kd experiment`: the config is checked before any work, cells are a grid, finished cells are reused."""

import csv
import json
from pathlib import Path

import pytest
import yaml

from surrogate_kd.config import read_settings
from surrogate_kd.data import DEBIAN_FASHION_MNIST
from surrogate_kd.errors import UserError
from surrogate_kd.experiment import apply_settings, experiment, plan

TINY = Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"
CONFIGS = [TINY, *sorted((TINY.parent / "small").glob("*.yaml")), *sorted((TINY.parent / "paper").glob("*.yaml"))]
needs_fashion_mnist = pytest.mark.skipif(not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists(),
                                         reason="Fashion-MNIST not installed (make test installs it as root on Debian)")


def tiny_config() -> dict:
    return yaml.safe_load(TINY.read_text())


def read_csv(path: Path) -> dict[str, dict]:
    with open(path) as f:
        return {row["cell"]: row for row in csv.DictReader(f)}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(TINY.parent)))
def test_every_shipped_config_is_valid(config):
    assert plan(config).cells


@pytest.mark.parametrize("config", sorted((TINY.parent / "studies").glob("*.yaml")), ids=lambda p: p.name)
def test_every_study_config_is_valid(config, tmp_path, monkeypatch, tiny_spec):
    """The studies of docs/recipe.md name teachers and sets under runs/ that the repo does not hold;
    planning checks they exist, so they are stood in for by a tiny checkpoint and empty files."""
    from surrogate_kd.checkpoint import save_model
    from surrogate_kd.models import build_model

    monkeypatch.chdir(tmp_path)
    for teacher in yaml.safe_load(config.read_text())["teachers"].values():
        if "checkpoint" in teacher:
            save_model(build_model("convnet_tiny", tiny_spec), Path(teacher["checkpoint"]))
        for path in (teacher.get("data"), teacher.get("eval_data")):
            if path and "/" in path:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                Path(path).touch()
    assert plan(config).cells


@pytest.mark.parametrize("config", sorted((TINY.parent / "paper").glob("*.yaml")), ids=lambda p: p.name)
def test_paper_configs_write_the_paper_recipe_out(config):
    """The library's defaults are for short budgets (recipe.py); the paper's 400-epoch configs must
    not inherit them: tau 2 real / 20 synthetic, batch 256 at lr 0.1, mixup unless a cell turns it off."""
    for cell in plan(config).cells:
        synthetic = cell.options["data"] in ("shaders", "leaves", "noise")
        assert cell.config.tau == (20 if synthetic else 2), cell.name
        assert (cell.config.batch_size, cell.config.lr, cell.config.epochs) == (256, 0.1, 400), cell.name
        assert cell.config.mixup or "mixup=false" in cell.name or "long-tail" == cell.variant \
            or "balanced" == cell.variant, cell.name


def test_a_checkpoint_teacher_is_reported_with_its_own_architecture(tmp_path, tiny_spec):
    from surrogate_kd.checkpoint import save_model
    from surrogate_kd.models import build_model

    weights = save_model(build_model("convnet_tiny", tiny_spec), tmp_path / "t" / "model.safetensors")
    config = {"out": str(tmp_path / "out"), "teachers": {"t": {"checkpoint": str(weights)}},
              "students": ["convnet_tiny"], "sets": {"noise": {"data": "noise"}}}
    assert plan(config).teachers["t"].arch == "convnet_tiny", "from its sidecar, not the config's default arch"


def test_only_needs_the_checkpoints_of_the_teachers_it_selects(tmp_path, tiny_spec):
    """A study's cells of one teacher can start while another teacher is still training."""
    from surrogate_kd.checkpoint import save_model
    from surrogate_kd.models import build_model

    weights = save_model(build_model("convnet_tiny", tiny_spec), tmp_path / "t" / "model.safetensors")
    later = tmp_path / "later" / "model.safetensors"
    config = {"out": str(tmp_path / "out"), "students": ["convnet_tiny"], "sets": {"noise": {"data": "noise"}},
              "teachers": {"t": {"checkpoint": str(weights)}, "later": {"checkpoint": str(later)}}}
    p = plan(config)
    assert p.teachers["later"].arch == "-"
    p.check_teachers(p.select("t"))  # no error: 'later' is not selected
    with pytest.raises(UserError, match=f"teachers.later.checkpoint: no such file '{later}'"):
        p.check_teachers(p.select("later"))
    with pytest.raises(UserError, match="teachers.later.checkpoint"):
        experiment(config, only="later")
    assert not (tmp_path / "out").exists()


def test_grid_is_the_product_of_teachers_students_sets_and_axes():
    p = plan(TINY)
    assert [c.name for c in p.cells] == [f"fmnist/convnet_tiny/{s}/targets={t}"
                                         for s in ("original", "shaders") for t in ("soft", "onehot")]
    assert [c.config.targets for c in p.cells] == ["soft", "onehot"] * 2
    # 'original' is the teacher's own data; the synthetic set keeps the config's tau over the library's 20.
    assert [c.options["data"] for c in p.cells] == ["fashion-mnist"] * 2 + ["shaders"] * 2
    assert {c.config.tau for c in p.cells} == {4.0}
    assert [c.name for c in p.select("targets=onehot")] == [p.cells[1].name, p.cells[3].name]
    assert [c.name for c in p.select("shaders")] == [c.name for c in p.cells[2:]]
    with pytest.raises(UserError, match="matches no cell"):
        p.select("nothing")


def test_settings_reach_nested_keys_and_grid_bundles_split_into_set_and_recipe():
    raw = apply_settings(tiny_config(), ["recipe.tau=8", "teachers.fmnist.train.epochs=1", "grid.targets=[soft]",
                                         "sets.shaders.params.figure=0.5"])
    assert raw["recipe"]["tau"] == 8 and raw["teachers"]["fmnist"]["train"]["epochs"] == 1
    raw["grid"] = {"selection": {"balanced": {"per_class": 50, "candidates": 500},
                                 "none": {"per_class": 0, "tau": 2}}}
    p = plan(raw | {"out": "unused"})
    by_name = {c.name: c for c in p.cells}
    balanced = by_name["fmnist/convnet_tiny/shaders/selection=balanced"]
    assert balanced.options["per_class"] == 50 and balanced.options["params"] == {"figure": 0.5}
    assert balanced.config.tau == 8 and by_name["fmnist/convnet_tiny/shaders/selection=none"].config.tau == 2
    assert by_name["fmnist/convnet_tiny/original/selection=none"].options["per_class"] == 0
    assert p.set_axes == ("selection",)
    assert p.teachers["fmnist"].config.epochs == 1


@pytest.mark.parametrize("change, named", [
    (lambda c: c.update(recipes={}), "recipes"),
    (lambda c: c["teachers"]["fmnist"].update(epochs=3), "teachers.fmnist.epochs"),
    (lambda c: c["teachers"]["fmnist"]["train"].update(epoch=3), "epoch"),
    (lambda c: c["sets"]["shaders"].update(candidates="many"), "sets.shaders: candidates must be an integer"),
    (lambda c: c["sets"]["shaders"].update(per_clas=10), "sets.shaders.per_clas"),
    (lambda c: c["recipe"].update(tua=4), "recipe: unknown setting 'tua'"),
    (lambda c: c["recipe"].update(lr="fast"), "lr must be a number"),
    (lambda c: c["grid"].update(targetz=["soft"]), "grid.targetz"),
    (lambda c: c["grid"].update(targets="soft"), "grid.targets must be a list"),
    (lambda c: c["grid"].update(targets=["soft", "hard"]), "unknown KD targets 'hard'"),
    (lambda c: c.update(students=["convnet_huge"]), "students.convnet_huge: unknown model 'convnet_huge'"),
    (lambda c: c["sets"].update(extra={"data": "no/such/set"}), "sets.extra.data: no such image set"),
    (lambda c: c["sets"]["original"].update(params={"figure": 1}), "params are a synthetic source's"),
    (lambda c: c.pop("sets"), "sets: required"),
    (lambda c: c["teachers"].update(old={"checkpoint": "no/such/model.safetensors", "data": "fashion-mnist"}),
     "teachers.old.checkpoint"),
])
def test_bad_config_is_one_line_error_naming_the_key_before_any_work(tmp_path, change, named):
    config = tiny_config() | {"out": str(tmp_path / "out")}
    change(config)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(UserError) as error:
        experiment(path)
    message = str(error.value)
    assert named in message and message.startswith(str(path)) and "\n" not in message
    assert not (tmp_path / "out").exists()


def test_a_key_given_twice_is_refused_before_any_work(tmp_path):
    """Plain YAML keeps the last of two equal keys: a copied `out:` would send the runs into
    another experiment's directory. `<<:` merges may still be overridden."""
    path = tmp_path / "twice.yaml"
    rest = {k: v for k, v in tiny_config().items() if k != "out"}
    path.write_text(f"out: {tmp_path / 'mine'}\n" + yaml.safe_dump(rest) + f"out: {tmp_path / 'theirs'}\n")
    with pytest.raises(UserError, match="key 'out' appears twice in one mapping") as error:
        experiment(path)
    assert "\n" not in str(error.value) and not (tmp_path / "mine").exists() and not (tmp_path / "theirs").exists()
    merged = tmp_path / "merged.yaml"
    merged.write_text("base: &base {lr: 0.1, tau: 4}\nrun: {<<: *base, lr: 0.05}\n")
    assert read_settings(str(merged))["run"] == {"lr": 0.05, "tau": 4}


def test_bad_setting_names_the_key(tmp_path):
    with pytest.raises(UserError, match="batch_size must be an integer"):
        experiment(TINY, settings=[f"out={tmp_path}", "recipe.batch_size=abc"])
    with pytest.raises(UserError, match="jobs"):
        experiment(TINY, settings=[f"out={tmp_path}"], jobs=0)


@needs_fashion_mnist
def test_tiny_grid_end_to_end_reuses_finished_cells(tmp_path):
    out = tmp_path / "tiny"
    settings = [f"out={out}", "device=cpu"]
    first_cell = "fmnist/convnet_tiny/original/targets=soft"
    # One cell first (as if the grid had been killed after it), then the whole grid in 2 processes.
    report = experiment(TINY, settings=settings, only=first_cell)
    rows = read_csv(out / "results.csv")
    assert rows[first_cell]["status"] == "done" and 0 < float(rows[first_cell]["test_accuracy"]) <= 1
    assert {r["status"] for name, r in rows.items() if name != first_cell} == {"not run"}
    weights = out / "cells" / first_cell / "model.safetensors"
    stamp = weights.stat().st_mtime_ns

    report = experiment(TINY, settings=settings, jobs=2)
    rows = read_csv(out / "results.csv")
    assert rows[first_cell]["status"] == "reused" and weights.stat().st_mtime_ns == stamp
    assert len(rows) == 4 and {r["status"] for name, r in rows.items() if name != first_cell} == {"done"}
    for row in rows.values():
        assert 0 < float(row["test_accuracy"]) <= 1 and 0 <= float(row["relative_entropy"]) <= 1
        assert (Path(row["run"]) / "run.json").exists() and (Path(row["run"]) / "model.safetensors").exists()
    assert rows[first_cell]["targets"] == "soft"
    assert rows["fmnist/convnet_tiny/shaders/targets=onehot"]["set"] == "shaders"
    assert (out / "logs").is_dir() and (out / "experiment.yaml").exists()

    # results.md: rows teacher x student x targets, columns the sets (Table 1's layout), and Table 3.
    md = (out / "results.md").read_text()
    assert "| teacher | student | targets | original | shaders |" in md
    assert md.count("| fmnist (0.") >= 2 and "Relative entropy" in md and report["table"] in md
    assert (out / "accuracy.png").stat().st_size > 1000 and (out / "class_histograms-fmnist.png").exists()
    on_disk = json.loads((out / "results.json").read_text())
    assert len(on_disk["results"]) == 4 and not on_disk["failed"]

    # Again: nothing is retrained.
    again = experiment(TINY, settings=settings)
    assert {r["status"] for r in again["results"]} == {"reused"}
    assert [r["test_accuracy"] for r in again["results"]] == [r["test_accuracy"] for r in report["results"]]


def test_long_tail_cell_distills_from_a_selection_written_once(tmp_path, tiny_dataset):
    config = {"out": str(tmp_path / "out"), "device": "cpu",
              "teachers": {"t": {"data": str(tiny_dataset), "arch": "convnet_tiny",
                                 "train": {"epochs": 5, "batch_size": 64, "regime": "none", "precision": "fp32"}}},
              "students": ["convnet_tiny"],
              "sets": {"original": {"data": "original", "candidates": 400, "per_class": 50, "long_tail": 8.0}},
              "recipe": {"budget_images": 128, "batch_size": 64, "regime": "none", "mixup": False,
                         "precision": "fp32", "eval_every": 0}}
    report = experiment(config)
    [row] = report["results"]
    assert row["status"] == "done"
    pool = tmp_path / "out" / "pools" / "t" / "convnet_tiny" / "original"
    summary = json.loads(pool.with_suffix(".json").read_text())
    assert summary["selected"] == 200 and summary["relative_entropy_selected"] < summary["relative_entropy_candidates"]
    stamp = pool.with_suffix(".json").stat().st_mtime_ns
    again = experiment(config)
    assert again["results"][0]["status"] == "reused" and pool.with_suffix(".json").stat().st_mtime_ns == stamp


def test_failed_cell_is_reported_after_the_others_results(tmp_path, tiny_dataset):
    config = {"out": str(tmp_path / "out"), "device": "cpu",
              "teachers": {"t": {"data": str(tiny_dataset), "arch": "convnet_tiny",
                                 "train": {"epochs": 1, "batch_size": 64, "regime": "none", "precision": "fp32"}}},
              "students": ["convnet_tiny"],
              "sets": {"original": {"data": "original", "candidates": 0, "per_class": 0},
                       # 32 images cannot fill one batch of 64: this cell fails when it builds its batches.
                       "few": {"data": "noise", "candidates": 32, "per_class": 0}},
              "recipe": {"budget_images": 128, "batch_size": 64, "regime": "none", "mixup": False,
                         "precision": "fp32", "eval_every": 0}}
    with pytest.raises(UserError, match="1 of the experiment's runs failed .*t/convnet_tiny/few"):
        experiment(config)
    rows = read_csv(tmp_path / "out" / "results.csv")
    assert rows["t/convnet_tiny/original"]["status"] == "done"
    failed = rows["t/convnet_tiny/few"]
    assert failed["status"] == "failed" and "fewer than one batch" in failed["error"]


def test_explain_draws_one_figure_per_student(tmp_path):
    pytest.importorskip("mlxtend")
    from surrogate_kd.explain import explain

    result = explain(tmp_path, sets=("digits", "noise"), candidates=256, budget_images=256, teacher_epochs=0.2,
                     device="cpu")
    assert [s["set"] for s in result["students"]] == ["digits", "noise"]
    for student in result["students"]:
        assert Path(student["figure"]).stat().st_size > 10_000 and 0 <= student["relative_entropy"] <= 1
    again = explain(tmp_path, sets=("digits",), candidates=256, budget_images=256, teacher_epochs=0.2, device="cpu")
    assert again["teacher"]["reused"] and again["students"][0]["reused"]
