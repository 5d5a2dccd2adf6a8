"""benchmarks/teacher_scale.py: a teacher's logit spread and peakedness on a source, one table row each."""

import subprocess
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "teacher_scale.py"


def test_a_sharper_teacher_has_a_larger_spread_and_a_higher_top_softmax(tmp_path):
    from surrogate_kd.checkpoint import save_model
    from surrogate_kd.config import InputSpec
    from surrogate_kd.models import build_model

    torch.manual_seed(0)
    teacher = build_model("convnet_tiny", InputSpec(16, 1, (0.5,), (0.25,), ("a", "b", "c"))).eval()
    soft = save_model(teacher, tmp_path / "soft")
    with torch.no_grad():  # the classifier's weights and bias: the same ranking, 30 times the logits
        teacher.net.fc.weight.mul_(30.0)
        teacher.net.fc.bias.mul_(30.0)
    sharp = save_model(teacher, tmp_path / "sharp")
    done = subprocess.run([sys.executable, str(BENCH), str(soft), str(sharp), "--images", "64"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split("|")[2:6] for line in done.stdout.splitlines()[2:]]
    (soft_median, _, soft_top, _), (sharp_median, _, sharp_top, _) = [[float(v) for v in row] for row in rows]
    assert abs(sharp_median / soft_median - 30) < 3 and sharp_top > soft_top


def test_a_wrong_path_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, str(BENCH), str(tmp_path / "missing.safetensors")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "not found" in done.stderr


def test_no_images_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, str(BENCH), str(tmp_path / "any.safetensors"), "--images", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == "teacher_scale: error: --images must be >= 1, got 0"
