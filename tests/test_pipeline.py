"""Input pipeline mechanics: crops, per-epoch plans, caches, resumable streams (generated signals)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from keras_mgc.data import pipeline as P
from keras_mgc.data.datasets import Track


def _tracks(tmp_path, lengths, sr=22050, name="c"):
    tracks = []
    for i, n in enumerate(lengths):
        path = tmp_path / f"{name}{i}.wav"
        sf.write(path, (np.sin(np.arange(n) * (0.01 + 0.01 * i)) * 0.5).astype("float32"), sr, subtype="FLOAT")
        tracks.append(Track(str(path), f"class{i % 2}", f"class{i % 2}/{name}{i}"))
    return tracks


def test_sampler_plans_are_deterministic_and_visit_every_track_data_cycle_times():
    lengths = [50_000, 30_000, 44_356, 100_000, 60_000]
    sampler = P.CropSampler(lengths, crop=44_356, data_cycle=8, seed=3823, global_batch=16)
    assert sampler.steps_per_epoch == 3  # 40 crops padded to 48
    order, starts = sampler.plan(0)
    assert order.size == 48
    assert np.bincount(order[:40], minlength=5).tolist() == [8] * 5
    np.testing.assert_array_equal(order[40:], order[:8])  # padding repeats the epoch's first crops
    assert (starts >= 0).all() and (starts <= np.maximum(np.array(lengths)[order] - 44_356, 0)).all()
    again = P.CropSampler(lengths, crop=44_356, data_cycle=8, seed=3823, global_batch=16)
    for epoch in (0, 5):
        np.testing.assert_array_equal(again.plan(epoch)[0], sampler.plan(epoch)[0])
        np.testing.assert_array_equal(again.plan(epoch)[1], sampler.plan(epoch)[1])
    assert not np.array_equal(sampler.plan(1)[0], order)
    assert P.CropSampler(lengths, 44_356, 8, 3823, 16, max_steps=2).steps_per_epoch == 2


def test_training_stream_resumed_at_an_epoch_equals_the_uninterrupted_stream(tmp_path):
    tracks = _tracks(tmp_path, [3000, 5000, 4000, 1000])
    store = P.ClipStore(tracks).prepare()
    sampler = P.CropSampler(store.lengths, crop=2048, data_cycle=3, seed=1, global_batch=4)
    steps = sampler.steps_per_epoch
    labels = [0, 1, 0, 1]
    full = list(P.training_dataset(store, labels, sampler, initial_epoch=0).take(3 * steps).as_numpy_iterator())
    resumed = list(P.training_dataset(store, labels, sampler, initial_epoch=2).take(steps).as_numpy_iterator())
    for (xa, ya), (xb, yb) in zip(full[2 * steps :], resumed):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    x, y = full[0]
    assert x.shape == (4, 2048) and x.dtype == np.float32 and y.dtype == np.int32


def test_sharded_streams_split_the_plan_between_input_pipelines(tmp_path):
    store = P.ClipStore(_tracks(tmp_path, [3000, 5000, 4000])).prepare()
    sampler = P.CropSampler(store.lengths, crop=1024, data_cycle=4, seed=2, global_batch=4)
    whole = np.concatenate([y for _, y in P.training_dataset(store, [0, 1, 2], sampler).take(sampler.steps_per_epoch)
                            .as_numpy_iterator()])
    parts = [np.concatenate([y for _, y in P.training_dataset(store, [0, 1, 2], sampler, batch_size=2, num_shards=2,
                                                               shard_index=k).take(sampler.steps_per_epoch)
                             .as_numpy_iterator()]) for k in (0, 1)]
    np.testing.assert_array_equal(parts[0], whole[0::2])
    np.testing.assert_array_equal(parts[1], whole[1::2])


def test_disk_cache_is_reused_by_a_second_run(tmp_path, monkeypatch):
    tracks = _tracks(tmp_path, [4000, 2000], sr=44100)
    first = P.ClipStore(tracks, cache="disk", cache_dir=tmp_path / "cache").prepare()
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2
    memory = P.ClipStore(tracks).prepare()
    np.testing.assert_array_equal(first.get(0), memory.get(0))
    assert first.lengths.tolist() == [2000, 1000]  # resampled to 22,050 Hz

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(P, "load_audio", no_decoding)
    second = P.ClipStore(tracks, cache="disk", cache_dir=tmp_path / "cache").prepare()
    np.testing.assert_array_equal(second.get(1), memory.get(1))
    assert not list((tmp_path / "cache").glob(".*tmp*"))  # atomic writes left nothing behind


def test_unreadable_clip_is_skipped_with_its_reason(tmp_path):
    tracks = _tracks(tmp_path, [3000, 3000])
    bad = tmp_path / "bad.wav"
    bad.write_text("this is not audio")
    tracks.append(Track(str(bad), "class0", "class0/bad"))
    store = P.ClipStore(tracks).prepare()
    assert len(store) == 2
    (skipped,) = store.skipped
    assert skipped["key"] == "class0/bad" and skipped["reason"]
    assert [t.key for t in store.subset([1]).tracks] == ["class1/c1"]


def test_mel_tracks_are_cropped_in_frames(tmp_path):
    tracks = []
    for i, frames in enumerate([300, 100]):
        path = tmp_path / f"{i}.npy"
        np.save(path, np.random.default_rng(i).standard_normal((48, frames)).astype("float32"))
        tracks.append(Track(str(path), "GN0100", str(i)))
    store = P.ClipStore(tracks, cache="none").prepare()
    assert store.is_mel and store.lengths.tolist() == [300, 100]
    assert store.get(0).shape == (300, 48)
    sampler = P.CropSampler(store.lengths, crop=174, data_cycle=1, seed=0, global_batch=2)
    x, _ = next(P.training_dataset(store, [0, 0], sampler).as_numpy_iterator())
    assert x.shape == (2, 174, 48)
    lengths = [c.shape[0] for c, _ in P.whole_clip_dataset(store, [0, 0]).unbatch().as_numpy_iterator()]
    assert lengths == [300, 100]


def test_store_rejects_bad_cache_settings(tmp_path):
    with pytest.raises(ValueError, match="cache must be"):
        P.ClipStore([], cache="ram")
    with pytest.raises(ValueError, match="cache_dir"):
        P.ClipStore([], cache="disk")
