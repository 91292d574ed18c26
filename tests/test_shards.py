"""TFRecord shards: the writer (manifest, verification, bad inputs, interruption and resume, bad
arguments) and the tf.data reader (deterministic crops, resume, per-worker file sharding).

Mechanics on a small generated Melon-shaped corpus (keras_mgc.data.synthetic_melon): 60 songs
of 200 frames, one of them corrupt (NaN values).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from keras_mgc.config import RecipeError, load_recipe
from keras_mgc.data import shard as S
from keras_mgc.data.datasets import discover_melon
from keras_mgc.data.shard_input import ShardSet
from keras_mgc.data.synthetic_melon import draw_lengths, make_synthetic_melon
from tests.conftest import REPO_ROOT

RECIPE = REPO_ROOT / "recipes" / "melon_22_ecapa.yaml"
BAD_SONG = "5"
PER_SHARD = 8


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = make_synthetic_melon(tmp_path_factory.mktemp("melon") / "melon", 60, n_genres=3, seed=1, frames=200)
    bad = root / "arena_mel" / "0" / f"{BAD_SONG}.npy"
    mel = np.load(bad)
    mel[3, 7] = np.nan
    np.save(bad, mel)
    return root


def _overrides(corpus: Path) -> list[str]:
    return [f"data.root={corpus}", "data.max_skip_fraction=0.1"]


@pytest.fixture(scope="module")
def written(corpus, tmp_path_factory) -> tuple[Path, dict, dict]:
    """Shards written in this process (one writer), the manifest and the planned parts."""
    recipe = load_recipe(RECIPE, _overrides(corpus))
    work = tmp_path_factory.mktemp("work")
    parts, classes, source = S.parts_from_recipe(recipe, work, None)
    out = work / "shards"
    manifest = S.shard_dataset(parts, out, kind="mel", class_names=classes, sample_rate=22050,
                               frontend=recipe.model.frontend.model_dump(mode="json"), source=source,
                               records_per_shard=PER_SHARD, workers=1, seed=recipe.seed, max_skip_fraction=0.1)
    return out, manifest, parts


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- writer


def test_manifest_records_the_split_classes_and_checksums(written, corpus):
    out, manifest, parts = written
    index = discover_melon(corpus)
    assert manifest["format"] == S.FORMAT and manifest["version"] == S.FORMAT_VERSION
    assert manifest["class_names"] == list(index.class_names)
    assert manifest["kind"] == "mel" and manifest["dtype"] == "float16" and manifest["frontend"]["n_mels"] == 48
    assert manifest["source"]["fold"] == 1 and manifest["source"]["split"] == "kfold"
    # Every usable single-genre song is in exactly one part, as the recipe's split put it.
    listed = {p: (out / f"{p}.txt").read_text().split("\n") for p in manifest["parts"]}
    listed = {p: {k for k in keys if k and not k.startswith("#")} for p, keys in listed.items()}
    for p, tracks in parts.items():
        assert listed[p] == {key for _, key, _ in tracks} - {BAD_SONG}
    assert sum(len(v) for v in listed.values()) == len(index) - 1
    assert not set.intersection(*listed.values())
    for p, info in manifest["parts"].items():
        assert info["n_records"] == len(listed[p]) == sum(s["n_records"] for s in info["shards"])
        for shard in info["shards"]:
            assert shard["n_records"] <= PER_SHARD
            assert _sha(out / shard["file"]) == shard["sha256"]
    # The corrupt file is reported with the loaders' reason and skipped.
    assert [s["key"] for s in manifest["skipped"]] == [BAD_SONG]
    assert "non-finite" in manifest["skipped"][0]["reason"]
    assert json.loads((out / "skipped.json").read_text())[0]["key"] == BAD_SONG


def test_records_hold_the_clips_exactly(written, corpus):
    out, manifest, _ = written
    import tensorflow as tf

    classes = manifest["class_names"]
    meta = {str(s["id"]): s["song_gn_gnr_basket"] for s in json.loads((corpus / "song_meta.json").read_text())}
    shard = manifest["parts"]["train"]["shards"][0]
    records = [S.parse_record(r) for r in tf.data.TFRecordDataset(str(out / shard["file"])).as_numpy_iterator()]
    assert len(records) == shard["n_records"] and records
    for rec in records:
        source = np.load(next(corpus.glob(f"arena_mel/*/{rec['key']}.npy")))
        stored = np.frombuffer(rec["x"], "<f2").reshape(rec["length"], 48)
        np.testing.assert_array_equal(stored, source.T)  # float16 in, float16 stored: bit-exact
        assert classes[rec["label"]] == meta[rec["key"]][0]


def test_too_many_bad_files_stop_with_every_reason(corpus, tmp_path):
    recipe = load_recipe(RECIPE, [f"data.root={corpus}", "data.max_skip_fraction=0.0"])
    parts, classes, source = S.parts_from_recipe(recipe, tmp_path, None)
    from keras_mgc.data.datasets import DatasetError

    with pytest.raises(DatasetError, match=f"1 of 59 files are unusable.*{BAD_SONG}.npy"):
        S.shard_dataset(parts, tmp_path / "out", kind="mel", class_names=classes, sample_rate=22050, frontend={},
                        source=source, records_per_shard=PER_SHARD, workers=1, seed=1, max_skip_fraction=0.0)
    assert not (tmp_path / "out" / S.MANIFEST).exists()
    assert json.loads((tmp_path / "out" / "skipped.json").read_text())[0]["key"] == BAD_SONG


def test_killed_writer_resumes_and_produces_the_same_shards(written, corpus, tmp_path, capsys):
    """The command in 2 processes, SIGKILLed (with its workers) once shards are being published,
    then run again: it resumes, and the result is byte-identical to the uninterrupted run."""
    reference, manifest, _ = written
    out = tmp_path / "shards"
    command = [sys.executable, "-m", "keras_mgc.data.shard", "--recipe", str(RECIPE), "--data-dir", str(corpus),
               "--set", "data.max_skip_fraction=0.1", "--output", str(out), "--records-per-shard", str(PER_SHARD),
               "--workers", "2"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    def done() -> list[Path]:  # progress records (not a record being written: .name.tmp-*)
        return [p for p in (out / S.PROGRESS).glob("*.json") if not p.name.startswith(".")]

    deadline = time.monotonic() + 240
    while not done() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the writer finished before it could be interrupted: " + proc.stdout.read()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / S.MANIFEST).exists()
    n_done = len(done())
    n_shards = sum(len(v["shards"]) for v in manifest["parts"].values())
    assert 1 <= n_done < n_shards
    again = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"resuming, {n_done} of {n_shards} shards already written" in again.stdout
    resumed = json.loads((out / S.MANIFEST).read_text())
    assert resumed["parts"] == manifest["parts"]  # same files, counts and sha256 as the uninterrupted run
    assert not list(out.glob(".*.tmp-*")) and not list((out / S.PROGRESS).glob(".*.tmp-*"))
    # A third run finds it complete and changes nothing.
    before = (out / S.MANIFEST).stat().st_mtime_ns
    assert S.main(command[3:]) == 0
    assert "already complete" in capsys.readouterr().out
    assert (out / S.MANIFEST).stat().st_mtime_ns == before


def test_bad_arguments_are_clear_errors(written, corpus, tmp_path, capsys):
    out, _, _ = written
    base = ["--recipe", str(RECIPE), "--data-dir", str(corpus), "--set", "data.max_skip_fraction=0.1"]
    cases = [
        (["--recipe", str(tmp_path / "nope.yaml"), "--output", str(tmp_path / "o")], "recipe file not found"),
        ([*base, "--output", str(tmp_path / "o"), "--records-per-shard", "0"], "--records-per-shard must be >= 1"),
        ([*base, "--output", str(tmp_path / "o"), "--workers", "0"], "--workers must be >= 1"),
        ([*base, "--output", str(tmp_path / "o"), "--fold", "11"], "--fold 11: the split has folds 1..10"),
        (["--recipe", str(RECIPE), "--data-dir", str(tmp_path / "missing"), "--output", str(tmp_path / "o")],
         "data.root: path does not exist"),
        ([*base, "--output", str(out), "--records-per-shard", "5"], "holds shards of another dataset"),
    ]
    (tmp_path / "file").write_text("x")
    cases.append(([*base, "--output", str(tmp_path / "file")], "exists and is not a folder"))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    cases.append(([*base, "--output", str(tmp_path / "busy")], "folder is not empty and holds no shard plan"))
    for argv, message in cases:
        assert S.main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_reader_refuses_damaged_or_foreign_folders(written, tmp_path):
    out, manifest, _ = written
    with pytest.raises(S.ShardError, match="no manifest.json"):
        ShardSet(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / S.MANIFEST).write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(S.ShardError, match="format version 99"):
        ShardSet(copy)
    (copy / S.MANIFEST).write_text(json.dumps(manifest))
    victim = copy / manifest["parts"]["train"]["shards"][0]["file"]
    victim.write_bytes(victim.read_bytes()[:-10])
    with pytest.raises(S.ShardError, match="cut short"):
        ShardSet(copy)
    with pytest.raises(RecipeError, match="data.shards: .* holds no manifest.json"):
        load_recipe(RECIPE, [f"data.shards={tmp_path}"])


# --------------------------------------------------------------------------- reader


def _batches(ds, n):
    return [(x.numpy(), y.numpy()) for x, y in ds.take(n)]


def test_crops_are_deterministic_resumable_and_sharded_by_file(written):
    out, manifest, _ = written
    shards = ShardSet(out)
    crop, batch = 50, 8
    kw = dict(shuffle_buffer=0, interleave_cycle=16)
    steps = shards.steps_per_epoch("train", batch)
    assert steps == -(-manifest["parts"]["train"]["n_records"] // batch)
    first = _batches(shards.training_dataset("train", crop, seed=7, global_batch=batch, **kw), steps + 2)
    again = _batches(shards.training_dataset("train", crop, seed=7, global_batch=batch, **kw), steps + 2)
    assert all((a[0] == b[0]).all() and (a[1] == b[1]).all() for a, b in zip(first, again))
    assert first[0][0].shape == (batch, crop, 48) and first[0][0].dtype == np.float32
    other = _batches(shards.training_dataset("train", crop, seed=8, global_batch=batch, **kw), 1)
    assert not np.array_equal(other[0][0], first[0][0])
    # Epoch 1 built directly (a resumed run) is epoch 1 of the uninterrupted stream.
    resumed = _batches(shards.training_dataset("train", crop, seed=7, global_batch=batch, initial_epoch=1, **kw), 2)
    for k in range(2):
        np.testing.assert_array_equal(resumed[k][0], first[steps + k][0])
    # Epoch 1 is a new plan (new order and crops), not a copy of epoch 0.
    assert not np.array_equal(first[steps][0], first[0][0])
    # Two input pipelines read disjoint files; together each step holds the same crops as one pipeline's.
    two = [_batches(shards.training_dataset("train", crop, seed=7, global_batch=batch, num_pipelines=2,
                                            pipeline_id=i, **kw), steps) for i in range(2)]
    assert shards.steps_per_epoch("train", batch, num_pipelines=2) == steps
    for k in range(steps - 1):  # the last step of an epoch is padding, which differs per pipeline
        one_set = sorted(map(bytes, first[k][0].reshape(batch, -1)))
        two_set = sorted(map(bytes, np.concatenate([two[0][k][0], two[1][k][0]]).reshape(batch, -1)))
        assert one_set == two_set, k
    # Every crop is a window of its record's clip.
    rec = shards.clips("train")
    sources = {i: rec.get(i) for i in range(len(rec))}
    x = first[0][0][0]
    assert any(any(np.array_equal(x, clip[s:s + crop]) for s in range(clip.shape[0] - crop + 1))
               for clip in sources.values())


def test_steps_per_epoch_covers_the_largest_share_and_refuses_too_few_files(written):
    shards = ShardSet(written[0])
    counts = sorted(shards.counts("train"), reverse=True)
    for pipelines in (1, 2, 3):
        most = sum(counts[: -(-len(counts) // pipelines)])
        assert shards.steps_per_epoch("train", 6, 1, pipelines) == -(-most // (6 // pipelines))
    with pytest.raises(S.ShardError, match="fewer than the .* input pipelines"):
        shards.steps_per_epoch("test", 8, 1, len(shards.counts("test")) + 1)


def test_synthetic_lengths_follow_the_stated_distribution():
    lengths = draw_lengths(np.random.default_rng(0), 20000)
    full = (lengths == 1876).mean()
    assert 0.78 < full < 0.82
    short = lengths[lengths != 1876]
    assert short.min() >= 1250 and short.max() <= 1875
