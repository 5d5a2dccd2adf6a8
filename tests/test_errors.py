"""Bad input, as a new or a hostile user gives it (issue 12, item 5): one table, one test.

Each row is a probe through `main()`: it must end with exit status 2, exactly one stderr line
`surrogate-kd: error: ...` naming the problem, and nothing written at its output (a new path is
not created, an existing one is unchanged to the byte). The inputs that must work instead are
the small tests at the end.
"""

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from surrogate_kd.cli import build_parser, main

TINY = ["--epochs", "1", "--batch-size", "32", "--device", "cpu", "--precision", "fp32"]
SMALL = ["--candidates", "256", "--per-class", "16"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_dataset) -> Path:
    """A 16x16 grey 4-class teacher's model.safetensors, trained once through the CLI."""
    out = tmp_path_factory.mktemp("errors") / "teacher"
    assert main(["train-teacher", "--data", str(tiny_dataset), "--arch", "convnet_tiny", "--out", str(out),
                 *TINY]) == 0
    return out / "model.safetensors"


@dataclass
class Env:
    """What a probe builds its input from; `tmp` is the probe's own folder."""

    tmp: Path
    teacher: Path
    data: Path
    monkeypatch: pytest.MonkeyPatch


def distill(env: Env, *extra: str, data="noise", teacher=None, out=None) -> tuple[list[str], Path]:
    """A tiny distill command (later flags win, so `extra` overrides TINY) and the path it writes."""
    out = Path(out or env.tmp / "out")
    return ["distill", "--teacher", str(teacher or env.teacher), "--data", str(data), "--student", "convnet_tiny",
            "--out", str(out), *SMALL, *TINY, *extra], out


def select(env: Env, *extra: str) -> tuple[list[str], Path]:
    out = env.tmp / "pool"
    return ["select", "--teacher", str(env.teacher), "--data", "noise", "--per-class", "8", "--candidates", "64",
            "--device", "cpu", "--out", str(out), *extra], out


def preview(env: Env, *extra: str, out=None) -> tuple[list[str], Path]:
    out = Path(out or env.tmp / "preview.png")
    return ["augment-preview", "--data", str(env.data), "--size", "16", "--channels", "1", "--out", str(out),
            *extra], out


def train_teacher(env: Env, out: Path) -> tuple[list[str], Path]:
    return ["train-teacher", "--data", str(env.data), "--arch", "convnet_tiny", "--out", str(out), *TINY], out


def score(env: Env, out: Path) -> tuple[list[str], Path]:
    return ["score", "--teacher", str(env.teacher), "--data", "noise", "--candidates", "64", "--device", "cpu",
            "--out", str(out)], out


def npz(env: Env, images: np.ndarray, labels: np.ndarray | None = None) -> Path:
    path = env.tmp / "set.npz"
    np.savez(path, images=images, **({} if labels is None else {"labels": labels}))
    return path


def grey(n: int = 64) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 16, 16), dtype=np.uint8)


def edited_teacher(env: Env, edit) -> Path:
    """A copy of the teacher whose sidecar's input_spec went through `edit(meta)`."""
    copy = env.tmp / "teacher"
    shutil.copytree(env.teacher.parent, copy)
    meta = json.loads((copy / "model.json").read_text())
    edit(meta)
    (copy / "model.json").write_text(json.dumps(meta))
    return copy / "model.safetensors"


def png_folder(root: Path, classes=("c0", "c1"), per_class: int = 8, mode: str = "L") -> Path:
    from PIL import Image

    g = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            shape = (16, 16) if mode == "L" else (16, 16, 3)
            Image.fromarray(g.integers(0, 256, shape, dtype=np.uint8), mode).save(root / name / f"{i}.png")
    return root


def a_file(env: Env) -> Path:
    path = env.tmp / "afile"
    path.write_text("not a directory\n")
    return path


def read_only_dir(env: Env) -> Path:
    """A directory the probe may not write in. Root (CAP_DAC_OVERRIDE) writes anyway, so there the
    row is skipped; the `under-a-file` rows below fail for root too."""
    path = env.tmp / "ro"
    path.mkdir()
    path.chmod(0o555)
    try:
        (path / "probe").touch()
    except PermissionError:
        return path
    (path / "probe").unlink()
    pytest.skip("directory permissions are not enforced for this user (root)")


def sidecar_teacher(env: Env, suffix: str, sidecar: bool, empty: bool) -> Path:
    """The teacher's weights as a `.pt` state dict (or an empty file), with or without its sidecar."""
    from safetensors.torch import load_file

    path = env.tmp / f"teacher{suffix}"
    if empty:
        path.write_bytes(b"")
    else:
        torch.save(load_file(str(env.teacher)), path)
    if sidecar:
        shutil.copy(env.teacher.with_suffix(".json"), path.with_suffix(".json"))
    return path


def resumed_with_empty_state(env: Env, student_run: Path) -> tuple[list[str], Path]:
    """A finished distill run made unfinished again, with an empty state.pt to resume from."""
    run = env.tmp / "run"
    shutil.copytree(student_run, run)
    (run / "result.json").unlink()
    (run / "state.pt").write_bytes(b"")
    argv, _ = distill(env, out=run)
    return argv, run


def set_item(key, value):
    return lambda meta: meta["input_spec"].__setitem__(key, value)


# (id, build(env, student_run) -> (argv, the path it must leave as it was), fragment of the one error line)
PROBES = [
    # Training settings: ranges and types, as flags and as --set.
    ("batch-size-negative", lambda e, s: distill(e, "--batch-size", "-64"), "batch_size must be positive"),
    ("batch-size-zero", lambda e, s: distill(e, "--batch-size", "0"), "batch_size must be positive"),
    ("epochs-negative", lambda e, s: distill(e, "--epochs", "-1"), "epochs must be positive"),
    ("log-every-zero", lambda e, s: distill(e, "--set", "log_every=0"), "log_every must be positive"),
    ("lr-not-a-number", lambda e, s: distill(e, "--set", "lr=abc"), "lr must be a number"),
    ("epochs-a-list", lambda e, s: distill(e, "--set", "epochs=[1,2]"), "epochs must be a number"),
    ("device-bogus", lambda e, s: distill(e, "--device", "bogus"), "unknown device 'bogus'"),
    ("evaluate-device-bogus", lambda e, s: (["evaluate", "--model", str(e.teacher), "--data", str(e.data),
                                             "--device", "bogus"], e.tmp / "nothing"), "unknown device 'bogus'"),
    ("param-not-a-number", lambda e, s: distill(e, "--param", "min_radius=abc", data="leaves"),
     "min_radius must be a number"),
    # select and augment-preview counts.
    ("select-cap-negative", lambda e, s: select(e, "--cap", "-5"), "cap must be a positive"),
    ("select-cap-zero", lambda e, s: select(e, "--cap", "0"), "cap must be a positive"),
    ("select-per-class-zero", lambda e, s: select(e, "--per-class", "0"), "per-class count must be positive"),
    ("preview-set-without-value", lambda e, s: preview(e, "--set", "flip_p"), "--set expects KEY=VALUE"),
    ("preview-zero-draws", lambda e, s: preview(e, "-n", "0"), "-n must be a positive"),
    # Image sets in a layout or with labels the reader would misread.
    ("npz-rgba", lambda e, s: distill(e, data=npz(e, np.zeros((64, 16, 16, 4), np.uint8))), "4 channels"),
    ("npz-channels-first", lambda e, s: distill(e, data=npz(e, np.zeros((64, 3, 16, 16), np.uint8))),
     "channels-first"),
    ("npz-negative-labels", lambda e, s: distill(e, "--eval-data", str(npz(e, grey(), np.arange(64) % 4 - 1))),
     "non-negative"),
    ("npz-column-labels", lambda e, s: distill(e, "--eval-data", str(npz(e, grey(), (np.arange(64) % 4)[:, None]))),
     "flatten them"),
    ("decompression-bomb", lambda e, s: (e.monkeypatch.setattr("PIL.Image.MAX_IMAGE_PIXELS", 100),
                                         distill(e, data=png_folder(e.tmp / "photos")))[1], "decompression-bomb"),
    # Teacher files: sidecar fields checked one by one, unreadable weights.
    ("sidecar-arch-number", lambda e, s: distill(e, teacher=edited_teacher(e, lambda m: m.update(arch=123))),
     "arch is 123"),
    ("sidecar-size-missing", lambda e, s: distill(e, teacher=edited_teacher(e, lambda m: m["input_spec"].pop("size"))),
     "input_spec.size is missing"),
    ("sidecar-size-huge", lambda e, s: distill(e, teacher=edited_teacher(e, set_item("size", 1e9))),
     "input_spec.size is 1000000000.0"),
    ("sidecar-mean-5-values", lambda e, s: distill(e, teacher=edited_teacher(e, set_item("mean", [0.5] * 5))),
     "input_spec.mean"),
    ("sidecar-std-zero", lambda e, s: distill(e, teacher=edited_teacher(e, set_item("std", [0]))),
     "input_spec.std is [0]"),
    ("teacher-pt-empty", lambda e, s: distill(e, teacher=sidecar_teacher(e, ".pt", sidecar=True, empty=True)),
     "empty (0 bytes)"),
    ("teacher-pt-no-sidecar", lambda e, s: distill(e, teacher=sidecar_teacher(e, ".pt", sidecar=False, empty=False)),
     "no sidecar teacher.json"),
    ("resume-empty-state", lambda e, s: resumed_with_empty_state(e, s), "state.pt: the file is empty"),
    # Outputs that cannot or must not be written.
    ("distill-out-is-a-file", lambda e, s: distill(e, out=a_file(e)), "exists and is a file"),
    ("score-out-is-a-file", lambda e, s: score(e, a_file(e)), "exists and is a file"),
    ("distill-read-only", lambda e, s: (read_only_dir(e), distill(e, out=e.tmp / "ro" / "s"))[1], "cannot write"),
    ("teacher-read-only", lambda e, s: (read_only_dir(e), train_teacher(e, e.tmp / "ro" / "t"))[1], "cannot write"),
    ("score-read-only", lambda e, s: (read_only_dir(e), score(e, e.tmp / "ro" / "s"))[1], "cannot write"),
    ("preview-read-only", lambda e, s: (read_only_dir(e), preview(e, out=e.tmp / "ro" / "p.png"))[1],
     "cannot write"),
    ("distill-under-a-file", lambda e, s: distill(e, out=a_file(e) / "s"), "cannot write"),
    ("teacher-under-a-file", lambda e, s: train_teacher(e, a_file(e) / "t"), "cannot write"),
    ("score-under-a-file", lambda e, s: score(e, a_file(e) / "s"), "cannot write"),
    ("preview-under-a-file", lambda e, s: preview(e, out=a_file(e) / "sub" / "p.png"), "cannot write"),
    ("distill-into-its-teacher", lambda e, s: distill(e, teacher=edited_teacher(e, lambda m: None),
                                                      out=e.tmp / "teacher"), "never writes over its teacher"),
    ("teacher-into-a-student-run", lambda e, s: train_teacher(e, shutil.copytree(s, e.tmp / "student")),
     "holds another run"),
]


@pytest.fixture(scope="module")
def student_run(tmp_path_factory, teacher) -> Path:
    """A finished distill run directory, for the probes that reuse or resume one."""
    out = tmp_path_factory.mktemp("errors") / "student"
    assert main(["distill", "--teacher", str(teacher), "--data", "noise", "--student", "convnet_tiny",
                 "--out", str(out), *SMALL, *TINY]) == 0
    return out


def snapshot(path: Path) -> dict[str, bytes] | None:
    """Every file under `path` (or `path` itself) by relative name -> bytes; None when absent."""
    if not path.exists():
        return None
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def options_of(command: str) -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return set(sub._option_string_actions)


@pytest.mark.parametrize("build, fragment", [row[1:] for row in PROBES], ids=[row[0] for row in PROBES])
def test_bad_input_is_one_line_exit_2_nothing_written(build, fragment, tmp_path, teacher, student_run, tiny_dataset,
                                                      monkeypatch, capsys):
    argv, out = build(Env(tmp_path, teacher, tiny_dataset, monkeypatch), student_run)
    before = snapshot(out)
    capsys.readouterr()
    try:
        assert main(argv) == 2
    finally:
        if (tmp_path / "ro").exists():
            (tmp_path / "ro").chmod(0o755)  # so pytest can clean up
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("surrogate-kd: error: ")]
    assert len(errors) == 1 and not any("Traceback" in line for line in err), err
    assert fragment.lower() in errors[0].lower(), errors[0]
    # An error points only at options that exist (the .pt error once told users of --arch --size).
    named = set(re.findall(r"(?<![\w/-])--[a-z][a-z-]*", errors[0]))
    assert named <= options_of(argv[0]), named - options_of(argv[0])
    assert snapshot(out) == before, f"{out} changed"


# ------------------------------------------------------------------------------ inputs that must work

def test_teacher_trains_on_an_image_folder(tmp_path, capsys):
    folder = png_folder(tmp_path / "photos", classes=("cat", "dog", "owl"), per_class=12, mode="RGB")
    assert main(["train-teacher", "--data", str(folder), "--arch", "convnet_tiny", "--out", str(tmp_path / "t"),
                 *TINY]) == 0
    spec = json.loads((tmp_path / "t" / "model.json").read_text())["input_spec"]
    assert spec["classes"] == ["cat", "dog", "owl"] and spec["channels"] == 3 and spec["size"] == 16


def test_rgb_npz_is_read_channels_last(tmp_path, teacher, capsys):
    rgb = tmp_path / "rgb.npz"
    images = np.random.default_rng(0).integers(0, 256, (64, 16, 16, 3), dtype=np.uint8)
    np.savez(rgb, images=images, labels=np.arange(64) % 4)
    assert main(["train-teacher", "--data", str(rgb), "--arch", "convnet_tiny", "--out", str(tmp_path / "t"),
                 *TINY]) == 0
    spec = json.loads((tmp_path / "t" / "model.json").read_text())["input_spec"]
    assert spec["channels"] == 3 and spec["size"] == 16 and len(spec["classes"]) == 4
    # The same file as a grey teacher's surrogate data: converted to its spec, distilled.
    assert main(["distill", "--teacher", str(teacher), "--data", str(rgb), "--student", "convnet_tiny",
                 "--out", str(tmp_path / "s"), *SMALL, *TINY]) == 0
    assert json.loads((tmp_path / "s" / "result.json").read_text())["selected"] == 64
