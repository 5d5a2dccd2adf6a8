"""The distillability score (score.py) on conftest's planted teacher, whose answers are known: a test
chooses every prediction by drawing images, and the teacher's penultimate features are the four
quadrant means."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from surrogate_kd.checkpoint import save_model
from surrogate_kd.cli import main
from surrogate_kd.models import build_model
from surrogate_kd.score import dispersion, score
from surrogate_kd.select import select
from surrogate_kd.teacher import relative_entropy


def test_score_ranks_balanced_above_collapsed_and_reports_replication(planted, tmp_path):
    teacher = planted.teacher()
    balanced = planted.npz(tmp_path / "balanced.npz", [0, 1, 2, 3] * 50)
    collapsed = planted.npz(tmp_path / "collapsed.npz", [2] * 200)
    # Every class equally often (relative entropy 1, like `balanced`) but 2 distinct images per class.
    np.savez(tmp_path / "replicated.npz", images=np.repeat(planted.images([0, 1, 2, 3] * 2), 25, axis=0))
    replicated = str(tmp_path / "replicated.npz")
    rows = score(teacher, [collapsed, replicated, balanced], tmp_path / "report", device="cpu")
    assert [r["data"] for r in rows][2] == collapsed
    by_name = {r["data"]: r for r in rows}
    # The score cannot tell 8 images replicated from 200 distinct ones (docs/selection.md); the
    # row says so: 192 of the 200 repeat another, and each class's region is covered less.
    assert by_name[replicated]["duplicates"] == pytest.approx(192 / 200)
    assert by_name[balanced]["duplicates"] == 0.0
    assert by_name[collapsed]["relative_entropy"] == pytest.approx(0.0) and by_name[collapsed]["classes_missing"] == 3
    assert by_name[replicated]["relative_entropy"] == pytest.approx(1.0) == by_name[balanced]["relative_entropy"]
    assert by_name[replicated]["class_coverage"] < by_name[balanced]["class_coverage"]
    assert by_name[balanced]["class_histogram"] == [50, 50, 50, 50]
    assert by_name[replicated]["relative_entropy_distinct"] == pytest.approx(1.0), "2 distinct images per class"
    assert json.loads((tmp_path / "report" / "score.json").read_text())[2]["data"] == collapsed
    assert (tmp_path / "report" / "class_histograms.png").stat().st_size > 0


def test_score_sees_balance_made_by_copies(planted, tmp_path):
    # 60 distinct images of class 0; classes 1-3 one image each, copied 60 times: a flat histogram
    # that only replication made flat, ranked below 240 distinct images of the same classes.
    images = np.concatenate([planted.images([0] * 60), np.repeat(planted.images([1, 2, 3], seed=1), 60, axis=0)])
    np.savez(tmp_path / "copies.npz", images=images)
    distinct = planted.npz(tmp_path / "distinct.npz", [0, 1, 2, 3] * 60, seed=2)
    copies = str(tmp_path / "copies.npz")
    rows = score(planted.teacher(), [copies, distinct], device="cpu")
    assert [r["data"] for r in rows] == [distinct, copies]
    row = rows[1]
    assert row["relative_entropy"] == pytest.approx(1.0)
    assert row["relative_entropy_distinct"] == pytest.approx(relative_entropy(torch.tensor([60, 1, 1, 1])))
    assert row["duplicates"] == pytest.approx(177 / 240)


def test_dispersion_is_mean_pairwise_cosine_distance():
    f = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    unit = F.normalize(f, dim=1)
    pairs = [(i, j) for i in range(3) for j in range(3) if i != j]
    expected = sum(1 - float(unit[i] @ unit[j]) for i, j in pairs) / len(pairs)
    assert dispersion(f) == pytest.approx(expected)
    assert dispersion(torch.ones(5, 3)) == pytest.approx(0.0, abs=1e-9)
    assert dispersion(f[:1]) == 0.0


def test_score_command_scores_sets_pools_and_sources(planted, tmp_path, capsys):
    teacher = save_model(build_model("convnet_tiny", planted.spec), tmp_path / "teacher.safetensors")
    data = planted.npz(tmp_path / "planted.npz", [0, 1, 2, 3] * 16)
    select(str(teacher), data, tmp_path / "sel", per_class=8, candidates=0, device="cpu")  # a pool to score
    capsys.readouterr()
    assert main(["score", "--teacher", str(teacher), "--data", data, "--data", str(tmp_path / "sel"), "--data", "noise",
                 "--candidates", "64", "--out", str(tmp_path / "score"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "| image set |" in out and "noise" in out
    assert len(json.loads((tmp_path / "score" / "score.json").read_text())) == 3
