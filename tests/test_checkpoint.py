"""Checkpoints: round trip, sidecar checks, unreadable files, file modes, and .pt files that must never run code."""

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from surrogate_kd.checkpoint import (SIDECAR_HELP, atomic_write, atomic_write_text, load_model, load_state,
                                     save_model, save_state)
from surrogate_kd.config import InputSpec
from surrogate_kd.errors import first_line
from surrogate_kd.models import build_model
from conftest import raises_one_line

SPEC = InputSpec(16, 1, (0.5,), (0.25,), ("a", "b", "c", "d"))


@pytest.fixture
def saved(tmp_path) -> Path:
    """A small saved checkpoint: model.safetensors + model.json."""
    return save_model(build_model("convnet_tiny", SPEC), tmp_path / "model")


def edit_sidecar(checkpoint: Path, edit) -> Path:
    """Rewrite a checkpoint's sidecar as `edit(meta)` returns it."""
    sidecar = checkpoint.with_suffix(".json")
    sidecar.write_text(json.dumps(edit(json.loads(sidecar.read_text()))))
    return sidecar


def container_of(meta: dict, field: str) -> tuple[dict, str]:
    """The mapping that holds `field` ("arch", "input_spec.size"), and its last key."""
    *parents, key = field.split(".")
    for parent in parents:
        meta = meta[parent]
    return meta, key


def setting(field: str, value):
    """A sidecar edit that sets `field` to `value`."""
    def edit(meta):
        container, key = container_of(meta, field)
        container[key] = value
        return meta
    return edit


def dropping(field: str):
    """A sidecar edit that removes `field`."""
    def edit(meta):
        container, key = container_of(meta, field)
        del container[key]
        return meta
    return edit


def test_round_trip_keeps_weights_spec_and_provenance(tmp_path):
    model = build_model("convnet_tiny", SPEC)
    path = save_model(model, tmp_path / "m", extra={"config": {"lr": 0.1}})
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["arch"] == "convnet_tiny" and meta["config"] == {"lr": 0.1} and "version" in meta
    loaded = load_model(path)
    assert loaded.spec == SPEC
    x = torch.rand(2, 1, 16, 16)
    model.eval(), loaded.eval()
    assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize("message, expected", [
    ("plain", "plain"),
    ("\n  \nsecond line first\nthird", "second line first"),
    ("", "EOFError"),
])
def test_first_line_of_any_message(message, expected):
    assert first_line(EOFError(message)) == expected


SIDECAR_CASES = [
    # (id, edit of the sidecar's JSON, fragment the error must hold)
    ("arch-number", setting("arch", 123), "arch is 123"),
    ("arch-missing", dropping("arch"), "arch is missing"),
    ("arch-empty", setting("arch", " "), 'arch is " "'),
    ("spec-missing", dropping("input_spec"), "input_spec is missing"),
    ("spec-list", setting("input_spec", [16, 1]), "input_spec is [16, 1]"),
    ("not-an-object", lambda meta: ["arch", "convnet_tiny"], "the whole file is"),
    ("size-missing", dropping("input_spec.size"), "input_spec.size is missing"),
    ("size-huge-float", setting("input_spec.size", 1e9), "input_spec.size is 1000000000.0"),
    ("size-zero", setting("input_spec.size", 0), "input_spec.size is 0"),
    ("size-too-big", setting("input_spec.size", 4097), "in 1..4096"),
    ("size-string", setting("input_spec.size", "16"), 'input_spec.size is "16"'),
    ("size-bool", setting("input_spec.size", True), "input_spec.size is true"),
    ("channels-2", setting("input_spec.channels", 2), "input_spec.channels is 2"),
    ("channels-missing", dropping("input_spec.channels"), "input_spec.channels is missing"),
    ("mean-too-long", setting("input_spec.mean", [0.5, 0.5]), "input_spec.mean is [0.5, 0.5]"),
    ("mean-strings", setting("input_spec.mean", ["0.5"]), "input_spec.mean is"),
    ("mean-null", setting("input_spec.mean", None), "input_spec.mean is null"),
    ("std-zero", setting("input_spec.std", [0]), "input_spec.std is [0]"),
    ("std-negative", setting("input_spec.std", [-0.25]), "each > 0"),
    ("std-missing", dropping("input_spec.std"), "input_spec.std is missing"),
    ("std-nan", setting("input_spec.std", [float("nan")]), "input_spec.std is [NaN]"),
    ("classes-one", setting("input_spec.classes", ["only"]), "input_spec.classes is"),
    ("classes-numbers", setting("input_spec.classes", [0, 1, 2, 3]), "at least 2 class names"),
    ("classes-string", setting("input_spec.classes", "abcd"), 'input_spec.classes is "abcd"'),
    ("format-unknown", setting("format", "keras"), 'format is "keras"'),
    ("onnx-without-sha256", lambda meta: {**meta, "format": "onnx", "file": "model.onnx"}, "sha256 is missing"),
    ("file-elsewhere", setting("file", "../model.safetensors"), 'file is "../model.safetensors"'),
    ("differentiable-string", setting("differentiable", "yes"), 'differentiable is "yes"'),
]


@pytest.mark.parametrize("edit, fragment", [c[1:] for c in SIDECAR_CASES], ids=[c[0] for c in SIDECAR_CASES])
def test_bad_sidecar_field_is_a_one_line_error_naming_file_and_field(saved, edit, fragment):
    sidecar = edit_sidecar(saved, edit)
    raises_one_line(lambda: load_model(saved), f"model sidecar {sidecar}", fragment)


@pytest.mark.parametrize("content", [b"", b"{not json", b"\xff\xfe\x00garbage"], ids=["empty", "not-json", "binary"])
def test_unreadable_sidecar(saved, content):
    sidecar = saved.with_suffix(".json")
    sidecar.write_bytes(content)
    raises_one_line(lambda: load_model(saved), f"cannot read model sidecar {sidecar}")


def test_unusual_but_valid_sidecar_loads(saved):
    def unusual(meta):
        # Integer statistics, non-ASCII class names, extra fields, no provenance, the largest size.
        for key in ("version", "git_commit", "torch"):
            meta.pop(key)
        meta["notes"] = {"written": "by hand"}
        meta["input_spec"].update(size=4096, mean=[0], std=[1], classes=["T-shirt/top", "Hose", "Größe", "猫"],
                                  comment="extra fields are ignored")
        return meta
    edit_sidecar(saved, unusual)
    model = load_model(saved)
    assert model.spec == InputSpec(4096, 1, (0.0,), (1.0,), ("T-shirt/top", "Hose", "Größe", "猫"))
    assert model(torch.rand(2, 1, 16, 16)).shape == (2, 4)


def test_arch_and_spec_arguments_take_the_place_of_the_sidecar(tmp_path):
    model = build_model("convnet_tiny", SPEC)
    torch.save(model.net.state_dict(), tmp_path / "w.pt")
    loaded = load_model(tmp_path / "w.pt", arch="convnet_tiny", spec=SPEC)
    assert torch.equal(loaded.net.fc.weight, model.net.fc.weight)


@pytest.mark.parametrize("name", ["w.pt", "w.pth", "w.safetensors"])
def test_checkpoint_without_sidecar_says_how_to_write_one(tmp_path, saved, name):
    weights = tmp_path / name
    if name.endswith(".safetensors"):
        weights.write_bytes(saved.read_bytes())
    else:
        torch.save({"state_dict": load_model(saved).net.state_dict(), "epoch": 3}, weights)
    message = raises_one_line(lambda: load_model(weights), str(weights), "sidecar w.json", "`arch`", "`input_spec`",
                              "train-teacher", "surrogate-kd import-teacher", SIDECAR_HELP)
    assert "--arch" not in message  # the advice is the command, whose --help tells the rest
    assert (Path(__file__).parents[1] / SIDECAR_HELP).is_file()
    # The recipe of the doc: a sidecar with arch and input_spec is all a state dict needs.
    sidecar = {"arch": "convnet_tiny", "input_spec": {"size": 16, "channels": 1, "mean": [0.5], "std": [0.25],
                                                      "classes": ["a", "b", "c", "d"]}}
    (tmp_path / "w.json").write_text(json.dumps(sidecar))
    assert torch.equal(load_model(weights).net.fc.weight, load_model(saved).net.fc.weight)


def test_a_checkpoint_is_named_by_its_directory_its_sidecar_or_its_weights(tmp_path, saved):
    reference = load_model(saved).net.fc.weight
    for name in (tmp_path, tmp_path / "model.json", saved):
        assert torch.equal(load_model(name).net.fc.weight, reference), name
    (tmp_path / "empty").mkdir()
    raises_one_line(lambda: load_model(tmp_path / "empty"), "holds no model.json", "import-teacher")
    (tmp_path / "notes.txt").write_text("x")
    raises_one_line(lambda: load_model(tmp_path / "notes.txt"), "unknown model format")


class RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_that_runs_code_is_refused(tmp_path, capsys):
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"weight": RunsCode()}, f)
    raises_one_line(lambda: load_model(tmp_path / "evil.pt", arch="convnet_tiny", spec=SPEC), "cannot read model")
    assert "this must never run" not in capsys.readouterr().out


def test_missing_file_and_mismatched_weights(tmp_path, saved):
    raises_one_line(lambda: load_model(tmp_path / "nope.safetensors"), "not found")
    raises_one_line(lambda: load_model(saved, arch="convnet_small"), "do not fit architecture 'convnet_small'",
                    "size mismatch")
    edit_sidecar(saved, setting("input_spec.classes", ["a", "b", "c", "d", "e"]))
    raises_one_line(lambda: load_model(saved), "do not fit", "fc.weight")


@pytest.mark.parametrize("message, expected", [
    ("Error(s) in loading state_dict for Net:\n\tUnexpected key(s) in state_dict: \"x\".",
     'Unexpected key(s) in state_dict: "x".'),
    ("one line only", "one line only"),
    ("", "RuntimeError"),
], ids=["usual", "one-line", "empty"])
def test_mismatch_message_of_any_shape(saved, monkeypatch, message, expected):
    def refuse(self, state, *args, **kwargs):
        raise RuntimeError(message)
    monkeypatch.setattr(torch.nn.Module, "load_state_dict", refuse)
    raises_one_line(lambda: load_model(saved), f"{saved}: weights do not fit architecture 'convnet_tiny': {expected}")


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


MODEL_FILE_CASES = [
    # (id, file name, bytes from a good file of that kind -> bad bytes, fragment)
    ("empty-pt", "w.pt", lambda good: b"", "the file is empty"),
    ("truncated-pt", "w.pt", truncated, "cannot read model"),
    ("empty-safetensors", "w.safetensors", lambda good: b"", "the file is empty"),
    ("garbage-safetensors", "w.safetensors", lambda good: b"not a safetensors file", "header"),
    ("truncated-safetensors", "w.safetensors", truncated, "cannot read model"),
    ("tensor-not-dict", "w.pt", None, "not a state dict"),
]


@pytest.mark.parametrize("name, spoil, fragment", [c[1:] for c in MODEL_FILE_CASES],
                         ids=[c[0] for c in MODEL_FILE_CASES])
def test_empty_or_truncated_model_file(tmp_path, saved, name, spoil, fragment):
    weights = tmp_path / name
    (tmp_path / "w.json").write_text(saved.with_suffix(".json").read_text())
    if spoil is None:
        torch.save(torch.zeros(3), weights)
    else:
        if name.endswith(".pt"):
            torch.save(load_model(saved).net.state_dict(), weights)
        else:
            weights.write_bytes(saved.read_bytes())
        weights.write_bytes(spoil(weights.read_bytes()))
    raises_one_line(lambda: load_model(weights), str(weights), fragment)


@pytest.mark.parametrize("spoil, fragment", [
    (lambda path: path.write_bytes(b""), "the file is empty"),
    (lambda path: path.write_bytes(truncated(path.read_bytes())), "cannot resume"),
    (lambda path: torch.save([1, 2], path), "holds a list"),
], ids=["empty", "truncated", "not-a-dict"])
def test_unreadable_training_state(tmp_path, spoil, fragment):
    state = tmp_path / "state.pt"
    save_state(state, {"step": 7, "model": build_model("convnet_tiny", SPEC).state_dict()})
    assert load_state(state)["step"] == 7
    spoil(state)
    raises_one_line(lambda: load_state(state), str(state), fragment, "delete it to start over")


@pytest.fixture(params=[0o022, 0o002, 0o077], ids=lambda mask: f"umask-{mask:03o}")
def umask(request) -> int:
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def test_written_files_follow_the_umask_like_open(tmp_path, umask):
    checkpoint = save_model(build_model("convnet_tiny", SPEC), tmp_path / "m")
    save_state(tmp_path / "state.pt", {"step": 1})
    atomic_write_text(tmp_path / "report.md", "# report\n")
    (tmp_path / "plain.txt").write_text("reference")
    expected = 0o666 & ~umask
    written = [checkpoint, checkpoint.with_suffix(".json"), tmp_path / "state.pt", tmp_path / "report.md",
               tmp_path / "plain.txt"]
    assert {path.name: oct(path.stat().st_mode & 0o777) for path in written} == {
        path.name: oct(expected) for path in written}


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "result.json"
    atomic_write_text(target, "old")

    def fails_halfway(tmp: Path):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fails_halfway)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_another_process_saving_the_same_state_meanwhile(tmp_path, monkeypatch):
    # Two runs into one directory: run 2 saves state.pt from start to end while run 1's save is
    # between writing its temporary file and renaming it. A shared temporary name loses run 1's file.
    pid = {"now": 1001}
    monkeypatch.setattr(os, "getpid", lambda: pid["now"])
    target = tmp_path / "state.pt"

    def run_one_writes(tmp: Path):
        torch.save({"step": 1}, tmp)
        pid["now"] = 1002
        save_state(target, {"step": 2})
        pid["now"] = 1001

    atomic_write(target, run_one_writes)
    assert load_state(target) == {"step": 1}  # the last rename wins, whole
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]
