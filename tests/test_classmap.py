"""The in-domain / out-of-domain split of a labelled set by a class map (classmap.py, paper Sect. 3.1)."""

import json

import pytest
import torch
import yaml

from surrogate_kd.classmap import split_by_class_map
from surrogate_kd.data import ImageSet
from surrogate_kd.errors import UserError


def test_class_map_splits_in_and_out_of_domain_and_rejects_a_mismatched_teacher(planted, tmp_path):
    teacher = planted.teacher()
    labels = torch.arange(6).repeat(3)  # dataset classes a..f, 3 images each
    dataset = ImageSet(torch.zeros(18, 1, 16, 16, dtype=torch.uint8), labels, tuple("abcdef"), "real")
    class_map = tmp_path / "map.yaml"
    class_map.write_text(yaml.safe_dump({"c0": ["a"], "c1": ["b", "c"], "c2": [3], "c3": ["e"]}))
    id_set, ood = split_by_class_map(dataset, class_map, teacher)
    assert id_set.labels.tolist() == [0, 1, 1, 2, 3] * 3 and id_set.classes == planted.spec.classes
    assert ood.labels.tolist() == [5, 5, 5]

    incomplete = tmp_path / "incomplete.json"
    incomplete.write_text(json.dumps({"c0": ["a"], "c1": [], "c2": ["d"], "c3": ["e"]}))
    id_set, ood = split_by_class_map(dataset, incomplete, teacher)
    assert id_set is None and sorted(set(ood.labels.tolist())) == [1, 2, 5], "paper: no ID subset when incomplete"

    three = tmp_path / "three.json"
    three.write_text(json.dumps({"c0": ["a"], "c1": ["b"], "c2": ["c"]}))
    with pytest.raises(UserError, match="3 teacher classes but the teacher has 4"):
        split_by_class_map(dataset, three, teacher)
    with pytest.raises(UserError, match="not a class of"):
        split_by_class_map(dataset, {"c0": ["z"], "c1": [], "c2": [], "c3": []}, teacher)


def test_an_incomplete_map_can_still_give_an_id_subset_and_a_bad_file_is_a_one_line_error(planted, tmp_path):
    labels = torch.arange(4).repeat(2)  # dataset classes w..z, 2 images each
    dataset = ImageSet(torch.zeros(8, 1, 16, 16, dtype=torch.uint8), labels, tuple("wxyz"), "real")
    mapping = {"c0": ["w"], "1": ["x"], "c2": [], "c3": []}  # a teacher class by name or by index
    id_set, ood = split_by_class_map(dataset, mapping, list(planted.spec.classes), complete_only=False)
    assert id_set.labels.tolist() == [0, 1, 0, 1] and ood.labels.tolist() == [2, 3, 2, 3]
    with pytest.raises(UserError, match="cannot read class map") as error:
        split_by_class_map(dataset, tmp_path / "missing.yaml", planted.teacher())
    assert "\n" not in str(error.value)


def test_split_command_writes_both_subsets_as_pools(tmp_path, capsys):
    import numpy as np

    from surrogate_kd.checkpoint import save_model
    from surrogate_kd.cli import main
    from surrogate_kd.config import InputSpec
    from surrogate_kd.models import build_model
    from surrogate_kd.pool import Pool

    teacher = save_model(build_model("convnet_tiny", InputSpec(16, 1, (0.5,), (0.25,), ("cat", "dog"))),
                         tmp_path / "teacher" / "model.safetensors")
    np.savez(tmp_path / "real.npz", images=np.zeros((12, 16, 16), np.uint8), labels=np.arange(12) % 4)
    (tmp_path / "map.yaml").write_text("cat: [0]\ndog: [2, 3]\n")
    assert main(["split", "--data", str(tmp_path / "real.npz"), "--class-map", str(tmp_path / "map.yaml"),
                 "--teacher", str(teacher), "--out", str(tmp_path / "pools")]) == 0
    assert json.loads(capsys.readouterr().out) == {"data": str(tmp_path / "real.npz"), "id": 9, "ood": 3}
    in_domain, out_of_domain = Pool(tmp_path / "pools" / "id"), Pool(tmp_path / "pools" / "ood")
    assert sorted(in_domain.labels.tolist()) == [0] * 3 + [1] * 6 and in_domain.manifest["classes"] == ["cat", "dog"]
    assert out_of_domain.labels.tolist() == [1, 1, 1]
