"""benchmarks/refine_grain.py: the script measures a checkpoint's gradient raw and blurred, with the
figure `distill` decides by (refine.teacher_grain)."""

import json
import subprocess
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "refine_grain.py"


def test_the_script_reports_each_term_raw_and_blurred(tmp_path):
    from surrogate_kd.checkpoint import save_model
    from surrogate_kd.config import InputSpec
    from surrogate_kd.models import build_model

    from surrogate_kd.refine import teacher_grain

    torch.manual_seed(0)
    teacher = build_model("convnet_tiny", InputSpec(16, 1, (0.5,), (0.25,), ("a", "b", "c"))).eval()
    path = save_model(teacher, tmp_path / "teacher")
    done = subprocess.run([sys.executable, str(BENCH), "--teacher", str(path), "--images", "16", "--blur", "1,2"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    for key in ("gradient_grain", "gradient_grain_blur_1", "gradient_grain_blur_2"):
        assert set(out[key]) == {"class_term", "statistics_term"}
    raw, blurred = out["gradient_grain"]["statistics_term"], out["gradient_grain_blur_2"]["statistics_term"]
    assert blurred < raw
    assert raw == round(teacher_grain(teacher, torch.device("cpu"), images=16), 3), "the figure distill decides by"


def test_a_wrong_path_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, str(BENCH), "--teacher", str(tmp_path / "missing.safetensors")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "not found" in done.stderr
