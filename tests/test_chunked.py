"""Selection in chunks (teacher.Candidates / scan_candidates, select.build_distillation_set): the
same set as selecting with every candidate in memory, one chunk of candidates held at a time, large
sets on disk and reused, boundary samples still filling rare classes; on conftest's planted teacher."""

import numpy as np
import pytest
import torch
from conftest import TINY_SPEC, raises_one_line

from surrogate_kd import select as select_module
from surrogate_kd import teacher as teacher_module
from surrogate_kd.boundary import add_boundary_samples, boundary, boundary_sample_parts, merge_summaries
from surrogate_kd.batches import ArrayBatches, PoolBatches, make_batches
from surrogate_kd.config import BoundaryConfig, DataConfig
from surrogate_kd.data import ImageSet
from surrogate_kd.pool import Pool, write_pool
from surrogate_kd.select import balanced_indices, build_distillation_set
from surrogate_kd.teacher import Candidates, class_histogram, load_candidates, scan_candidates

CPU = torch.device("cpu")
IMAGE_BYTES = 16 * 16  # the planted teacher's input: 16x16, one channel


def small_chunks(monkeypatch, images: int) -> None:
    """Chunks of `images` candidates, so that a few dozen candidates span several chunks."""
    monkeypatch.setattr(teacher_module, "CHUNK_BYTES", images * IMAGE_BYTES)


def in_memory_selection(teacher, data: str, candidates: int, per_class: int, seed: int):
    """The selection as it was made before chunks: every candidate and its (N, K) logits at once."""
    images, logits = load_candidates(teacher, data, candidates, seed)
    index = balanced_indices(logits.argmax(1), 4, per_class, seed=seed)
    return images.images[index], logits.argmax(1)[index]


@pytest.mark.parametrize("source", ["noise", "set"])
def test_chunked_selection_is_the_in_memory_selection(planted, tmp_path, monkeypatch, source):
    small_chunks(monkeypatch, 7)
    data = "noise" if source == "noise" else planted.npz(tmp_path / "p.npz", [0] * 40 + [1] * 5 + [2] * 15)
    teacher = planted.teacher()
    images, labels = in_memory_selection(teacher, data, 50, per_class=9, seed=3)
    chosen, info = build_distillation_set(teacher, DataConfig(data, candidates=50, per_class=9), 3, CPU)
    assert torch.equal(chosen.images, images) and torch.equal(chosen.labels, labels), "same images, same order"
    assert info["candidates"] == 50 and info["selected"] == 36


def test_the_teacher_sees_one_chunk_at_a_time_and_only_top1_is_kept(planted, monkeypatch):
    small_chunks(monkeypatch, 16)
    teacher = planted.teacher()
    seen = []
    teacher.net.register_forward_hook(lambda module, inputs, output: seen.append(len(inputs[0])))
    candidates = Candidates(teacher.spec, "noise", 100, seed=0)
    assert max(len(images) for _, images in candidates.chunks()) == 16
    scan = scan_candidates(teacher, candidates, CPU, batch_size=1024)
    assert max(seen) == 16 and sum(seen) == 100, "a batch size of 1024 must not lift the chunk"
    assert scan.shape == (100,) and scan.dtype.itemsize == 8, "a few bytes per candidate, not its logits"
    _, logits = load_candidates(teacher, "noise", 100, seed=0)
    assert np.array_equal(scan["predicted"], logits.argmax(1).numpy())
    assert np.allclose(scan["max_softmax"], logits.softmax(1).max(1).values.numpy())


def test_a_pool_is_read_from_disk_and_its_scan_cached_beside_it(planted, tmp_path, monkeypatch):
    small_chunks(monkeypatch, 8)
    pool_dir = tmp_path / "pool"
    classes = [0, 1, 2, 3, 3, 3] * 5
    write_pool(pool_dir, [torch.from_numpy(planted.images(classes)).unsqueeze(1)], {"source": "test"})
    teacher = planted.teacher()
    first = scan_candidates(teacher, Candidates(teacher.spec, str(pool_dir), 0, seed=0), CPU)
    assert teacher.net.calls == 30 and first["predicted"].tolist() == classes
    subset = Candidates(teacher.spec, str(pool_dir), 12, seed=1)
    again = scan_candidates(teacher, subset, CPU)
    assert teacher.net.calls == 30, "the cached scan serves a random subset of the pool too"
    assert again["predicted"].tolist() == [classes[i] for i in subset.subset.tolist()]


def test_a_large_set_lives_on_disk_is_read_per_batch_and_reused(planted, tmp_path, monkeypatch):
    small_chunks(monkeypatch, 10)
    data = planted.npz(tmp_path / "p.npz", [0] * 30 + [1] * 6 + [2] * 12)
    config = DataConfig(data, candidates=0, per_class=8)
    teacher = planted.teacher()
    in_memory, info = make_batches(teacher, config, 16, 0, CPU)
    monkeypatch.setattr(select_module, "MAX_IN_MEMORY_BYTES", 31 * IMAGE_BYTES)  # 32 images: too many
    monkeypatch.setattr(select_module, "CACHE_DIR", tmp_path / "cache")
    calls = teacher.net.calls
    on_disk, stored_info = make_batches(teacher, config, 16, 0, CPU)
    assert isinstance(in_memory, ArrayBatches) and isinstance(on_disk, PoolBatches)
    assert stored_info == info and on_disk.steps_per_epoch == in_memory.steps_per_epoch == 2
    for step in range(4):  # two epochs: the same batches, read from disk
        assert all(torch.equal(a, b) for a, b in zip(on_disk.batch(step), in_memory.batch(step)))
    pool = Pool(next((tmp_path / "cache" / "selections").iterdir()))
    assert pool.logits.shape == (32, 4) and torch.equal(pool.logits.argmax(1), pool.labels)
    used = teacher.net.calls - calls
    again, again_info = make_batches(teacher, config, 16, 0, CPU)
    assert teacher.net.calls - calls == used and again_info == info, "a repeated (resumed) run reuses the set"
    make_batches(teacher, DataConfig(data, candidates=0, per_class=8), 16, 1, CPU)
    assert len(list((tmp_path / "cache" / "selections").iterdir())) == 2, "another seed is another set"
    make_batches(teacher, config, 16, 0, CPU, store=tmp_path / "run" / "selection")
    assert torch.equal(Pool(tmp_path / "run" / "selection").labels, pool.labels), "or where the caller says"
    every_epoch = DataConfig(data, candidates=0, per_class=8, boundary=BoundaryConfig(0.5, every_epoch=True))
    raises_one_line(lambda: make_batches(teacher, every_epoch, 16, 0, CPU),
                    "boundary samples every epoch need the distillation set in memory", "per_class")


def test_boundary_samples_fill_a_rare_class_with_new_images(planted, tmp_path, monkeypatch):
    small_chunks(monkeypatch, 10)
    data = planted.npz(tmp_path / "p.npz", [0] * 30 + [1] * 3 + [2] * 12 + [3] * 20)
    teacher = planted.teacher()
    plain, _ = build_distillation_set(teacher, DataConfig(data, candidates=0, per_class=10), 0, CPU)
    attack = BoundaryConfig(1.0, "least-predicted", max_steps=40, epsilon=0.5)  # planted quadrants are far apart
    config = DataConfig(data, candidates=0, per_class=10, boundary=attack)
    extended, info = build_distillation_set(teacher, config, 0, CPU)
    assert info["boundary"]["samples"] > 0 and len(extended) == len(plain) == 40

    def distinct(image_set, c):
        return image_set.images[image_set.labels == c].unique(dim=0).shape[0]

    assert distinct(plain, 1) == 3, "without boundary samples the rare class is 3 images replicated"
    assert distinct(extended, 1) > 3, "boundary samples give it new images"
    assert class_histogram(extended.labels, 4).tolist() == [10, 10, 10, 10]
    assert torch.equal(teacher.net(extended.images.float() / 255).argmax(1), extended.labels), "labels = argmax"


def test_boundary_samples_join_every_candidate_before_selection_as_in_memory(planted, tmp_path, monkeypatch):
    """The chunked path attacks the same share of the candidates as the in-memory one did (fetched by
    position) and balances over candidates + samples: the same set, image for image."""
    small_chunks(monkeypatch, 10)
    data = planted.npz(tmp_path / "p.npz", [0] * 30 + [1] * 3 + [2] * 12 + [3] * 20)
    teacher = planted.teacher()
    attack = BoundaryConfig(0.5, "least-predicted", max_steps=40, epsilon=0.5)
    chunked, info = build_distillation_set(teacher, DataConfig(data, candidates=0, per_class=10, boundary=attack),
                                           0, CPU)
    images, logits = load_candidates(teacher, data, 0, 0)
    pool = type(images)(images.images, logits.argmax(1), images.classes, images.name)
    extended, _ = add_boundary_samples(teacher, pool, 0.5, seed=0, labels=pool.labels, **attack.attack())
    index = balanced_indices(extended.labels, 4, 10, seed=0)
    assert info["boundary"]["images_before"] == 65 and info["boundary"]["samples"] > 0
    assert torch.equal(chunked.images, extended.images[index]) and torch.equal(chunked.labels, extended.labels[index])


def test_a_set_on_disk_gets_boundary_samples_attacked_in_parts(planted, tmp_path, monkeypatch):
    """A set too large for memory (the 224 px case) still gets boundary samples: attacked a part at a
    time, written to a scratch pool, balanced with the candidates, the set written with their labels."""
    small_chunks(monkeypatch, 10)
    data = planted.npz(tmp_path / "p.npz", [0] * 30 + [1] * 3 + [2] * 12 + [3] * 20)
    teacher = planted.teacher()
    monkeypatch.setattr(select_module, "MAX_IN_MEMORY_BYTES", 31 * IMAGE_BYTES)  # 40 selected: on disk
    monkeypatch.setattr(select_module, "CACHE_DIR", tmp_path / "cache")
    attack = BoundaryConfig(1.0, "least-predicted", max_steps=40, epsilon=0.5)
    pool, info = build_distillation_set(teacher, DataConfig(data, candidates=0, per_class=10, boundary=attack), 0, CPU,
                                        store=tmp_path / "run" / "selection")
    assert isinstance(pool, Pool) and len(pool) == 40
    assert info["boundary"]["parts"] == 11 and info["boundary"]["attacked"] == 65, "6 attacked a part: 31 // 5"
    assert info["boundary"]["samples"] > 0 and info["boundary"]["images_after"] == 65 + info["boundary"]["samples"]
    images = pool.images(0, 40)
    assert class_histogram(pool.labels, 4).tolist() == [10, 10, 10, 10]
    assert torch.equal(teacher.net(images.float() / 255).argmax(1), pool.labels), "labels = the teacher's argmax"
    assert images[pool.labels == 1].unique(dim=0).shape[0] > 3, "the rare class gets new images, not 3 copies"
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["selection"], "the scratch samples are deleted"
    pairs_only = BoundaryConfig(1.0, "least-predicted", max_steps=40, epsilon=0.5, deeper=False)
    _, info = build_distillation_set(teacher, DataConfig(data, candidates=0, per_class=10, boundary=pairs_only), 0,
                                     CPU, store=tmp_path / "pairs" / "selection")
    assert info["boundary"]["parts"] == 7, "two samples a pair: 10 attacked a part, 31 // 3"


def test_samples_on_disk_are_the_samples_the_parts_made(planted, tmp_path, monkeypatch):
    """A set held in memory whose samples are not (many attacked images): the set is the selection
    over the candidates and every part's samples, image for image, read back from the scratch pool."""
    small_chunks(monkeypatch, 10)
    data = planted.npz(tmp_path / "p.npz", [0] * 30 + [1] * 3 + [2] * 12 + [3] * 20)
    teacher = planted.teacher()
    monkeypatch.setattr(select_module, "MAX_IN_MEMORY_BYTES", 40 * IMAGE_BYTES)  # the set fits, 8 attacked a part
    monkeypatch.setattr(select_module, "CACHE_DIR", tmp_path / "cache")
    attack = BoundaryConfig(1.0, "least-predicted", max_steps=40, epsilon=0.5)
    config = DataConfig(data, candidates=0, per_class=10, boundary=attack)
    chosen, info = build_distillation_set(teacher, config, 0, CPU)
    images, logits = load_candidates(teacher, data, 0, 0)
    parts = list(boundary_sample_parts(teacher, images.images.__getitem__, logits.argmax(1), 1.0, seed=0, part_size=8,
                                       **attack.attack()))
    assert len(parts) == info["boundary"]["parts"] == 9
    everything = torch.cat([images.images, *(p.images for p in parts)])
    labels = torch.cat([logits.argmax(1), *(p.labels for p in parts)])
    index = balanced_indices(labels, 4, 10, seed=0)
    assert torch.equal(chosen.images, everything[index]) and torch.equal(chosen.labels, labels[index])
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [], "the scratch samples are deleted"


def test_the_boundary_command_attacks_a_pool_too_large_for_memory_in_parts(planted, tmp_path, monkeypatch):
    """`boundary` on a stored pool: read a chunk at a time, attacked in parts with the samples on disk,
    written as the pool's images then the samples, all labelled by the teacher; in one part (a set
    that fits) the samples are add_boundary_samples', as the command wrote them before parts."""
    small_chunks(monkeypatch, 10)
    classes = [0] * 30 + [1] * 3 + [2] * 12 + [3] * 20
    images = torch.from_numpy(planted.images(classes)).unsqueeze(1)
    write_pool(tmp_path / "set", images.split(16), {"source": "test"})
    teacher = planted.teacher()
    attack = dict(targets="least-predicted", max_steps=40, epsilon=0.5)
    whole = boundary(teacher, str(tmp_path / "set"), tmp_path / "whole", fraction=1.0, device="cpu", **attack)
    extended, _ = add_boundary_samples(teacher, ImageSet(images, None, TINY_SPEC.classes, "set"), 1.0, **attack)
    assert torch.equal(Pool(tmp_path / "whole").images(0, whole["images_after"]), extended.images)
    monkeypatch.setattr(select_module, "MAX_IN_MEMORY_BYTES", 31 * IMAGE_BYTES)  # 6 attacked a part: 31 // 5
    summary = boundary(teacher, str(tmp_path / "set"), tmp_path / "parts", fraction=1.0, device="cpu", **attack)
    pool = Pool(tmp_path / "parts")
    assert summary["parts"] == 11 and summary["samples"] > 0 and len(pool) == 65 + summary["samples"]
    written = pool.images(0, len(pool))
    assert torch.equal(written[:65], images), "the pool's own images first, in order"
    assert torch.equal(teacher.net(written.float() / 255).argmax(1), pool.labels), "labels = the teacher's argmax"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parts", "set", "whole"], "the scratch samples are deleted"
    raises_one_line(lambda: boundary(teacher, "shaders", tmp_path / "x", device="cpu"), "synthetic source", "select")


def test_a_part_counts_the_samples_of_the_parts_before_it(planted):
    """Least-predicted targets fill the rare classes across parts, not once per part."""
    teacher = planted.teacher()
    labels = torch.tensor([0] * 30 + [1] * 3 + [2] * 12 + [3] * 20)
    images = torch.from_numpy(planted.images(labels.tolist())).unsqueeze(1)
    parts = list(boundary_sample_parts(teacher, images.__getitem__, labels, 1.0, seed=0, part_size=16,
                                       targets="least-predicted", max_steps=40, epsilon=0.5))
    merged = merge_summaries([p.summary for p in parts], 1.0, len(labels))
    assert merged["class_histogram_before"] == [30, 3, 12, 20]
    assert merged["class_histogram_after"] == (class_histogram(labels, 4)
                                               + class_histogram(torch.cat([p.labels for p in parts]), 4)).tolist()
    assert merged["attacked"] == 65 and merged["samples"] == sum(len(p.labels) for p in parts)
    assert parts[1].summary["class_histogram_before"] == parts[0].summary["class_histogram_after"]
    for part in parts:  # `source` indexes the whole set: each pair starts within epsilon of its image
        pre, _ = part.part("pre")
        assert (pre.int() - images[part.source].int()).abs().amax() <= round(0.5 * 255)


def test_candidate_errors_are_one_line(planted, tmp_path):
    spec = planted.spec
    raises_one_line(lambda: Candidates(spec, "noise", 0, seed=0), "positive candidate count")
    raises_one_line(lambda: Candidates(spec, str(tmp_path / "missing.npz"), 10, seed=0), "no such image set")
    raises_one_line(lambda: Candidates(spec, "noise", 10, seed=0, source_params={"colour": 1}), "no parameter")


def _resident_file_pages_mb() -> float:
    """This process's resident file-backed memory (mapped files), from /proc/self/status."""
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no RssFile in /proc/self/status (not Linux)")


def test_reading_a_pool_leaves_no_pages_of_it_resident(tmp_path):
    images = torch.randint(0, 256, (1024, 3, 64, 64), dtype=torch.uint8)  # 12 MiB, 3 shards
    pool = Pool(write_pool(tmp_path / "pool", images.split(128), {"source": "test"}, shard_size=400))
    before = _resident_file_pages_mb()
    for start in range(0, len(pool), 100):
        assert torch.equal(pool.images(start, min(start + 100, len(pool))), images[start:start + 100])
    assert torch.equal(pool.gather(torch.arange(1023, -1, -1)), images.flip(0))
    # Through the memory map the whole 12 MiB would now be resident and stay so while `pool` lives.
    assert _resident_file_pages_mb() - before < 4


@pytest.mark.parametrize("method", ["gradient", "bisection"])
def test_the_boundary_method_reaches_the_attack(planted, tmp_path, method):
    """`distill --boundary-method` picks the attack for a white-box teacher too (auto: gradient)."""
    data = planted.npz(tmp_path / "p.npz", [0] * 20 + [1] * 3 + [2] * 12 + [3] * 20)
    attack = BoundaryConfig(0.5, "least-predicted", max_steps=40, epsilon=0.5, method=method)
    _, info = build_distillation_set(planted.teacher(), DataConfig(data, candidates=0, per_class=10, boundary=attack),
                                     0, CPU)
    assert info["boundary"]["method"] == method and info["boundary"]["samples"] > 0


def test_an_unknown_boundary_method_is_one_line():
    raises_one_line(lambda: BoundaryConfig(0.1, method="fgsm"), "unknown boundary method 'fgsm'", "bisection")


def test_a_set_on_disk_is_refined_chunk_by_chunk_and_stored_with_the_logits_of_its_images(tmp_path, monkeypatch):
    """Refinement (refine.py) on the on-disk path: each chunk refined before it is written, and the
    pool's logits are the teacher's on the refined images, not on the candidates they came from."""
    from surrogate_kd.config import RefineConfig
    from surrogate_kd.models import build_model

    small_chunks(monkeypatch, 7)
    monkeypatch.setattr(select_module, "MAX_IN_MEMORY_BYTES", 10 * IMAGE_BYTES)  # 20 selected: on disk
    torch.manual_seed(0)
    teacher = build_model("convnet_tiny", TINY_SPEC).eval()  # random weights; BatchNorm statistics to match
    with torch.no_grad():
        teacher.net.fc.weight.mul_(100)  # logits that differ from image to image by more than bf16's rounding
    plain, _ = build_distillation_set(teacher, DataConfig("noise", candidates=40, per_class=5), 0, CPU,
                                      store=tmp_path / "plain")
    data = DataConfig("noise", candidates=40, per_class=5, refine=RefineConfig(steps=3, lr=0.05))
    refined, info = build_distillation_set(teacher, data, 0, CPU, store=tmp_path / "refined")
    assert isinstance(refined, Pool) and len(refined) == len(plain) == 20
    assert info["refined"]["images"] == 20 and info["refined"]["steps"] == 3
    images, before = refined.images(0, 20), plain.images(0, 20)
    with torch.no_grad():
        logits, logits_before = teacher(images.float() / 255), teacher(before.float() / 255)
    stored = torch.as_tensor(refined.logits)
    assert torch.allclose(stored, logits, rtol=0.02, atol=0.05)
    assert not torch.allclose(stored, logits_before, rtol=0.02, atol=0.05), "the images moved, and their logits"
