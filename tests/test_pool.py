"""Pools on disk: round trips across shards, plain-numpy readability, atomic writes, errors."""

import json
import os

import numpy as np
import pytest
import torch

from surrogate_kd.errors import UserError
from surrogate_kd.pool import MANIFEST, Pool, synthesize, write_pool
from surrogate_kd.sources import render


def _batches(images: torch.Tensor, batch_size: int):
    return (images[i : i + batch_size] for i in range(0, len(images), batch_size))


@pytest.fixture
def images() -> torch.Tensor:
    return render("noise", 0, 0, 30, 8, mean=0.5, std=0.3)  # (30, 3, 8, 8)


def test_round_trip_across_shards(tmp_path, images):
    path = write_pool(tmp_path / "pool", _batches(images, 4), {"source": "noise", "seed": 0}, shard_size=7)
    pool = Pool(path)
    assert (len(pool), pool.size, pool.channels) == (30, 8, 3)
    assert [s["count"] for s in pool.manifest["shards"]] == [7, 7, 7, 7, 2]
    assert pool.manifest["source"] == "noise" and pool.labels is None and pool.logits is None
    assert torch.equal(pool.images(0, 30), images)
    assert torch.equal(pool.images(5, 16), images[5:16])  # spans three shards
    assert pool.images(3, 3).shape == (0, 3, 8, 8)


def test_gather_returns_the_asked_images_in_the_asked_order(tmp_path, images):
    pool = Pool(write_pool(tmp_path / "pool", _batches(images, 4), {}, shard_size=7))
    order = torch.tensor([29, 0, 13, 13, 6, 7, 21])  # out of order, repeated, across all five shards
    assert torch.equal(pool.gather(order), images[order])
    assert torch.equal(pool.gather([28, 1]), images[[28, 1]])  # a plain list works too
    assert pool.gather(torch.tensor([], dtype=torch.int64)).shape == (0, 3, 8, 8)
    with pytest.raises(IndexError):
        pool.gather(torch.tensor([3, -1]))


def test_shards_are_plain_numpy(tmp_path, images):
    path = write_pool(tmp_path / "pool", _batches(images, 9), {}, shard_size=16)
    manifest = json.loads((path / MANIFEST).read_text())
    arrays = [np.load(path / shard["file"], mmap_mode="r") for shard in manifest["shards"]]
    assert all(isinstance(a, np.memmap) and a.dtype == np.uint8 for a in arrays)
    assert np.array_equal(np.concatenate(arrays), images.permute(0, 2, 3, 1).numpy())  # NHWC


def test_labels_and_logits_round_trip(tmp_path, images):
    labels = torch.arange(30) % 4
    logits = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    path = write_pool(tmp_path / "pool", _batches(images, 8), {}, shard_size=10, labels=labels, logits=logits)
    pool = Pool(path)
    assert pool.labels.dtype == torch.int64 and torch.equal(pool.labels, labels)
    assert pool.logits.dtype == torch.float32 and torch.equal(pool.logits, logits)
    with pytest.raises(ValueError, match="labels has 29 rows"):
        write_pool(tmp_path / "short", _batches(images, 8), {}, labels=labels[:29])
    assert not (tmp_path / "short").exists()


def test_synthesize_matches_the_stream(tmp_path):
    path = synthesize("leaves", 20, 12, tmp_path / "leaves", channels=1, seed=5, batch_size=6, shard_size=8)
    pool = Pool(path)
    assert torch.equal(pool.images(0, 20), render("leaves", 5, 0, 20, 12, 1))
    assert pool.manifest["seed"] == 5 and pool.manifest["channels"] == 1
    assert (path / "grid.png").stat().st_size > 0


def test_params_are_recorded(tmp_path):
    pool = Pool(synthesize("noise", 4, 8, tmp_path / "p", mean=[0.1, 0.2, 0.3]))
    assert pool.manifest["params"] == {"mean": [0.1, 0.2, 0.3]}
    assert pool.manifest["source"] == "noise"


def test_existing_pool_needs_overwrite(tmp_path, images):
    out = tmp_path / "pool"
    write_pool(out, _batches(images, 8), {"tag": "old"})
    with pytest.raises(UserError, match="already holds a pool"):
        write_pool(out, _batches(images, 8), {"tag": "new"})
    assert Pool(out).manifest["tag"] == "old"
    write_pool(out, _batches(images[:5], 8), {"tag": "new"}, overwrite=True)
    assert Pool(out).manifest["tag"] == "new" and len(Pool(out)) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool"]  # no staging or retired copies


def test_interrupted_write_leaves_nothing_that_looks_complete(tmp_path, images):
    def interrupted():
        yield images[:8]
        yield images[8:16]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_pool(tmp_path / "pool", interrupted(), {}, shard_size=5)
    assert list(tmp_path.iterdir()) == []  # neither the pool nor its staging directory


def test_failed_overwrite_keeps_the_old_pool(tmp_path, images):
    out = tmp_path / "pool"
    write_pool(out, _batches(images, 8), {"tag": "old"})

    def failing():
        yield images[:8]
        raise RuntimeError("renderer crashed")

    with pytest.raises(RuntimeError):
        write_pool(out, failing(), {"tag": "new"}, overwrite=True)
    assert Pool(out).manifest["tag"] == "old" and torch.equal(Pool(out).images(0, 30), images)


def test_refuses_to_replace_a_directory_that_is_not_a_pool(tmp_path, images):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="holds no pool"):
        write_pool(tmp_path / "notes", _batches(images, 8), {}, overwrite=True)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_unwritable_output_is_a_user_error(tmp_path, images):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot write a pool"):
        write_pool(blocker / "pool", _batches(images, 8), {})  # a file where a directory must go
    with pytest.raises(UserError, match="exists and is a file"):
        write_pool(blocker, _batches(images, 8), {})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(source="nope", count=4, size=8), "unknown source"),
        (dict(source="noise", count=4, size=0), "image size"),
        (dict(source="noise", count=0, size=8), "image count"),
        (dict(source="noise", count=4, size=8, channels=2), "channels"),
    ],
)
def test_synthesize_bad_arguments_create_nothing(tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        synthesize(out=tmp_path / "pool", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_opening_a_bad_pool_names_the_path_and_the_problem(tmp_path, images):
    with pytest.raises(UserError, match="no pool at .*missing: not a directory"):
        Pool(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=f"no pool at .*empty: {MANIFEST} is missing"):
        Pool(tmp_path / "empty")

    path = write_pool(tmp_path / "pool", _batches(images, 8), {}, shard_size=10)
    (path / "images-00001.npy").unlink()
    with pytest.raises(UserError, match="corrupt pool at .*pool: cannot read shard images-00001.npy"):
        Pool(path)
    np.save(path / "images-00001.npy", np.zeros((10, 8, 8, 1), np.uint8))
    with pytest.raises(UserError, match="shard images-00001.npy is uint8 \\(10, 8, 8, 1\\)"):
        Pool(path)
    manifest = json.loads((path / MANIFEST).read_text())
    (path / MANIFEST).write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(UserError, match="format/version \\('surrogate-kd-pool', 99\\); this reader needs"):
        Pool(path)
    (path / MANIFEST).write_text("{not json")
    with pytest.raises(UserError, match=f"corrupt pool at .*cannot read {MANIFEST}"):
        Pool(path)


def test_out_of_range_reads_raise(tmp_path, images):
    pool = Pool(write_pool(tmp_path / "pool", _batches(images, 8), {}))
    with pytest.raises(IndexError):
        pool.images(25, 31)
    with pytest.raises(IndexError):
        pool.gather(torch.tensor([0, 30]))


def test_cli_passes_source_parameters_and_rejects_bad_ones(tmp_path, capsys):
    from surrogate_kd.cli import main

    assert main(["synthesize", "shaders", "--count", "6", "--size", "8", "--channels", "1", "--param", "figure=0",
                 "--out", str(tmp_path / "plain")]) == 0
    pool = Pool(tmp_path / "plain")
    assert pool.manifest["params"] == {"figure": 0}
    assert torch.equal(pool.images(0, 6), render("shaders", 0, 0, 6, 8, 1, figure=0))
    assert not torch.equal(pool.images(0, 6), render("shaders", 0, 0, 6, 8, 1))
    capsys.readouterr()
    assert main(["synthesize", "shaders", "--count", "6", "--param", "colour=2", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no parameter colour" in err and not (tmp_path / "bad").exists()


def _point_manifest_at(path, **fields) -> None:
    manifest = json.loads((path / MANIFEST).read_text())
    (path / MANIFEST).write_text(json.dumps({**manifest, **fields}))


@pytest.mark.parametrize(
    "name", ["../x.npy", "../../x.npy", "/etc/x.npy", "sub/images-00000.npy", "..\\x.npy", "..", "escape.npy"]
)
def test_manifest_files_must_lie_inside_the_pool(tmp_path, images, name):
    path = write_pool(tmp_path / "pool", _batches(images, 8), {}, shard_size=30, labels=torch.zeros(30))
    outside = tmp_path / "x.npy"
    np.save(outside, images.permute(0, 2, 3, 1).numpy())  # a readable array the reader must not open
    (path / "escape.npy").symlink_to(outside)
    shards = [{"file": name, "count": 30}]
    _point_manifest_at(path, shards=shards)
    with pytest.raises(UserError, match="corrupt pool at .*pool: shard '.*' is outside the pool"):
        Pool(path)
    _point_manifest_at(path, shards=[{"file": "images-00000.npy", "count": 30}], labels=name)
    with pytest.raises(UserError, match="corrupt pool at .*pool: labels '.*' is outside the pool"):
        Pool(path)


def test_symlinks_inside_the_pool_are_fine(tmp_path, images):
    path = write_pool(tmp_path / "pool", _batches(images, 8), {}, shard_size=30)
    os.replace(path / "images-00000.npy", path / "stored.npy")
    (path / "images-00000.npy").symlink_to("stored.npy")
    assert torch.equal(Pool(path).images(0, 30), images)


def test_pool_modes_follow_the_umask(tmp_path, images):
    old = os.umask(0o022)
    try:
        path = synthesize("noise", 4, 8, tmp_path / "pool", shard_size=3)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o755  # not mkdtemp's 0700
    assert {p.name: p.stat().st_mode & 0o777 for p in path.iterdir()} == {
        name: 0o644 for name in ("manifest.json", "images-00000.npy", "images-00001.npy", "grid.png")
    }
