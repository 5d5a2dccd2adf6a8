"""benchmarks/refine_grain.py: the grain figure separates smooth, noisy and alternating signals, and
the script measures a checkpoint's gradient raw and blurred."""

import json
import subprocess
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "refine_grain.py"


def _grain():
    import importlib.util

    spec = importlib.util.spec_from_file_location("refine_grain", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.grain


def test_grain_ranks_a_ramp_below_noise_below_a_checkerboard():
    grain = _grain()
    rows, cols = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    ramp = (rows + cols).float() - 31
    noise = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    checkerboard = ((rows + cols) % 2 * 2 - 1).float()
    assert grain(ramp) < 0.5 and 2.6 < grain(noise) < 3.0 and grain(checkerboard) == 4.0


def test_the_script_reports_each_term_raw_and_blurred(tmp_path):
    from surrogate_kd.checkpoint import save_model
    from surrogate_kd.config import InputSpec
    from surrogate_kd.models import build_model

    torch.manual_seed(0)
    path = save_model(build_model("convnet_tiny", InputSpec(16, 1, (0.5,), (0.25,), ("a", "b", "c"))).eval(),
                      tmp_path / "teacher")
    done = subprocess.run([sys.executable, str(BENCH), "--teacher", str(path), "--images", "16", "--blur", "1,2"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    for key in ("gradient_grain", "gradient_grain_blur_1", "gradient_grain_blur_2"):
        assert set(out[key]) == {"class_term", "statistics_term"}
    raw, blurred = out["gradient_grain"]["statistics_term"], out["gradient_grain_blur_2"]["statistics_term"]
    assert blurred < raw


def test_a_wrong_path_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, str(BENCH), "--teacher", str(tmp_path / "missing.safetensors")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "not found" in done.stderr
