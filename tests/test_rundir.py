"""An output directory belongs to one run: seeds fix the weights, finishing is atomic, nothing is overwritten."""

import json

import pytest
import torch
from safetensors.torch import load_file

from surrogate_kd import rundir
from surrogate_kd.api import distill, train_teacher
from surrogate_kd.errors import UserError
from surrogate_kd.rundir import RunDir

TINY = dict(epochs=2, batch_size=32, device="cpu", precision="fp32")
STUDENT = dict(candidates=256, per_class=16, **TINY)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_dataset):
    out = tmp_path_factory.mktemp("rundir") / "teacher"
    train_teacher(str(tiny_dataset), out, "convnet_tiny", **TINY)
    return out / "model.safetensors"


def weights(run) -> dict:
    return load_file(str(run / "model.safetensors"))


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_weights_other_seed_other_weights(tmp_path, teacher):
    """Seeding before the model is built: the initial weights, data order and augmentation all follow --seed."""
    runs = [tmp_path / name for name in ("a", "b", "c")]
    for run, seed in zip(runs, (0, 0, 1)):
        distill(teacher, "noise", run, "convnet_tiny", seed=seed, **STUDENT)
    assert same_weights(weights(runs[0]), weights(runs[1]))
    assert not same_weights(weights(runs[0]), weights(runs[2]))


def test_teacher_seed_fixes_teacher_weights(tmp_path, tiny_dataset):
    for name in ("a", "b"):
        train_teacher(str(tiny_dataset), tmp_path / name, "convnet_tiny", epochs=1, batch_size=64, device="cpu",
                      precision="fp32")
    assert same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))


def test_a_run_never_writes_into_its_teachers_directory(teacher):
    before = teacher.read_bytes(), teacher.with_suffix(".json").read_bytes()
    for overwrite in (False, True):
        with pytest.raises(UserError, match="never writes over its teacher"):
            distill(teacher, "noise", teacher.parent, "convnet_tiny", overwrite=overwrite, **STUDENT)
    assert (teacher.read_bytes(), teacher.with_suffix(".json").read_bytes()) == before


def test_another_runs_directory_is_refused_unless_overwrite(tmp_path, teacher):
    out = tmp_path / "s"
    distill(teacher, "noise", out, "convnet_tiny", seed=0, **STUDENT)
    first = weights(out)
    lines = (out / "metrics.jsonl").read_text()
    with pytest.raises(UserError, match=r"holds another run .*seed"):
        distill(teacher, "noise", out, "convnet_tiny", seed=1, **STUDENT)
    assert same_weights(weights(out), first) and (out / "metrics.jsonl").read_text() == lines
    with pytest.raises(UserError, match="a distill run"):
        train_teacher(str(teacher), out, "convnet_tiny", **TINY)
    replaced = distill(teacher, "noise", out, "convnet_tiny", seed=1, overwrite=True, **STUDENT)
    assert "reused" not in replaced and not same_weights(weights(out), first)
    assert (out / "metrics.jsonl").read_text().count("\n") == lines.count("\n"), "no lines of the old run"
    assert distill(teacher, "noise", out, "convnet_tiny", seed=1, **STUDENT)["reused"] is True


def test_foreign_files_and_file_outputs_are_refused(tmp_path, teacher):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(UserError, match="holds no surrogate-kd run.*notes.txt"):
            distill(teacher, "noise", tmp_path / "mine", "convnet_tiny", overwrite=overwrite, **STUDENT)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        distill(teacher, "noise", tmp_path / "file", "convnet_tiny", **STUDENT)


def test_two_runs_cannot_share_a_directory(tmp_path):
    first = RunDir(tmp_path / "r", "distill", {"seed": 0})
    assert first.claim() is None
    with pytest.raises(UserError, match="in use by another run"):
        RunDir(tmp_path / "r", "distill", {"seed": 0}).claim()
    first.release()
    assert RunDir(tmp_path / "r", "distill", {"seed": 0}).claim() is None  # the same run, resumed


def test_a_failed_command_leaves_nothing_behind(tmp_path, teacher):
    with pytest.raises(UserError, match="no such image set"):
        distill(teacher, "no-such-set", tmp_path / "s", "convnet_tiny", **STUDENT)
    assert not (tmp_path / "s").exists()


def test_killed_before_the_result_resumes_with_nothing_to_redo(tmp_path, teacher, monkeypatch):
    """Weights written, result.json not: the run is not finished, and the rerun trains no step again."""
    reference = tmp_path / "reference"
    distill(teacher, "noise", reference, "convnet_tiny", **STUDENT)
    out = tmp_path / "s"
    real_write = rundir.atomic_write_text

    def killed_at_result(path, text):
        if path.name == rundir.RESULT_FILE:
            raise KeyboardInterrupt
        real_write(path, text)

    monkeypatch.setattr(rundir, "atomic_write_text", killed_at_result)
    with pytest.raises(KeyboardInterrupt):
        distill(teacher, "noise", out, "convnet_tiny", **STUDENT)
    monkeypatch.setattr(rundir, "atomic_write_text", real_write)
    assert (out / "model.safetensors").exists() and (out / rundir.STATE_FILE).exists()
    assert not (out / rundir.RESULT_FILE).exists()
    lines = (out / "metrics.jsonl").read_text()
    result = distill(teacher, "noise", out, "convnet_tiny", **STUDENT)
    assert "reused" not in result and result["final_loss"] == pytest.approx(json.loads(lines.splitlines()[-1])["loss"], rel=1e-4)
    assert (out / "metrics.jsonl").read_text() == lines, "nothing retrained, nothing logged twice"
    assert same_weights(weights(out), weights(reference)) and not (out / rundir.STATE_FILE).exists()


def test_weights_that_are_not_the_results_do_not_pass_for_finished(tmp_path, teacher):
    out = tmp_path / "s"
    distill(teacher, "noise", out, "convnet_tiny", **STUDENT)
    (out / "model.safetensors").write_bytes(teacher.read_bytes())  # another run's weights, same file name
    assert RunDir(out, "distill", json.loads((out / rundir.RUN_FILE).read_text())["identity"]).finished() is None


def test_resume_drops_metrics_logged_after_the_saved_state(tmp_path):
    from surrogate_kd.distill import _metrics_from

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (10, 20, 30)) + '{"step": 4')
    with _metrics_from(path, 20) as f:
        f.write(json.dumps({"step": 30, "loss": 0.5}) + "\n")
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [10, 20, 30]
    assert json.loads(path.read_text().splitlines()[-1])["loss"] == 0.5


def test_a_run_of_an_earlier_version_is_reused_when_new_fields_take_their_defaults(tmp_path, teacher):
    """A field added to a config after a run was made (here `data.adapt`, `train.capture`) is no
    difference at its default: upgrading keeps finished runs finished; at another value it is one."""
    out = tmp_path / "s"
    distill(teacher, "noise", out, "convnet_tiny", **STUDENT)
    for name in ("run.json", "result.json"):  # as an earlier version wrote them, without the fields
        record = json.loads((out / name).read_text())
        identity = record["identity"] if name == "run.json" else record["config"]
        del identity["data"]["adapt"], identity["train"]["capture"]
        (out / name).write_text(json.dumps(record))
    assert distill(teacher, "noise", out, "convnet_tiny", **STUDENT)["reused"] is True
    with pytest.raises(UserError, match=r"holds another run .*capture"):
        distill(teacher, "noise", out, "convnet_tiny", capture=False, **STUDENT)
