"""Teachers from elsewhere: a torchvision net imported as a state dict, TorchScript and ONNX, used by every command.

The issue's bar: a torchvision resnet18 with 1,000 classes (random weights, 32x32 inputs to stay
fast), saved three ways and imported three ways, gives the same logits through each; distill
runs from each; boundary samples run on the ONNX teacher (gradient-free). Plus one-line errors
for the mistakes an import can hold.
"""

import json
import sys
import warnings

import numpy as np
import pytest
import torch
import torchvision

from surrogate_kd import api
from surrogate_kd.boundary import boundary_pairs
from surrogate_kd.checkpoint import load_model
from surrogate_kd.cli import main
from surrogate_kd.config import TrainConfig
from surrogate_kd.distill import make_step
from surrogate_kd.foreign import BlackBoxClassifier
from surrogate_kd.models import build_model
from surrogate_kd.pool import Pool
from surrogate_kd.rundir import file_digest
from surrogate_kd.runtime import inference_copy, predict
from surrogate_kd.teacher import teacher_fingerprint
from conftest import raises_one_line

SIZE = 32
KINDS = ("weights", "torchscript", "onnx")
TINY_DISTILL = dict(student="convnet_tiny", candidates=64, per_class=0, budget_images=64, batch_size=32,
                    device="cpu", precision="fp32", mixup=False, regime="none")


def export_onnx(net: torch.nn.Module, path, size: int = SIZE) -> None:
    """ONNX with a free batch size, fixed height and width (as most exported classifiers are)."""
    pytest.importorskip("onnxruntime")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated; it needs no onnxscript
        torch.onnx.export(net, (torch.rand(2, 3, size, size),), str(path), dynamo=False, input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})


@pytest.fixture(scope="module")
def resnet():
    """torchvision resnet18 with 1,000 classes and random weights (BN statistics randomised too, so
    that its predictions vary with the input as a trained net's do)."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=1000)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.fixture(scope="module")
def files(resnet, tmp_path_factory):
    """The net as a state dict, a TorchScript file (named .pt, as deployments name them) and ONNX, plus 1,000 class names."""
    folder = tmp_path_factory.mktemp("resnet18")
    torch.save(resnet.state_dict(), folder / "resnet18.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates TorchScript; deployed files remain
        torch.jit.trace(resnet, torch.rand(2, 3, SIZE, SIZE)).save(str(folder / "resnet18-scripted.pt"))
    export_onnx(resnet, folder / "resnet18.onnx")
    (folder / "classes.txt").write_text("".join(f"class {i}\n" for i in range(1000)))
    return {"weights": folder / "resnet18.pth", "torchscript": folder / "resnet18-scripted.pt",
            "onnx": folder / "resnet18.onnx", "classes": folder / "classes.txt"}


@pytest.fixture(scope="module")
def imported(files, tmp_path_factory) -> dict:
    """Checkpoint directories from the three files, by kind."""
    out = tmp_path_factory.mktemp("imported")
    api.import_teacher(out / "weights", weights=files["weights"], arch="torchvision:resnet18",
                       classes=files["classes"], preset="imagenet", size=SIZE)
    api.import_teacher(out / "torchscript", torchscript=files["torchscript"], num_classes=1000, preset="imagenet",
                       size=SIZE)
    api.import_teacher(out / "onnx", onnx=files["onnx"], preset="imagenet")  # size and classes from its shapes
    return {kind: out / kind for kind in KINDS}


def uint8_images(count: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (count, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- the same teacher three ways

def test_three_imports_give_the_same_logits(resnet, imported):
    images = uint8_images(8)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        reference = resnet((images.float() / 255 - mean) / std)
    for kind in KINDS:
        teacher = load_model(imported[kind])
        assert teacher.num_classes == 1000 and teacher.spec.size == SIZE and teacher.spec.mean == (0.485, 0.456, 0.406)
        logits = predict(teacher, images, device=torch.device("cpu"), precision="fp32")
        assert (logits - reference).abs().max() < 1e-4, kind
    assert load_model(imported["weights"]).spec.classes[7] == "class 7"
    assert load_model(imported["onnx"]).spec.classes[7] == "7", "an ONNX model's output shape gives the count"


def test_sidecars_record_the_format_and_the_copied_file(files, imported):
    for kind, format in (("weights", "safetensors"), ("torchscript", "torchscript"), ("onnx", "onnx")):
        meta = json.loads((imported[kind] / "model.json").read_text())
        assert meta["format"] == format and (imported[kind] / meta["file"]).is_file()
        assert meta["imported_from"]["sha256"] == file_digest(files[kind])
        assert meta["input_spec"]["size"] == SIZE and len(meta["input_spec"]["classes"]) == 1000
    for kind in ("torchscript", "onnx"):
        meta = json.loads((imported[kind] / "model.json").read_text())
        assert meta["sha256"] == file_digest(imported[kind] / meta["file"]) == file_digest(files[kind])
        teacher = load_model(imported[kind])
        assert isinstance(teacher, BlackBoxClassifier) and teacher.arch == kind
        assert teacher.differentiable is (kind == "torchscript")
    assert load_model(imported["weights"]).arch == "torchvision:resnet18"
    # Every way of naming a checkpoint: its directory, its sidecar, its file.
    onnx = imported["onnx"]
    fingerprints = {teacher_fingerprint(load_model(path)) for path in (onnx, onnx / "model.json", onnx / "model.onnx")}
    assert len(fingerprints) == 1


def test_a_black_box_changed_after_import_is_refused(files, tmp_path):
    api.import_teacher(tmp_path / "t", onnx=files["onnx"], num_classes=1000, preset="imagenet")
    with open(tmp_path / "t" / "model.onnx", "ab") as f:
        f.write(b"\0")
    raises_one_line(lambda: load_model(tmp_path / "t"), "changed since it was imported", "import it again")


def test_black_boxes_pass_through_inference_copy_and_the_kd_step_unharmed(imported):
    x = torch.rand(4, 3, SIZE, SIZE)
    for kind in ("torchscript", "onnx"):
        teacher = load_model(imported[kind])
        frozen = inference_copy(teacher)
        with torch.no_grad():
            assert torch.equal(frozen(x), teacher(x)), kind
        student = build_model("convnet_tiny", teacher.spec)
        optimizer = torch.optim.SGD(student.parameters(), lr=0.01)
        loss = make_step(student, optimizer, TrainConfig(tau=4.0, precision="fp32"), frozen)(x)
        assert torch.isfinite(loss) and student.net.fc.weight.grad is not None
        assert all(p.grad is None for p in teacher.parameters()), "the teacher is never asked for gradients"


def test_an_onnx_model_exported_for_a_fixed_batch_is_fed_in_chunks_of_it(tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 5)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(2, 3, 16, 16),), str(tmp_path / "fixed.onnx"), dynamo=False)  # batch 2 only
    api.import_teacher(tmp_path / "t", onnx=tmp_path / "fixed.onnx", mean=[0.0], std=[1.0])
    teacher = load_model(tmp_path / "t")
    assert teacher.spec.size == 16 and teacher.num_classes == 5, "size and classes from the model's shapes"
    x = torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        assert (teacher(x) - net(x)).abs().max() < 1e-5


# --------------------------------------------------------------------------- every command through logits

@pytest.mark.parametrize("kind", KINDS)
def test_distill_runs_from_each_import(imported, tmp_path, kind):
    result = api.distill(imported[kind], "noise", tmp_path / "student", **TINY_DISTILL)
    assert result["steps"] == 2 and np.isfinite(result["final_loss"])
    run = json.loads((tmp_path / "student" / "run.json").read_text())
    assert run["identity"]["teacher_fingerprint"] == teacher_fingerprint(load_model(imported[kind]))
    student = load_model(tmp_path / "student" / "model.safetensors")
    assert student.spec == load_model(imported[kind]).spec


def test_select_score_and_evaluate_use_an_onnx_teacher(imported, tmp_path):
    onnx, torchscript = imported["onnx"], imported["torchscript"]
    selected = api.select(onnx, "noise", tmp_path / "pool", per_class=1, candidates=64, device="cpu")
    pool = Pool(tmp_path / "pool")
    assert len(pool) == selected["selected"] > 0
    assert pool.manifest["teacher_fingerprint"] == teacher_fingerprint(load_model(onnx))
    [row] = api.score(onnx, ["noise"], out=None, candidates=64, device="cpu")
    assert row["feature_space"] == "logits", "a black box exposes no penultimate features"
    labelled = tmp_path / "labelled.npz"
    np.savez(labelled, images=uint8_images(16).permute(0, 2, 3, 1).numpy(), labels=np.arange(16) % 1000)
    report = api.evaluate(onnx, str(labelled), teacher=torchscript, device="cpu")
    assert report["images"] == 16 and report["teacher_agreement"] == 1.0, "the same net, two black boxes"


def test_boundary_samples_on_the_onnx_teacher_need_no_gradients(imported, tmp_path):
    teacher = load_model(imported["onnx"])
    images = uint8_images(64, seed=1)
    result = boundary_pairs(teacher, images, targets="nearest", precision="fp32")
    s = result.summary
    assert s["method"] == "bisection" and s["gradients_per_image"] == 0 and s["pairs"] > 0
    pre, pre_labels = result.part("pre")
    post, post_labels = result.part("post")
    assert (pre_labels != result.targets).all() and (post_labels == result.targets).all()
    assert torch.equal(predict(teacher, result.images, precision="fp32").argmax(1), result.labels)
    assert (pre.int() - post.int()).abs().amax() <= 2, "the pair straddles the boundary, a grey level or two apart"
    raises_one_line(lambda: boundary_pairs(teacher, images[:4], method="gradient"), "gradient with respect to its input",
                   "bisection")
    # The command and distill choose the gradient-free attack by themselves.
    np.savez(tmp_path / "images.npz", images=images.permute(0, 2, 3, 1).numpy())
    summary = api.boundary(imported["onnx"], str(tmp_path / "images.npz"), tmp_path / "bd", fraction=0.5,
                           targets="nearest", device="cpu")
    assert summary["method"] == "bisection" and summary["images_after"] == 64 + summary["samples"]
    result = api.distill(imported["onnx"], "noise", tmp_path / "student", boundary_fraction=0.5,
                         boundary_targets="nearest", **TINY_DISTILL)
    assert result["boundary"]["method"] == "bisection" and result["boundary"]["pairs"] > 0


# --------------------------------------------------------------------------- import mistakes, one line each

@pytest.fixture(scope="module")
def state_dict(resnet):
    return resnet.state_dict()


def saved(tmp_path, state: dict, name: str = "w.pt"):
    torch.save(state, tmp_path / name)
    return tmp_path / name


def test_wrapper_prefixes_are_removed(resnet, state_dict, tmp_path):
    path = saved(tmp_path, {f"module.{k}": v for k, v in state_dict.items()})
    summary = api.import_teacher(tmp_path / "t", weights=path, arch="torchvision:resnet18", num_classes=1000,
                                 preset="imagenet", size=SIZE)
    assert summary["keys"] == "removed the prefix 'module.'"
    teacher = load_model(tmp_path / "t")
    assert torch.equal(teacher.net.fc.weight, resnet.fc.weight)


STATE_MISTAKES = [
    # (id, state dict edit, import options, fragments of the one-line error)
    ("missing-keys", lambda s: {k: v for k, v in s.items() if not k.startswith("fc.")}, {},
     ["2 keys missing (fc.bias, fc.weight)"]),
    ("extra-keys", lambda s: {**s, "head.weight": torch.zeros(3)}, {}, ["1 unexpected (head.weight)"]),
    ("head-size", lambda s: s, {"num_classes": 10}, ["the head fc.weight has 1000 outputs but 10 classes",
                                                     "--num-classes 1000"]),
    ("other-shape", lambda s: {**s, "conv1.weight": torch.zeros(64, 3, 3, 3)}, {},
     ["conv1.weight has shape [64, 3, 3, 3] in the file, [64, 3, 7, 7] in the model"]),
    ("our-resnet18", lambda s: s, {"arch": "resnet18"}, ["does not fit resnet18", "torchvision:resnet18"]),
    ("no-classes", lambda s: s, {"num_classes": None}, ["--classes FILE", "--num-classes N"]),
    ("no-arch", lambda s: s, {"arch": None}, ["needs its architecture", "--arch"]),
    ("no-normalisation", lambda s: s, {"preset": None, "mean": None}, ["--mean", "--preset imagenet"]),
    ("bad-std", lambda s: s, {"preset": None, "mean": [0.5], "std": [0.2, 0.0, 0.2]}, ["--std must be > 0"]),
]


@pytest.mark.parametrize("edit, options, fragments", [c[1:] for c in STATE_MISTAKES], ids=[c[0] for c in STATE_MISTAKES])
def test_state_dict_mistakes_are_one_line_errors(state_dict, tmp_path, edit, options, fragments):
    path = saved(tmp_path, edit(dict(state_dict)))
    kwargs = {"arch": "torchvision:resnet18", "num_classes": 1000, "preset": "imagenet", "size": SIZE, **options}
    raises_one_line(lambda: api.import_teacher(tmp_path / "t", weights=path, **kwargs), *fragments)
    assert not (tmp_path / "t").exists(), "nothing is written"


def test_a_forward_pass_at_the_given_size_must_work(tmp_path):
    net = torchvision.models.squeezenet1_1(num_classes=10)  # its first conv and pool need more than 8 pixels
    path = saved(tmp_path, net.state_dict())
    raises_one_line(lambda: api.import_teacher(tmp_path / "t", weights=path, arch="torchvision:squeezenet1_1",
                                              num_classes=10, preset="imagenet", size=8),
                   "a forward pass at 8x8 with 3 channels fails", "--size")
    api.import_teacher(tmp_path / "t", weights=path, arch="torchvision:squeezenet1_1", num_classes=10,
                       preset="imagenet", size=64)


def test_black_box_mistakes_are_one_line_errors(files, tmp_path):
    out = tmp_path / "t"
    imagenet = {"preset": "imagenet", "num_classes": 1000}
    raises_one_line(lambda: api.import_teacher(out, onnx=files["onnx"], **{**imagenet, "size": 64}),
                   "takes 32x32 images", "--size is 64")
    raises_one_line(lambda: api.import_teacher(out, onnx=files["onnx"], preset="imagenet", num_classes=10, size=SIZE),
                   "has 1000 outputs but 10 classes")
    raises_one_line(lambda: api.import_teacher(out, torchscript=files["torchscript"], **{**imagenet, "size": SIZE},
                                              arch="torchvision:resnet18"), "--arch names the architecture")
    raises_one_line(lambda: api.import_teacher(out, torchscript=files["weights"], **{**imagenet, "size": SIZE}),
                   "cannot read TorchScript file", "--weights and --arch")
    raises_one_line(lambda: api.import_teacher(out, weights=files["weights"], onnx=files["onnx"], **imagenet),
                   "give one teacher file", "--weights and --onnx")
    raises_one_line(lambda: api.import_teacher(out, **imagenet), "give one teacher file")
    raises_one_line(lambda: api.import_teacher(out, onnx=tmp_path / "nope.onnx", **imagenet), "file not found")
    assert not out.exists()


def test_missing_onnxruntime_says_how_to_install_it(files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if it were not installed
    raises_one_line(lambda: api.import_teacher(tmp_path / "t", onnx=files["onnx"], preset="imagenet"),
                   "pip install onnxruntime")


def test_class_files_and_outputs_are_checked(files, tmp_path):
    twice = tmp_path / "twice.txt"
    twice.write_text("cat\ndog\ncat\n")
    raises_one_line(lambda: api.import_teacher(tmp_path / "t", onnx=files["onnx"], classes=twice, preset="imagenet"),
                   "names a class twice: cat")
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.txt").write_text("mine")
    raises_one_line(lambda: api.import_teacher(tmp_path / "occupied", onnx=files["onnx"], preset="imagenet"),
                   "not empty and holds no checkpoint", "notes.txt")
    api.import_teacher(tmp_path / "t", onnx=files["onnx"], preset="imagenet")
    raises_one_line(lambda: api.import_teacher(tmp_path / "t", onnx=files["onnx"], preset="imagenet"),
                   "already holds a checkpoint", "--overwrite")
    api.import_teacher(tmp_path / "t", torchscript=files["torchscript"], num_classes=1000, preset="imagenet",
                       size=SIZE, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["model.json", "model.torchscript"]


def test_cli_imports_and_reports_in_json(files, tmp_path, capsys):
    common = ["import-teacher", "--arch", "torchvision:resnet18", "--num-classes", "1000", "--size", str(SIZE),
              "--mean", "0.485", "0.456", "0.406", "--std", "0.229", "0.224", "0.225"]
    assert main([*common, "--weights", str(files["weights"]), "--out", str(tmp_path / "t")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "safetensors" and summary["classes"] == 1000 and summary["std"] == [0.229, 0.224, 0.225]
    assert main([*common, "--weights", str(files["weights"]), "--out", str(tmp_path / "t")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
