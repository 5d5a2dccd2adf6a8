"""Every command's happy path on tiny settings, and bad input: one line, non-zero, nothing half-done."""

import json

import numpy as np
import pytest

from surrogate_kd.cli import main

TINY = ["--epochs", "1", "--batch-size", "32", "--device", "cpu", "--precision", "fp32"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_dataset):
    out = tmp_path_factory.mktemp("cli") / "teacher"
    assert main(["train-teacher", "--data", str(tiny_dataset), "--arch", "convnet_tiny", "--out", str(out),
                 "--eval-data", str(tiny_dataset), *TINY]) == 0
    return out / "model.safetensors"


def test_train_distill_evaluate(tmp_path, tiny_dataset, teacher, capsys):
    result = json.loads((teacher.parent / "result.json").read_text())
    assert result["arch"] == "convnet_tiny" and 0 <= result["test_accuracy"] <= 1
    assert (teacher.parent / "metrics.jsonl").read_text().count("\n") >= 1
    assert not (teacher.parent / "state.pt").exists(), "finished runs leave no resumable state behind"

    for data in (str(tiny_dataset), "noise"):
        out = tmp_path / f"student-{data[-5:]}"
        assert main(["distill", "--teacher", str(teacher), "--data", data, "--student", "convnet_tiny", "--out", str(out),
                     "--candidates", "256", "--per-class", "16", "--eval-data", str(tiny_dataset), *TINY]) == 0
        result = json.loads((out / "result.json").read_text())
        assert result["selected"] == 64 and 0 <= result["relative_entropy"] <= 1
        assert (out / "model.safetensors").exists() and (out / "samples.png").exists()

    # Boundary samples added to the candidates before selection, and on-the-fly balanced streaming.
    for extra, name in ((["--boundary-fraction", "0.25"], "boundary"), (["--stream"], "stream")):
        out = tmp_path / f"student-{name}"
        assert main(["distill", "--teacher", str(teacher), "--data", "noise", "--student", "convnet_tiny", "--out", str(out),
                     "--candidates", "256", "--per-class", "16", *extra, *TINY]) == 0
        result = json.loads((out / "result.json").read_text())
        assert result["steps"] == 2  # 64 images per epoch / batch 32
        if name == "boundary":
            assert result["boundary"]["images_before"] == 256 and result["boundary"]["images_after"] > 256

    capsys.readouterr()
    assert main(["evaluate", "--model", str(out / "model.safetensors"), "--data", str(tiny_dataset),
                 "--teacher", str(teacher)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 512 and len(report["per_class_accuracy"]) == 4 and "teacher_agreement" in report


def test_finished_run_is_reused_not_retrained(tmp_path, tiny_dataset, teacher, capsys):
    capsys.readouterr()
    assert main(["train-teacher", "--data", str(tiny_dataset), "--arch", "convnet_tiny", "--out", str(teacher.parent),
                 "--eval-data", str(tiny_dataset), *TINY]) == 0
    assert json.loads(capsys.readouterr().out)["reused"] is True


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("surrogate-kd: error: "), err
    return err[0]


def test_missing_teacher_file(tmp_path, capsys):
    assert main(["distill", "--teacher", str(tmp_path / "none.safetensors"), "--data", "noise",
                 "--out", str(tmp_path / "s")]) == 2
    assert "not found" in error_line(capsys)
    assert not (tmp_path / "s" / "result.json").exists()


def test_teacher_class_count_mismatch(tmp_path, teacher, capsys):
    wide = tmp_path / "ten.npz"
    np.savez(wide, images=np.zeros((40, 16, 16), np.uint8), labels=np.arange(40) % 10)
    assert main(["distill", "--teacher", str(teacher), "--data", "noise", "--out", str(tmp_path / "s"),
                 "--eval-data", str(wide), *TINY]) == 2
    assert "4 classes" in error_line(capsys)
    assert not (tmp_path / "s" / "result.json").exists()


def test_empty_folder_and_corrupt_image(tmp_path, teacher, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["distill", "--teacher", str(teacher), "--data", str(empty), "--out", str(tmp_path / "s"), *TINY]) == 2
    assert "no images found" in error_line(capsys)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"\x89PNG not really")
    assert main(["distill", "--teacher", str(teacher), "--data", str(bad), "--out", str(tmp_path / "s"), *TINY]) == 2
    assert "broken.png" in error_line(capsys)
    assert not (tmp_path / "s" / "result.json").exists()


def test_unknown_names_list_valid_ones(tmp_path, tiny_dataset, capsys):
    assert main(["train-teacher", "--data", str(tiny_dataset), "--arch", "resnet99", "--out", str(tmp_path / "t"), *TINY]) == 2
    assert "resnet18" in error_line(capsys)
    assert main(["train-teacher", "--data", "imagenet-of-my-dreams", "--out", str(tmp_path / "t"), *TINY]) == 2
    assert "fashion-mnist" in error_line(capsys)
    assert main(["train-teacher", "--data", str(tiny_dataset), "--out", str(tmp_path / "t"), "--set", "nope=1"]) == 2
    assert "unknown setting 'nope'" in error_line(capsys)
    assert main(["train-teacher", "--data", str(tiny_dataset), "--out", str(tmp_path / "t"), "--set", "augment.nope=1"]) == 2
    assert "unknown augmentation field(s) nope" in error_line(capsys)
    assert not (tmp_path / "t").exists()


def test_set_reaches_fields_of_the_augmentation_regime():
    from surrogate_kd.config import TrainConfig, override

    cfg = override(TrainConfig(regime="high", regime_overrides=(("invert_p", 0.5),)),
                   ["augment.randaugment_n=0", "augment.invert_p=0.1", "epochs=3"])
    assert dict(cfg.regime_overrides) == {"invert_p": 0.1, "randaugment_n": 0} and cfg.epochs == 3


def test_student_of_a_retrained_teacher_is_not_reused(tmp_path, tiny_dataset, teacher, capsys):
    import shutil

    from surrogate_kd.checkpoint import load_model, save_model

    own = tmp_path / "teacher" / "model.safetensors"
    shutil.copytree(teacher.parent, own.parent)
    args = ["distill", "--teacher", str(own), "--data", "noise", "--student", "convnet_tiny", "--out",
            str(tmp_path / "s"), "--candidates", "256", "--per-class", "16", *TINY]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["reused"] is True
    retrained = load_model(own)
    with __import__("torch").no_grad():
        retrained.net.fc.weight.add_(1.0)
    save_model(retrained, own)  # same path, other weights: the finished student is another run's now
    assert main(args) == 2
    assert "teacher_fingerprint" in error_line(capsys)
    assert main([*args, "--overwrite"]) == 0
    assert "reused" not in json.loads(capsys.readouterr().out)


def test_distill_passes_source_parameters(tmp_path, tiny_dataset, teacher, capsys):
    common = ["distill", "--teacher", str(teacher), "--student", "convnet_tiny", "--candidates", "256",
              "--per-class", "16", *TINY]
    assert main([*common, "--data", "shaders", "--param", "figure=0", "--out", str(tmp_path / "s")]) == 0
    result = json.loads((tmp_path / "s" / "result.json").read_text())
    assert dict(result["config"]["data"]["source_params"]) == {"figure": 0}
    capsys.readouterr()
    assert main([*common, "--data", str(tiny_dataset), "--param", "figure=0", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a source" in err


def test_distill_adapts_shaders_by_default_and_not_when_told(tmp_path, teacher, capsys):
    """The shader programs are steered by the teacher unless --no-adapt; other data never is."""
    common = ["distill", "--teacher", str(teacher), "--student", "convnet_tiny", "--data", "shaders",
              "--candidates", "128", "--per-class", "8", *TINY]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    adapted = json.loads((tmp_path / "a" / "result.json").read_text())
    assert adapted["config"]["data"]["adapt"] is True and adapted["adapt"]["forward_passes"] > 0
    assert main([*common, "--no-adapt", "--out", str(tmp_path / "p")]) == 0
    plain = json.loads((tmp_path / "p" / "result.json").read_text())
    assert plain["config"]["data"]["adapt"] is False and "adapt" not in plain
    capsys.readouterr()
    assert main([*common[:-len(TINY)], *TINY, "--data", "noise", "--adapt", "--out", str(tmp_path / "n")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not shaders" in err
