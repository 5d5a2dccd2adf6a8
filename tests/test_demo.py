"""The demo end to end on a tiny budget: every source runs and the report has what users read."""

import json

import pytest

from surrogate_kd.data import DEBIAN_FASHION_MNIST
from surrogate_kd.demo import DEMO_SOURCES, demo

pytestmark = pytest.mark.skipif(not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists(),
                                reason="Fashion-MNIST not installed (make test installs it as root on Debian)")


def test_quick_demo_writes_complete_report(tmp_path):
    report = demo(tmp_path, quick=True, device="cpu")
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["teacher"]["dataset"] == "fashion-mnist" and 0 < on_disk["teacher"]["test_accuracy"] <= 1
    assert [s["source"] for s in on_disk["students"]] == list(DEMO_SOURCES)
    for s in on_disk["students"]:
        assert 0 <= s["relative_entropy"] <= 1 and 0 <= s["test_accuracy"] <= 1 and s["seconds"] > 0
        assert (tmp_path / s["samples"]).exists()
    # The in-domain original set is balanced by the teacher far better than noise is.
    by_source = {s["source"]: s for s in on_disk["students"]}
    assert by_source["original"]["relative_entropy"] > by_source["noise"]["relative_entropy"]
    for png in ("class_histograms.png", "accuracy.png"):
        assert (tmp_path / png).stat().st_size > 1000
    table = (tmp_path / "report.md").read_text()
    assert all(source in table for source in DEMO_SOURCES) and report["table"] in table
    # Run again: the finished teacher and students are reused, not retrained.
    again = demo(tmp_path, quick=True, device="cpu")
    assert again["teacher"]["reused"] and again["students"] == report["students"]
