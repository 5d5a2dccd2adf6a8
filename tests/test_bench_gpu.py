"""`make bench-gpu` runs on a machine without a GPU too: its dry run is the same pipeline, tiny."""

import json
import subprocess
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


def test_dry_run_measures_every_part_of_the_pipeline(tmp_path):
    done = subprocess.run([sys.executable, str(BENCH), "--dry-run", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    text = done.stdout
    result = json.loads(text[:text.index("\n}\n") + 2])
    assert set(result) >= {"kd_step", "augment", "sources", "distill", "boundary", "imported", "ratios"}
    assert all(rate > 0 for section in ("kd_step", "augment", "sources", "distill") for rate in result[section].values())
    assert any(name.startswith("distill / eager step") for name in result["ratios"])
    assert "| kd_step:" in text  # the markdown table follows the JSON


def test_without_cuda_it_says_so_in_one_line():
    if torch.cuda.is_available():
        return
    done = subprocess.run([sys.executable, str(BENCH)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1 and "no CUDA" in done.stderr
