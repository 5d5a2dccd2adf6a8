"""`import_teacher`: a state dict, TorchScript file or ONNX model -> a checkpoint directory, every
check done before anything is written."""

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import _clip, provenance, read_weights, save_model, spec_dict
from ..config import InputSpec
from ..errors import UserError, first_line
from ..files import atomic_write, atomic_write_text, claim_directory
from ..models import ImageClassifier, build_model
from ..rundir import MODEL_FILE, file_digest
from .blackbox import load_black_box, onnx_session
from .input_spec import resolve_spec

BLACK_BOX_FILES = {"torchscript": "model.torchscript", "onnx": "model.onnx"}
SIDECAR_NAME = "model.json"
# Wrappers whose attribute name prefixes every key of a saved state dict: DataParallel/DDP and
# EMA copies ("module."), Lightning-style modules ("model."), our own ImageClassifier ("net.").
KEY_PREFIXES = ("module.", "model.", "net.")


def _read_state_dict(path: Path) -> dict:
    """A state dict from .safetensors / .pt / .pth (tensors only, never code); unwraps {"state_dict": ...}."""
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    if path.suffix not in (".safetensors", ".pt", ".pth", ".bin"):
        raise UserError(f"{path}: unknown weights format (expected .safetensors, .pt, .pth or .bin); "
                        "a TorchScript file is --torchscript, an ONNX model --onnx")
    state = dict(read_weights(path))
    if "model" in state and isinstance(state["model"], dict) and not any(torch.is_tensor(v) for v in state.values()):
        state = state["model"]  # a training checkpoint {"model": ..., "optimizer": ...}
    tensors = {k: v for k, v in state.items() if torch.is_tensor(v)}
    if not tensors:
        raise UserError(f"{path}: holds no tensors (parameter names -> tensors); save model.state_dict()")
    return tensors


def _fit_keys(state: dict, expected: dict) -> tuple[dict, str | None]:
    """`state` with its keys renamed to `expected`'s when a wrapper prefix explains the difference.

    Tried in turn: as it is; without a prefix every key carries (KEY_PREFIXES); with "1." added
    (a torchvision net behind our gray->RGB adapter). Returns the state and the renaming, or the
    state unchanged and None when no renaming makes the key sets equal.
    """
    keys, wanted = set(state), set(expected)
    if keys == wanted:
        return state, None
    for prefix in KEY_PREFIXES:
        if all(k.startswith(prefix) for k in keys):
            renamed = {k[len(prefix):]: v for k, v in state.items()}
            if set(renamed) == wanted:
                return renamed, f"removed the prefix '{prefix}'"
    if all(k.startswith("1.") for k in wanted):
        renamed = {f"1.{k}": v for k, v in state.items()}
        if set(renamed) == wanted:
            return renamed, "added the prefix '1.' (gray input repeated to RGB)"
    return state, None


def _listed(keys, limit: int = 4) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _check_state(path: Path, state: dict, model: ImageClassifier, arch: str) -> None:
    """One line naming the first problem: missing keys, unexpected keys, or a shape (the head's, said so)."""
    expected = model.net.state_dict()
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} key{'s' if len(missing) > 1 else ''} missing ({_listed(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_listed(unexpected)})")
        raise UserError(f"{path} does not fit {arch}: {' and '.join(parts)}{_arch_hint(arch, state)}")
    num_classes = model.num_classes
    for key, tensor in expected.items():
        if state[key].shape == tensor.shape:
            continue
        got, want = list(state[key].shape), list(tensor.shape)
        if len(got) == len(want) and want[:1] == [num_classes] and got[1:] == want[1:]:
            raise UserError(f"{path}: the head {key} has {got[0]} outputs but {num_classes} classes were given; "
                            f"pass --num-classes {got[0]} or a --classes file with {got[0]} names")
        raise UserError(f"{path} does not fit {arch}: {key} has shape {got} in the file, {want} in the model")


def _arch_hint(arch: str, state: dict) -> str:
    """' (its keys are those of torchvision:NAME)' when a registered name was given for a torchvision net."""
    if ":" in arch:
        return ""
    import torchvision

    if arch not in torchvision.models.list_models(module=torchvision.models):
        return ""
    if set(state) == set(torchvision.models.get_model(arch, weights=None).state_dict()):
        return f"; its keys are those of torchvision:{arch} (the name '{arch}' is our CIFAR-style net)"
    return ""


def _probe(model: nn.Module, spec: InputSpec, what: str, need_gradient: bool = False) -> bool:
    """One forward pass of 2 random images at the spec's size: the output must be (2, classes).

    Returns whether the logits carry a gradient with respect to the input (asked for when
    `need_gradient`, otherwise False).
    """
    x = torch.rand(2, spec.channels, spec.size, spec.size, requires_grad=need_gradient)
    shape = f"{spec.size}x{spec.size} with {spec.channels} channel{'s' if spec.channels > 1 else ''}"
    model.eval()
    try:
        with torch.set_grad_enabled(need_gradient):
            out = model(x)
    except Exception as e:
        raise UserError(f"{what}: a forward pass at {shape} fails ({_clip(first_line(e))}); "
                        "check --size and --channels") from None
    if not torch.is_tensor(out):
        raise UserError(f"{what} returns a {type(out).__name__}, not a (batch, classes) tensor of logits")
    if out.dim() != 2 or out.shape[0] != 2:
        raise UserError(f"{what}: a batch of 2 images at {shape} gives outputs of shape {list(out.shape)}, "
                        "not (2, classes)")
    if out.shape[1] != len(spec.classes):
        raise UserError(f"{what} has {out.shape[1]} outputs but {len(spec.classes)} classes were given; pass "
                        f"--num-classes {out.shape[1]} or a --classes file with {out.shape[1]} names")
    if not torch.isfinite(out).all():
        raise UserError(f"{what}: a forward pass at {shape} gives non-finite logits")
    if not (need_gradient and out.requires_grad):
        return False
    try:  # requires_grad alone may come from the weights; the question is the input's gradient
        (gradient,) = torch.autograd.grad(out.sum(), x, allow_unused=True)
    except RuntimeError:
        return False
    return gradient is not None


def _onnx_inferred(file: Path) -> dict:
    """Size, channels and the number of classes where the ONNX model's shapes fix them."""
    session = onnx_session(file)
    shape, out = session.get_inputs()[0].shape, session.get_outputs()[0].shape
    if len(shape) != 4:
        raise UserError(f"ONNX model {file} takes inputs of shape {shape}; a teacher takes (B, C, H, W)")
    found = {}
    if isinstance(shape[1], int):
        found["channels"] = shape[1]
    if isinstance(shape[2], int) and shape[2] == shape[3]:
        found["size"] = shape[2]
    if len(out) == 2 and isinstance(out[1], int):
        found["num_classes"] = out[1]
    return found


def _replace_checkpoint(out: Path) -> None:
    """Remove a checkpoint being overwritten: its sidecar first, so it never looks complete half-removed."""
    (out / SIDECAR_NAME).unlink(missing_ok=True)
    for name in (MODEL_FILE, *BLACK_BOX_FILES.values()):
        (out / name).unlink(missing_ok=True)


def import_teacher(out: str | Path, weights: str | Path | None = None, arch: str | None = None,
                   torchscript: str | Path | None = None, onnx: str | Path | None = None, classes=None,
                   num_classes: int | None = None, size: int | None = None, channels: int | None = None,
                   mean=None, std=None, preset: str | None = None, overwrite: bool = False) -> dict:
    """Write a checkpoint directory at `out` from a state dict (`weights` + `arch`), a TorchScript file or an ONNX model.

    Everything is checked first (keys, shapes, the head against the classes, a forward pass at the
    input size); nothing is written unless all of it holds. Returns a summary.
    """
    given = {k: v for k, v in (("--weights", weights), ("--torchscript", torchscript), ("--onnx", onnx)) if v}
    if len(given) != 1:
        raise UserError("give one teacher file: --weights FILE (a state dict, with --arch), --torchscript FILE "
                        f"or --onnx FILE{'; got ' + ' and '.join(given) if given else ''}")
    (flag, source), = given.items()
    out, source = Path(out), Path(source)
    if not source.is_file():
        raise UserError(f"{flag} {source}: file not found")
    claim_directory(out, SIDECAR_NAME, "checkpoint", overwrite,
                    inputs=[source] + ([Path(classes)] if isinstance(classes, (str, Path)) else []))
    options = dict(classes=classes, num_classes=num_classes, size=size, channels=channels, mean=mean, std=std,
                   preset=preset)
    imported = {"path": str(source.resolve()), "sha256": file_digest(source)}
    if weights:
        if arch is None:
            raise UserError("a state dict needs its architecture: --arch torchvision:NAME, timm:NAME or a "
                            "registered name (surrogate_kd.models.model_names())")
        spec = resolve_spec(**options)
        state = _read_state_dict(source)
        model = build_model(arch, spec)
        state, renamed = _fit_keys(state, model.net.state_dict())
        _check_state(source, state, model, arch)
        model.net.load_state_dict(state)
        _probe(model, spec, f"{arch} from {source}")
        if renamed:
            imported["keys"] = renamed
        meta = {"format": "safetensors", "arch": arch, "file": MODEL_FILE}
    else:
        format = "torchscript" if torchscript else "onnx"
        if arch is not None:
            raise UserError(f"--arch names the architecture of a state dict; a {format} file carries its own")
        inferred = _onnx_inferred(source) if onnx else {}
        spec = resolve_spec(**options, inferred=inferred)
        if inferred.get("size", spec.size) != spec.size:
            raise UserError(f"ONNX model {source} takes {inferred['size']}x{inferred['size']} images (its input "
                            f"shape), but --size is {spec.size}")
        if inferred.get("channels", spec.channels) != spec.channels:
            raise UserError(f"ONNX model {source} takes {inferred['channels']} channels (its input shape), but "
                            f"--channels is {spec.channels}")
        model = load_black_box(format, source, spec)
        differentiable = _probe(model, spec, f"{format} model {source}", need_gradient=format == "torchscript")
        meta = {"format": format, "arch": format, "file": BLACK_BOX_FILES[format], "sha256": imported["sha256"],
                "differentiable": differentiable}

    out.mkdir(parents=True, exist_ok=True)
    _replace_checkpoint(out)
    if weights:
        save_model(model, out / MODEL_FILE, extra={**meta, "imported_from": imported})  # the sidecar goes last
    else:
        atomic_write(out / meta["file"], lambda tmp: shutil.copyfile(source, tmp))
        atomic_write_text(out / SIDECAR_NAME, json.dumps({**meta, "input_spec": spec_dict(spec),
                                                          "imported_from": imported, **provenance()}, indent=2))
    return {"out": str(out), "format": meta["format"], "arch": meta["arch"], "file": str(out / meta["file"]),
            "classes": len(spec.classes), "size": spec.size, "channels": spec.channels, "mean": list(spec.mean),
            "std": list(spec.std), **{k: meta[k] for k in ("differentiable",) if k in meta},
            **({"keys": imported["keys"]} if "keys" in imported else {}),
            "checked": f"a forward pass at {spec.size}x{spec.size} gives {len(spec.classes)} logits"}
