"""Checkpoints: safetensors weights + a JSON sidecar; resumable training state; safe loading.

A model checkpoint `NAME.safetensors` has `NAME.json` beside it with the architecture, the input
spec (size, channels, mean/std, class names), the resolved config, the package version and the
git commit, so a checkpoint explains itself and data can be converted to what the model expects.
The format is described in docs/checkpoint-format.md.
"""

import json
import math
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import __version__
from .config import InputSpec
from .errors import UserError, first_line
from .files import atomic_write, atomic_write_text
from .models import ImageClassifier, build_model

MODEL_SUFFIXES = (".safetensors", ".pt", ".pth")  # state dicts
BLACK_BOX_SUFFIXES = (".torchscript", ".onnx")  # networks as files, imported by `import-teacher` (surrogate_kd/foreign/)
BLACK_BOX_FORMATS = ("torchscript", "onnx")
# Far beyond any classifier's input; a typo such as 1e9 must not reach the allocator.
MAX_INPUT_SIZE = 4096
SIDECAR_HELP = "docs/checkpoint-format.md"
_MISSING = object()  # a sidecar field that is absent, told apart from one that is null


def git_commit() -> str | None:
    """The commit of the code that produced a result, when run from a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> dict:
    return {"version": __version__, "git_commit": git_commit(), "torch": torch.__version__}


# ----------------------------------------------------------------------------------------------
# Writing: every file goes through files.atomic_write.


def save_model(model: ImageClassifier, path: str | Path, extra: dict | None = None) -> Path:
    """Write `path` (.safetensors) and its JSON sidecar; the sidecar goes last, marking completion."""
    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.net.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp)))
    meta = {"arch": model.arch, "input_spec": spec_dict(model.spec), **provenance(), **(extra or {})}
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2, default=str))
    return path


def spec_dict(spec: InputSpec) -> dict:
    return {"size": spec.size, "channels": spec.channels, "mean": list(spec.mean), "std": list(spec.std),
            "classes": list(spec.classes)}


def save_state(path: Path, state: dict) -> None:
    """Resumable training state (weights, optimizer, step), written atomically."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


# ----------------------------------------------------------------------------------------------
# Reading: every bad file becomes a one-line UserError naming the file.


def load_model(path: str | Path, arch: str | None = None, spec: InputSpec | None = None) -> ImageClassifier:
    """Load a model from a checkpoint: its directory, its sidecar, or its weights file with the sidecar beside it.

    A directory holds `model.json` (and the file it names); `NAME.safetensors`, `.pt` or `.pth` has
    `NAME.json` beside it. The sidecar's `format` says what the weights are: a state dict
    (`safetensors`, the default), or a black box (`torchscript`, `onnx`: see surrogate_kd/foreign/) that loads
    as a BlackBoxClassifier. `arch` and `spec`, when given, take the place of the sidecar's for a
    state dict. A `.pt`/`.pth` file is read with `torch.load(weights_only=True)` only, so a teacher
    file can never run Python code.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"model file not found: {path}")
    if path.is_dir():
        sidecar, weights = path / "model.json", None
        if not sidecar.exists():
            raise UserError(f"{path} holds no model.json; a checkpoint directory holds model.json and the weights "
                            f"it names, as train-teacher, distill and import-teacher write them (see {SIDECAR_HELP})")
    elif path.suffix == ".json":
        sidecar, weights = path, None
    elif path.suffix in MODEL_SUFFIXES + BLACK_BOX_SUFFIXES:
        sidecar, weights = path.with_suffix(".json"), path
    else:
        raise UserError(f"{path}: unknown model format (expected a checkpoint directory, model.json, "
                        ".safetensors, .pt or .pth)")
    if weights is not None and weights.suffix in MODEL_SUFFIXES and arch is not None and spec is not None:
        meta = {}  # a state dict whose architecture and spec the caller gives: no sidecar needed
    else:
        if not sidecar.exists():
            raise UserError(f"{path}: no sidecar {sidecar.name} beside it; a checkpoint needs one with `arch` and "
                            "`input_spec` (size, channels, mean, std, classes), as train-teacher and distill write "
                            "it; `surrogate-kd import-teacher` writes one for weights from elsewhere (the format is "
                            f"described in {SIDECAR_HELP})")
        meta, sidecar_arch, sidecar_spec = _read_checkpoint_sidecar(sidecar)
        arch = sidecar_arch if arch is None else arch
        spec = sidecar_spec if spec is None else spec
    format = meta.get("format", "safetensors")
    if format in BLACK_BOX_FORMATS:
        from .foreign import load_black_box

        return load_black_box(format, weights or sidecar.parent / meta["file"], spec, meta["sha256"],
                              meta.get("differentiable"))
    weights = weights or _weights_beside(sidecar, meta)
    state = read_weights(weights)
    model = build_model(arch, spec)
    try:
        model.net.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"{weights}: weights do not fit architecture '{arch}': {_mismatch_detail(e)}") from None
    return model


def _weights_beside(sidecar: Path, meta: dict) -> Path:
    """The state dict a sidecar goes with: the file it names, or NAME.safetensors/.pt/.pth beside NAME.json."""
    if "file" in meta:
        return sidecar.parent / meta["file"]
    candidates = [sidecar.with_suffix(suffix) for suffix in MODEL_SUFFIXES]
    found = next((c for c in candidates if c.exists()), None)
    if found is None:
        raise UserError(f"model sidecar {sidecar}: no weights beside it ({', '.join(c.name for c in candidates)})")
    return found


def read_sidecar(sidecar: Path) -> tuple[str, InputSpec]:
    """The architecture and input spec from a model's JSON sidecar, every field checked."""
    _, arch, spec = _read_checkpoint_sidecar(sidecar)
    return arch, spec


def _read_checkpoint_sidecar(sidecar: Path) -> tuple[dict, str, InputSpec]:
    """The sidecar's JSON, architecture and input spec, every field checked.

    A bad value would otherwise surface far away, or not at all: std 0 divides every input by
    zero and the model quietly predicts one class; size 1e9 asks for an impossible image.
    """
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read model sidecar {sidecar}: {first_line(e)}") from None

    def refuse(field: str, wanted: str, value=_MISSING) -> UserError:
        problem = "is missing" if value is _MISSING else f"is {_clip(json.dumps(value))}"
        return UserError(f"model sidecar {sidecar}: {field} {problem}; it must be {wanted} (see {SIDECAR_HELP})")

    if not isinstance(meta, dict):
        raise refuse("the whole file", "a JSON object with `arch` and `input_spec`", meta)
    arch = meta.get("arch", _MISSING)
    if not (isinstance(arch, str) and arch.strip()):
        raise refuse("arch", "a model name such as 'resnet18' or 'torchvision:resnet18'", arch)
    format = meta.get("format", "safetensors")
    if format not in ("safetensors", *BLACK_BOX_FORMATS):
        raise refuse("format", f"one of safetensors, {', '.join(BLACK_BOX_FORMATS)}", format)
    file = meta.get("file", _MISSING)
    if not (file is _MISSING and format == "safetensors"
            or isinstance(file, str) and file and Path(file).name == file and file not in (".", "..")):
        raise refuse("file", "the name of the weights file in the sidecar's directory", file)
    sha256 = meta.get("sha256", _MISSING)
    if format in BLACK_BOX_FORMATS and not (isinstance(sha256, str) and re.fullmatch(r"[0-9a-f]{64}", sha256)):
        raise refuse("sha256", f"the SHA-256 of the {format} file (64 hex digits)", sha256)
    differentiable = meta.get("differentiable", _MISSING)
    if differentiable is not _MISSING and not isinstance(differentiable, bool):
        raise refuse("differentiable", "true or false", differentiable)
    spec = meta.get("input_spec", _MISSING)
    if not isinstance(spec, dict):
        raise refuse("input_spec", "an object with size, channels, mean, std and classes", spec)
    size = spec.get("size", _MISSING)
    if not (_is_integer(size) and 1 <= size <= MAX_INPUT_SIZE):
        raise refuse("input_spec.size", f"an integer in 1..{MAX_INPUT_SIZE} (pixels per side)", size)
    channels = spec.get("channels", _MISSING)
    if not (_is_integer(channels) and channels in (1, 3)):
        raise refuse("input_spec.channels", "1 (gray) or 3 (RGB)", channels)
    per_channel = f"a list of {channels} number{'s' if channels > 1 else ''}, one per channel"
    mean = spec.get("mean", _MISSING)
    if not _is_number_list(mean, channels):
        raise refuse("input_spec.mean", per_channel, mean)
    std = spec.get("std", _MISSING)
    if not (_is_number_list(std, channels) and all(s > 0 for s in std)):
        raise refuse("input_spec.std", f"{per_channel}, each > 0 (inputs are divided by it)", std)
    classes = spec.get("classes", _MISSING)
    if not (isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) for c in classes)):
        raise refuse("input_spec.classes", "a list of at least 2 class names (strings)", classes)
    return meta, arch, InputSpec(size, channels, tuple(map(float, mean)), tuple(map(float, std)), tuple(classes))


def _is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number_list(value, length: int) -> bool:
    # JSON true/false are ints to Python, and Python's json reads NaN and Infinity: none is a statistic.
    return isinstance(value, list) and len(value) == length and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)


def _clip(text: str, limit: int = 200) -> str:
    """Keep a quoted value or library message to a readable part of one line."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_weights(path: Path) -> Mapping:
    """A state dict from .safetensors or .pt/.pth (tensors only: never code); unwraps {"state_dict": ...}."""
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            # weights_only: a .pt is a pickle, and a plain pickle may run any code while loading.
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # empty, truncated or foreign file, or a pickle that wants to run code
        raise UserError(f"cannot read model {path}: {_why_unreadable(path, e)}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]  # a training checkpoint {"state_dict": ..., "epoch": ...}
    if not isinstance(state, Mapping):
        raise UserError(f"{path}: holds a {type(state).__name__}, not a state dict (parameter names -> tensors)")
    return state


def _why_unreadable(path: Path, error: Exception) -> str:
    # An empty file is what an interrupted copy or a full disk leaves; the library's own message
    # for it is empty (torch) or cryptic (safetensors: "header too small").
    if path.stat().st_size == 0:
        return "the file is empty (0 bytes)"
    return _clip(first_line(error))


def _mismatch_detail(error: RuntimeError) -> str:
    """The first concrete problem of a load_state_dict error.

    Its first line is a header ("Error(s) in loading state_dict for X:"); the problems (missing
    keys, size mismatches) follow, one per line.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return _clip(lines[1] if len(lines) > 1 else first_line(error))


def load_state(path: Path) -> dict | None:
    """The state `save_state` wrote, or None when there is none yet."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot resume from {path}: {_why_unreadable(path, e)} (delete it to start over)") from None
    if not isinstance(state, dict):
        raise UserError(f"cannot resume from {path}: it holds a {type(state).__name__}, not a training state "
                        "(delete it to start over)")
    return state
