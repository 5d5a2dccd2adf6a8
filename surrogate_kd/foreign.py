"""Teachers from elsewhere: a state dict, a TorchScript file or an ONNX model -> our checkpoint directory.

`import_teacher` reads what a user actually holds and writes a checkpoint directory that every
command takes (`--teacher DIR`):

  state dict   (.safetensors, or .pt/.pth read with weights_only=True) + an architecture name
               -> model.safetensors + model.json, the same files train-teacher writes
  TorchScript  -> model.torchscript (a copy) + model.json with format "torchscript" and its SHA-256
  ONNX         -> model.onnx (a copy) + model.json with format "onnx" and its SHA-256

Every import is checked before anything is written: the keys and shapes of a state dict against
the architecture, the number of outputs against the class list, and one forward pass at the
given input size. A black box (TorchScript, ONNX) loads as a `BlackBoxClassifier`: an
ImageClassifier whose network is the file, taking [0, 1] images (B, C, H, W) and normalising
inside, so selection, scoring, evaluation and the training loop use it through its logits.
ONNX models run in onnxruntime (an optional extra) and give no gradients; boundary samples for
them are found without gradients (boundary.py, method "bisection").
"""

import copy
import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import BLACK_BOX_FORMATS, _clip, provenance, read_weights, save_model, spec_dict
from .config import InputSpec
from .data import DATASET_STATS
from .errors import UserError, first_line
from .files import atomic_write, atomic_write_text
from .models import ImageClassifier, build_model
from .rundir import file_digest

BLACK_BOX_FILES = {"torchscript": "model.torchscript", "onnx": "model.onnx"}
SIDECAR_NAME = "model.json"
WEIGHTS_NAME = "model.safetensors"
ONNX_HINT = "pip install onnxruntime (or 'surrogate-kd[onnx]'; onnxruntime-gpu for CUDA)"
# Input specs by name: (size, channels, mean, std). --size, --channels, --mean and --std override them.
PRESETS = {
    "imagenet": (224, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": (32, 3, *DATASET_STATS["cifar10"]),
    "cifar100": (32, 3, *DATASET_STATS["cifar100"]),
    "mnist": (28, 1, *DATASET_STATS["mnist"]),
    "fashion-mnist": (28, 1, *DATASET_STATS["fashion-mnist"]),
}
# Wrappers whose attribute name prefixes every key of a saved state dict: DataParallel/DDP and
# EMA copies ("module."), Lightning-style modules ("model."), our own ImageClassifier ("net.").
KEY_PREFIXES = ("module.", "model.", "net.")


# ----------------------------------------------------------------------------------------------
# Black boxes: the file is the network.


def _refuse_tracing(x, what: str) -> None:
    # runtime.inference_copy folds BatchNorm with torch.fx; a black box has nothing to fold and
    # must not be traced into a graph that skips its file: failing here takes the copy's fallback.
    if isinstance(x, torch.fx.Proxy):
        raise TypeError(f"a {what} network cannot be traced")


class TorchScriptNet(nn.Module):
    """A TorchScript module as a bare network: (B, C, H, W) normalised floats -> (B, K) logits."""

    def __init__(self, module: torch.jit.ScriptModule):
        super().__init__()
        self.module = module

    def forward(self, x):
        _refuse_tracing(x, "TorchScript")
        return self.module(x)

    def __deepcopy__(self, memo):
        # A ScriptModule's deepcopy clones its parameters under autograd: non-leaf tensors, which
        # requires_grad_ (runtime.inference_copy freezes its copy so) refuses. Copy without recording.
        with torch.no_grad():
            module = copy.deepcopy(self.module, memo)
        for copied, original in zip(module.parameters(), self.module.parameters()):
            copied.requires_grad_(original.requires_grad)
        return TorchScriptNet(module).train(self.training)


class OnnxNet(nn.Module):
    """An onnxruntime InferenceSession as a bare network: (B, C, H, W) normalised floats -> (B, K) logits.

    Outside autograd: it takes tensors on any device, runs the session on the host's copy of them
    (CPU provider, or CUDA's when onnxruntime-gpu and a GPU are present) and returns float32
    logits on the input's device.
    """

    def __init__(self, session, fixed_batch: int | None = None):
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.input_dtype = np.float16 if "float16" in session.get_inputs()[0].type else np.float32
        self.fixed_batch = fixed_batch  # a model exported for batches of exactly N gets chunks of N
        # No weights of its own, but callers ask a model where it lives (next(model.parameters()).device);
        # this empty parameter moves with .to(device) and answers them.
        self.device_anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    def forward(self, x):
        _refuse_tracing(x, "ONNX")
        array = x.detach().float().cpu().contiguous().numpy().astype(self.input_dtype, copy=False)
        count = array.shape[0]
        if self.fixed_batch is None:
            out = self.session.run(None, {self.input_name: array})[0]
        else:  # pad the last chunk to the exported batch size, keep only the real rows
            n = self.fixed_batch
            chunks = []
            for start in range(0, count, n):
                chunk = array[start:start + n]
                padded = np.concatenate([chunk, np.zeros((n - len(chunk), *chunk.shape[1:]), chunk.dtype)])
                chunks.append(self.session.run(None, {self.input_name: padded})[0][:len(chunk)])
            out = np.concatenate(chunks)
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)

    def __deepcopy__(self, memo):
        # An InferenceSession cannot be copied, and need not be: it keeps no state between runs.
        clone = OnnxNet(self.session, self.fixed_batch)
        clone.device_anchor = copy.deepcopy(self.device_anchor, memo)
        return clone.train(self.training)


class BlackBoxClassifier(ImageClassifier):
    """A teacher known only by its file: ImageClassifier's interface (`.spec`, `.arch`, `.num_classes`,
    [0, 1] images in, logits out), plus what identifies the file.

    `differentiable`: whether the logits carry gradients with respect to the input (TorchScript
    usually; ONNX never). Boundary samples use the gradient attack only when they do.
    """

    def __init__(self, net: nn.Module, format: str, spec: InputSpec, file: Path, sha256: str, differentiable: bool):
        super().__init__(net, format, spec)
        self.format, self.file, self.file_sha256, self.differentiable = format, Path(file), sha256, differentiable


def load_black_box(format: str, file: Path, spec: InputSpec, sha256: str | None = None,
                   differentiable: bool | None = None) -> BlackBoxClassifier:
    """The TorchScript or ONNX model in `file` as a classifier for `spec`; `sha256`, when given, must match."""
    file = Path(file)
    if not file.is_file():
        raise UserError(f"{format} model file not found: {file}")
    actual = file_digest(file)
    if sha256 is not None and actual != sha256:
        raise UserError(f"{file} changed since it was imported (SHA-256 {actual[:12]}..., the sidecar says "
                        f"{sha256[:12]}...); import it again")
    if format == "torchscript":
        net = TorchScriptNet(_read_torchscript(file))
        differentiable = True if differentiable is None else differentiable
    elif format == "onnx":
        session = _onnx_session(file)
        batch = session.get_inputs()[0].shape[0]
        net, differentiable = OnnxNet(session, batch if isinstance(batch, int) and batch > 0 else None), False
    else:
        raise UserError(f"unknown model format '{format}'; valid: safetensors, {', '.join(BLACK_BOX_FORMATS)}")
    return BlackBoxClassifier(net, format, spec, file, actual, differentiable).eval()


def _read_torchscript(file: Path) -> torch.jit.ScriptModule:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates TorchScript; files remain
            return torch.jit.load(str(file), map_location="cpu").eval()
    except Exception as e:
        raise UserError(f"cannot read TorchScript file {file}: {_clip(first_line(e))} (a state dict? import it "
                        "with --weights and --arch)") from None


def _onnx_session(file: Path):
    try:
        import onnxruntime
    except ImportError:
        raise UserError(f"ONNX teachers need onnxruntime: {ONNX_HINT}") from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings are about graph optimisations
    options.intra_op_num_threads = torch.get_num_threads()  # respect the process's thread budget
    providers = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers() and torch.cuda.is_available():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        session = onnxruntime.InferenceSession(str(file), sess_options=options, providers=providers)
    except Exception as e:
        raise UserError(f"cannot read ONNX model {file}: {_clip(first_line(e))}") from None
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise UserError(f"ONNX model {file} takes {len(inputs)} inputs ({names}); a teacher takes one image batch")
    if inputs[0].type not in ("tensor(float)", "tensor(float16)"):
        raise UserError(f"ONNX model {file} takes {inputs[0].type}; a teacher takes float images (B, C, H, W)")
    return session


# ----------------------------------------------------------------------------------------------
# Importing.


def resolve_spec(classes=None, num_classes: int | None = None, size: int | None = None,
                 channels: int | None = None, mean=None, std=None, preset: str | None = None,
                 inferred: dict | None = None) -> InputSpec:
    """The input spec from the options: explicit values over what an ONNX file's shapes fix, over the preset's.

    `classes`: a text file (one name a line) or a list of names; `num_classes`: names "0".."N-1".
    `inferred`: size, channels or num_classes read from an ONNX model's input and output shapes.
    """
    inferred = inferred or {}
    if preset is not None and preset not in PRESETS:
        raise UserError(f"unknown preset '{preset}'; valid: {', '.join(PRESETS)}")
    p_size, p_channels, p_mean, p_std = PRESETS[preset] if preset else (None, None, None, None)
    size = _first(size, inferred.get("size"), p_size)
    channels = _first(channels, inferred.get("channels"), p_channels, 3)
    if size is None:
        raise UserError("give the input size (--size N, or --preset imagenet for 224)")
    if not (isinstance(size, int) and 1 <= size <= 4096):
        raise UserError(f"--size must be an integer in 1..4096 (pixels per side), got {size}")
    if channels not in (1, 3):
        raise UserError(f"--channels must be 1 (gray) or 3 (RGB), got {channels}")
    mean, std = _first(mean, p_mean), _first(std, p_std)
    if mean is None or std is None:
        raise UserError("give the normalisation the model was trained with (--mean and --std on the [0, 1] scale, "
                        f"or a preset: --preset {' | '.join(PRESETS)})")
    mean, std = _per_channel(mean, channels, "--mean"), _per_channel(std, channels, "--std")
    if not all(s > 0 for s in std):
        raise UserError(f"--std must be > 0 for every channel (inputs are divided by it), got {list(std)}")
    names = _class_names(classes, num_classes, inferred.get("num_classes"))
    return InputSpec(size, channels, mean, std, names)


def _first(*values):
    return next((v for v in values if v is not None), None)


def _per_channel(values, channels: int, flag: str) -> tuple[float, ...]:
    values = (values,) if isinstance(values, (int, float)) else tuple(values)
    if len(values) == 1 and channels > 1:
        values = values * channels  # one number for every channel
    if len(values) != channels or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        raise UserError(f"{flag} needs {channels} number{'s' if channels > 1 else ''} (one per channel), "
                        f"got {list(values)}")
    return tuple(float(v) for v in values)


def _class_names(classes, num_classes: int | None, inferred: int | None) -> tuple[str, ...]:
    if classes is not None and num_classes is not None:
        raise UserError("give the classes once: --classes FILE or --num-classes N, not both")
    if isinstance(classes, (str, Path)):
        path = Path(classes)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read class names from {path}: {first_line(e)}") from None
        names = [line.strip() for line in lines if line.strip()]
        where = str(path)
    elif classes is not None:
        names, where = [str(c) for c in classes], "the class list"
    else:
        count = _first(num_classes, inferred)
        if count is None:
            raise UserError("give the class names (--classes FILE, one name a line, in the order of the "
                            "model's outputs) or their number (--num-classes N)")
        if not (isinstance(count, int) and count >= 2):
            raise UserError(f"--num-classes must be an integer >= 2, got {count}")
        return tuple(str(i) for i in range(count))
    if len(names) < 2:
        raise UserError(f"{where} holds {len(names)} class name{'s' if len(names) != 1 else ''}; a teacher needs "
                        "at least 2")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"{where} names a class twice: {', '.join(repeated[:5])}")
    return tuple(names)


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
    session = _onnx_session(file)
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


def _claim_out(out: Path, overwrite: bool, inputs: list[Path]) -> None:
    """Refuse an --out that would lose something: a file, another checkpoint (unless overwrite),
    foreign files, or the very file being imported."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is a file; give a directory")
    here = out.resolve()
    for path in inputs:
        if path.resolve().parent == here:
            raise UserError(f"--out {out} holds {path}, which is being imported; choose another --out")
    if not out.is_dir():
        return
    if (out / SIDECAR_NAME).exists():
        if not overwrite:
            raise UserError(f"{out} already holds a checkpoint ({SIDECAR_NAME}); choose another --out, or pass "
                            "--overwrite to replace it")
        return
    foreign = sorted(p.name for p in out.iterdir())
    if foreign:
        raise UserError(f"{out} is not empty and holds no checkpoint (found {_listed(foreign, 5)}); "
                        "choose another --out")


def _replace_checkpoint(out: Path) -> None:
    """Remove a checkpoint being overwritten: its sidecar first, so it never looks complete half-removed."""
    (out / SIDECAR_NAME).unlink(missing_ok=True)
    for name in (WEIGHTS_NAME, *BLACK_BOX_FILES.values()):
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
    _claim_out(out, overwrite, [source] + ([Path(classes)] if isinstance(classes, (str, Path)) else []))
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
        meta = {"format": "safetensors", "arch": arch, "file": WEIGHTS_NAME}
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
        save_model(model, out / WEIGHTS_NAME, extra={**meta, "imported_from": imported})  # the sidecar goes last
    else:
        atomic_write(out / meta["file"], lambda tmp: shutil.copyfile(source, tmp))
        atomic_write_text(out / SIDECAR_NAME, json.dumps({**meta, "input_spec": spec_dict(spec),
                                                          "imported_from": imported, **provenance()}, indent=2))
    return {"out": str(out), "format": meta["format"], "arch": meta["arch"], "file": str(out / meta["file"]),
            "classes": len(spec.classes), "size": spec.size, "channels": spec.channels, "mean": list(spec.mean),
            "std": list(spec.std), **{k: meta[k] for k in ("differentiable",) if k in meta},
            **({"keys": imported["keys"]} if "keys" in imported else {}),
            "checked": f"a forward pass at {spec.size}x{spec.size} gives {len(spec.classes)} logits"}
