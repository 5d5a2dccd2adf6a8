"""Checkpoints: safetensors weights + a JSON sidecar; resumable training state; safe loading.

A model checkpoint `NAME.safetensors` has `NAME.json` beside it with the architecture, the input
spec (size, channels, mean/std, class names), the resolved config, the package version and the
git commit, so a checkpoint explains itself and data can be converted to what the model expects.
"""

import json
import os
import subprocess
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import __version__
from .config import InputSpec
from .errors import UserError
from .models import ImageClassifier, build_model


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


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_model(model: ImageClassifier, path: str | Path, extra: dict | None = None) -> Path:
    """Write `path` (.safetensors) and its JSON sidecar; the sidecar goes last, marking completion."""
    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.net.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, path)
    meta = {"arch": model.arch, "input_spec": _spec_dict(model.spec), **provenance(), **(extra or {})}
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2, default=str))
    return path


def _spec_dict(spec: InputSpec) -> dict:
    return {"size": spec.size, "channels": spec.channels, "mean": list(spec.mean), "std": list(spec.std),
            "classes": list(spec.classes)}


def load_model(path: str | Path, arch: str | None = None, spec: InputSpec | None = None) -> ImageClassifier:
    """Load a model from our checkpoint (.safetensors + .json), or a plain `.pt`/`.pth` state dict.

    A `.pt`/`.pth` file is read with `torch.load(weights_only=True)` only, so a teacher file can
    never run code; such a file has no sidecar, so `arch` and `spec` must be given.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"model file not found: {path}")
    sidecar = path.with_suffix(".json")
    meta = {}
    if sidecar.exists():
        try:
            meta = json.loads(sidecar.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"corrupt model sidecar {sidecar}: {e}") from None
    arch = arch or meta.get("arch")
    if spec is None and "input_spec" in meta:
        spec = InputSpec.from_dict(meta["input_spec"])
    if arch is None or spec is None:
        raise UserError(f"{path}: no sidecar {sidecar.name} with the architecture and input spec; "
                        "give --arch and the input spec (--size, --channels, --classes)")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        elif path.suffix in (".pt", ".pth"):
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
        else:
            raise UserError(f"{path}: unknown model format (expected .safetensors, .pt or .pth)")
    except UserError:
        raise
    except Exception as e:  # corrupt file, or a pickle that wants to run code
        raise UserError(f"cannot read model {path}: {str(e).splitlines()[0]}") from None
    model = build_model(arch, spec)
    try:
        model.net.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not fit architecture '{arch}': {str(e).splitlines()[1].strip()}") from None
    return model


def save_state(path: Path, state: dict) -> None:
    """Resumable training state (weights, optimizer, step), written atomically."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot resume from {path}: {str(e).splitlines()[0]} (delete it to start over)") from None
