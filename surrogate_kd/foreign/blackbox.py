"""Black boxes: a teacher whose network is its TorchScript or ONNX file, behind ImageClassifier's interface."""

import copy
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoint import BLACK_BOX_FORMATS, _clip
from ..config import InputSpec
from ..errors import UserError, first_line
from ..models import ImageClassifier
from ..rundir import file_digest

ONNX_HINT = "pip install onnxruntime (or 'surrogate-kd[onnx]'; onnxruntime-gpu for CUDA)"


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
        session = onnx_session(file)
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


def onnx_session(file: Path):
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
