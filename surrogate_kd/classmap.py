"""The in-domain / out-of-domain split of a labelled real set by a class map (paper Sect. 3.1).

A class map names, for every teacher class, the labels of a real dataset that show it; images
with a mapped label are in-domain (ID, relabelled with the teacher's class), all others are
out-of-domain (OOD). `surrogate-kd split` writes both subsets as pools.
"""

import json
from pathlib import Path

import torch

from .data import ImageSet, open_images
from .errors import UserError, first_line


def _read_mapping(class_map) -> dict:
    if isinstance(class_map, dict):
        return class_map
    path = Path(class_map)
    try:
        text = path.read_text()
    except OSError as e:
        raise UserError(f"cannot read class map {path}: {e.strerror}") from None
    import yaml

    try:
        mapping = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise UserError(f"class map {path} is not valid YAML/JSON: {first_line(e)}") from None
    if not isinstance(mapping, dict):
        raise UserError(f"class map {path} must map each teacher class to a list of dataset labels")
    return mapping


def split_by_class_map(dataset, class_map, teacher_classes, complete_only: bool = True):
    """Split a labelled real set into in-domain (ID) and out-of-domain (OOD) subsets (paper Sect. 3.1).

    `class_map` (a YAML/JSON file or a dict) maps every teacher class (name or index) to the list
    of dataset labels (names or ids) that show it, `[]` for none. ID: images whose label is
    mapped, relabelled with the teacher's class; OOD: all the others, with their own labels.
    When some teacher class has no counterpart the overlap is incomplete and, as in the paper,
    no ID subset is made (None) unless `complete_only=False`.
    """
    teacher_classes = list(getattr(getattr(teacher_classes, "spec", None), "classes", teacher_classes))
    mapping = _read_mapping(class_map)
    if len(mapping) != len(teacher_classes):
        raise UserError(f"the class map lists {len(mapping)} teacher classes but the teacher has "
                        f"{len(teacher_classes)}; map every teacher class (use [] for none)")
    images = open_images(dataset) if isinstance(dataset, str) else dataset
    if images.labels is None:
        raise UserError(f"'{images.name}' has no labels to split by")
    dataset_classes = list(images.classes or [])

    def teacher_id(key) -> int:
        if str(key) in teacher_classes:  # a name first: class names may be digits
            return teacher_classes.index(str(key))
        if str(key).isdigit() and int(key) < len(teacher_classes):
            return int(key)
        raise UserError(f"class map: '{key}' is not a teacher class (classes: {', '.join(teacher_classes)})")

    def label_id(value) -> int:
        if isinstance(value, int):
            return value
        if value in dataset_classes:
            return dataset_classes.index(value)
        raise UserError(f"class map: '{value}' is not a class of '{images.name}'")

    to_teacher = torch.full((int(images.labels.max()) + 1,), -1, dtype=torch.int64)  # dataset label -> teacher class
    covered = set()
    for key, values in mapping.items():
        t = teacher_id(key)
        for value in values or []:
            label = label_id(value)
            if label < len(to_teacher):
                to_teacher[label] = t
                covered.add(t)
    teacher_of = to_teacher[images.labels]  # (N,) teacher class or -1
    in_domain = teacher_of >= 0
    ood = ImageSet(images.images[~in_domain], images.labels[~in_domain], images.classes, f"{images.name}:ood")
    if complete_only and len(covered) < len(teacher_classes):
        return None, ood
    id_set = ImageSet(images.images[in_domain], teacher_of[in_domain], tuple(teacher_classes), f"{images.name}:id")
    return id_set, ood

