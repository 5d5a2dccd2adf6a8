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

    blackbox.py     the runtime: TorchScriptNet, OnnxNet, BlackBoxClassifier, load_black_box
                    (checkpoint.load_model calls it for a black-box checkpoint)
    input_spec.py   the input spec from the options: presets, size, channels, mean/std, class names
    importer.py     import_teacher: read, check everything, then write the checkpoint directory
"""

from .blackbox import BlackBoxClassifier, OnnxNet, TorchScriptNet, load_black_box
from .importer import import_teacher
from .input_spec import PRESETS, resolve_spec

__all__ = ["PRESETS", "BlackBoxClassifier", "OnnxNet", "TorchScriptNet", "import_teacher", "load_black_box",
           "resolve_spec"]
