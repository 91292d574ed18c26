"""Tests of keras_mgc.data.splits: list files, shipped GTZAN splits, folds, resolution."""

from __future__ import annotations

import json
import random
from collections import Counter
from importlib import resources

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_mgc.data.datasets import GTZAN_GENRES, DatasetIndex, DatasetWarning, Track, discover, validate_tracks
from keras_mgc.data.splits import (
    Split,
    SplitError,
    check_folds,
    cv_fold,
    fault_filtered,
    load_split_dir,
    normalise_key,
    paper_folds,
    parse_split_list,
    read_folds,
    read_split,
    read_split_list,
    resolve_split,
    stratified_kfold,
    write_split_list,
)

ALL_GTZAN = {f"{g}/{g}.{n:05d}" for g in GTZAN_GENRES for n in range(100)}


def genre(key: str) -> str:
    return key.split("/", 1)[0]


def fake_index(keys: list[str]) -> DatasetIndex:
    return DatasetIndex.from_tracks([Track(f"/data/{k}.wav", genre(k), k) for k in keys], root="/data")


# --------------------------------------------------------------------------- list files


@pytest.mark.parametrize(
    "entry,key",
    [
        ("genres_original/blues/blues.00004.wav", "blues/blues.00004"),
        ("genres/blues/blues.00004.au", "blues/blues.00004"),
        ("blues/blues.00012.wav", "blues/blues.00012"),
        ("blues/blues.00012", "blues/blues.00012"),  # no extension: the dot stays
        ("  /data/gtzan/genres/rock/rock.00001.au \t", "rock/rock.00001"),
        ("C:\\data\\Data\\genres_original\\pop\\pop.00002.wav", "pop/pop.00002"),
        ("./cats/sub/b.FLAC", "cats/sub/b"),
        ("cats/a.b.c", "cats/a.b.c"),
        ("arena_mel/12/12345.npy", "12345"),
        ("12345", "12345"),
    ],
)
def test_normalise_key(entry, key):
    assert normalise_key(entry) == key


@pytest.mark.parametrize("entry", ["", "  ", "./", "data/genres_original/"])
def test_normalise_key_rejects_non_tracks(entry):
    with pytest.raises(SplitError):
        normalise_key(entry)


def test_parse_split_list_skips_comments_and_blank_lines():
    text = "# paper folds\r\n\r\ngenres_original/blues/blues.00004.wav\r\n   \n  # indented comment\nrock/rock.00001.au\n"
    assert parse_split_list(text) == ["blues/blues.00004", "rock/rock.00001"]


def test_duplicate_in_a_list_is_an_error_naming_it(tmp_path):
    path = tmp_path / "fold1.txt"
    path.write_text("genres_original/blues/blues.00004.wav\nblues/blues.00005.wav\ngenres/blues/blues.00004.au\n")
    with pytest.raises(SplitError) as info:
        read_split_list(path)
    assert str(path) in str(info.value) and "blues/blues.00004 (lines 1 and 3)" in str(info.value)


def test_write_and_read_split_list_round_trip(tmp_path):
    keys = ["b/x.00001", "a/y", "12345"]
    write_split_list(tmp_path / "l.txt", keys, comment="made by a test\nseed 1")
    assert (tmp_path / "l.txt").read_text().startswith("# made by a test\n# seed 1\n")
    assert read_split_list(tmp_path / "l.txt") == keys
    with pytest.raises(SplitError, match="cannot read"):
        read_split_list(tmp_path / "missing.txt")


# --------------------------------------------------------------------------- shipped GTZAN splits


def test_paper_folds_are_ten_disjoint_stratified_folds_of_gtzan():
    folds = paper_folds()
    assert len(folds) == 10 and [len(f) for f in folds] == [100] * 10
    every = [k for fold in folds for k in fold]
    assert len(set(every)) == 1000 and set(every) == ALL_GTZAN
    for fold in folds:
        assert Counter(map(genre, fold)) == {g: 10 for g in GTZAN_GENRES}
    assert folds[0][:2] == ["blues/blues.00004", "blues/blues.00094"]  # file order is kept


def test_fault_filtered_split():
    split = fault_filtered()
    assert (len(split.train), len(split.valid), len(split.test)) == (443, 197, 290)
    every = set(split.train) | set(split.valid) | set(split.test)
    assert len(every) == 930 and every <= ALL_GTZAN
    assert split.test[0] == "blues/blues.00012" and split.valid[0] == "blues/blues.00000"


def test_shipped_lists_are_identical_to_the_reference_copies(shared_data):
    shipped = resources.files("keras_mgc.data").joinpath("split_lists")
    for folder, names in [
        ("gtzan_paper_10fold", [f"fold{i}.txt" for i in range(1, 11)]),
        ("gtzan_fault_filtered", [f"{p}_filtered.txt" for p in ("train", "valid", "test")]),
    ]:
        assert shipped.joinpath(folder, "SOURCE.md").read_text("utf-8").strip()
        for name in names:
            assert shipped.joinpath(folder, name).read_bytes() == (shared_data / "splits" / folder / name).read_bytes()
    assert read_folds(shared_data / "splits" / "gtzan_paper_10fold") == paper_folds()
    assert read_split(shared_data / "splits" / "gtzan_fault_filtered") == fault_filtered()


# --------------------------------------------------------------------------- split checks


def test_cv_fold_protocol():
    folds = paper_folds()
    tested = []
    for k in range(1, 11):
        split = cv_fold(folds, k)
        assert list(split.test) == folds[k - 1]
        assert list(split.valid) == folds[k % 10]
        assert len(split.train) == 800 and set(split.train) == ALL_GTZAN - set(split.test) - set(split.valid)
        tested += split.test
    assert cv_fold(folds, 10).valid == tuple(folds[0])  # 10 wraps to 1
    assert sorted(tested) == sorted(ALL_GTZAN)  # every track is tested exactly once
    for bad in (0, 11, -1):
        with pytest.raises(SplitError, match="out of range"):
            cv_fold(folds, bad)
    with pytest.raises(SplitError, match="at least 3 folds"):
        cv_fold(folds[:2], 1)


@pytest.mark.parametrize("a,b", [("train", "test"), ("valid", "test"), ("train", "valid")])
def test_a_key_in_two_parts_is_an_error_naming_it(a, b):
    parts = {"train": ["x/1", "x/2"], "valid": ["x/3"], "test": ["x/4"]}
    parts[b] = parts[b] + [parts[a][0]]
    with pytest.raises(SplitError) as info:
        Split(**parts)
    assert f"1 keys in both {a} and {b}: {parts[a][0]}" in str(info.value)
    with pytest.raises(SplitError, match=f"both {a} and {b}"):
        resolve_split(parts, fake_index(["x/1", "x/2", "x/3", "x/4"]))


def test_a_key_twice_in_one_part_is_an_error():
    with pytest.raises(SplitError, match=r"1 keys listed twice in train: x/1"):
        Split(["x/1", "x/2", "x/1"], ["x/3"], ["x/4"])
    with pytest.raises(SplitError, match="listed twice in keys"):
        resolve_split(["x/1", "x/1"], fake_index(["x/1"]))


def test_cv_fold_refuses_folds_sharing_a_track():
    folds = [f[:] for f in paper_folds()]
    folds[3].append(folds[7][0])
    with pytest.raises(SplitError, match=f"in both fold4 and fold8: {folds[7][0]}"):
        check_folds(folds)
    with pytest.raises(SplitError, match=folds[7][0]):
        cv_fold(folds, 4)  # test fold 4 would share a track with training fold 8


def test_split_folders(tmp_path):
    folds_dir = tmp_path / "folds"
    folds_dir.mkdir()
    for i, keys in enumerate([["a/1", "b/1"], ["a/2", "b/2"], ["a/3", "b/3"]], start=1):
        write_split_list(folds_dir / f"fold{i}.txt", keys)
    (folds_dir / "README.md").write_text("not a list")
    assert load_split_dir(folds_dir) == [["a/1", "b/1"], ["a/2", "b/2"], ["a/3", "b/3"]]
    write_split_list(folds_dir / "fold5.txt", ["a/5"])
    with pytest.raises(SplitError, match="without gaps"):
        load_split_dir(folds_dir)
    write_split_list(folds_dir / "fold4.txt", ["a/1"])
    with pytest.raises(SplitError, match="both fold1 and fold4: a/1"):
        load_split_dir(folds_dir)

    parts_dir = tmp_path / "parts"
    parts_dir.mkdir()
    for name, keys in [("train.txt", ["a/1"]), ("val.txt", ["a/2"]), ("TEST_melon.txt", ["a/3"])]:
        write_split_list(parts_dir / name, keys)
    assert load_split_dir(parts_dir) == Split(["a/1"], ["a/2"], ["a/3"])
    write_split_list(parts_dir / "valid_other.txt", ["a/4"])
    with pytest.raises(SplitError, match=r"one list file for the valid part .* \['val.txt', 'valid_other.txt'\]"):
        load_split_dir(parts_dir)
    with pytest.raises(SplitError, match="no fold1.txt"):
        read_folds(parts_dir)
    with pytest.raises(SplitError, match="split folder not found"):
        load_split_dir(tmp_path / "none")


# --------------------------------------------------------------------------- stratified k-fold


def _labels(keys):
    return [genre(k) for k in keys]


def test_stratified_kfold_is_deterministic_balanced_and_order_free():
    keys = [f"{g}/{g}.{n:05d}" for g in ("a", "b", "c") for n in range({"a": 23, "b": 10, "c": 7}[g])]
    folds = stratified_kfold(keys, _labels(keys), 5, seed=3823)
    assert folds == stratified_kfold(keys, _labels(keys), 5, seed=3823)
    assert folds != stratified_kfold(keys, _labels(keys), 5, seed=1)
    shuffled = keys[:]
    random.Random(0).shuffle(shuffled)
    assert folds == stratified_kfold(shuffled, _labels(shuffled), 5, seed=3823)
    assert sorted(k for f in folds for k in f) == sorted(keys)
    assert [len(f) for f in folds] == [8] * 5
    for g, n in (("a", 23), ("b", 10), ("c", 7)):
        per_fold = [sum(genre(k) == g for k in f) for f in folds]
        assert sum(per_fold) == n and max(per_fold) - min(per_fold) <= 1


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=30), min_size=1, max_size=8),
    n_folds=st.integers(min_value=2, max_value=12),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_stratified_kfold_properties(sizes, n_folds, seed):
    keys = [f"c{c}/t{i}" for c, n in enumerate(sizes) for i in range(n)]
    if len(keys) < n_folds:
        with pytest.raises(SplitError, match="cannot fill"):
            stratified_kfold(keys, _labels(keys), n_folds, seed)
        return
    folds = stratified_kfold(keys, _labels(keys), n_folds, seed)
    assert len(folds) == n_folds
    check_folds(folds)  # disjoint
    assert sorted(k for f in folds for k in f) == sorted(keys)
    lengths = [len(f) for f in folds]
    assert max(lengths) - min(lengths) <= 1
    for c in range(len(sizes)):
        per_fold = [sum(genre(k) == f"c{c}" for k in f) for f in folds]
        assert max(per_fold) - min(per_fold) <= 1


def test_stratified_kfold_input_errors():
    with pytest.raises(ValueError, match="2 keys but 1 labels"):
        stratified_kfold(["a/1", "a/2"], ["a"], 2)
    with pytest.raises(ValueError, match="at least 2"):
        stratified_kfold(["a/1", "a/2"], ["a", "a"], 1)
    with pytest.raises(SplitError, match="keys given twice: a/1"):
        stratified_kfold(["a/1", "a/1", "a/2"], ["a", "a", "a"], 2)


def test_stratified_folds_feed_cv_fold():
    keys = sorted(ALL_GTZAN)
    folds = stratified_kfold(keys, _labels(keys), 10, seed=4021)
    split = cv_fold(folds, 3)
    assert (len(split.train), len(split.valid), len(split.test)) == (800, 100, 100)
    assert Counter(map(genre, split.test)) == {g: 10 for g in GTZAN_GENRES}


# --------------------------------------------------------------------------- resolution


def test_resolve_split_maps_keys_to_tracks_in_list_order():
    index = fake_index(["a/1", "a/2", "b/1", "b/2", "c/1"])
    resolved = resolve_split(Split(["b/2", "a/1"], ["a/2"], ["c/1", "b/1"]), index)
    assert [t.key for t in resolved.train] == ["b/2", "a/1"]
    assert [t.path for t in resolved.test] == ["/data/c/1.wav", "/data/b/1.wav"]
    assert resolved.n_missing == 0 and resolved.report()["missing"] == {}
    assert [t.key for t in resolve_split(["c/1", "a/2"], index).parts["keys"]] == ["c/1", "a/2"]
    with pytest.raises(TypeError):
        resolve_split("a/1", index)


def test_missing_keys_are_an_error_listing_them():
    present = [f"{g}/{g}.{n:05d}" for g in ("blues", "rock") for n in range(5)]
    index = fake_index(present)
    split = Split(
        [f"blues/blues.{n:05d}" for n in range(30)], [f"rock/rock.{n:05d}" for n in range(3)], ["jazz/jazz.00054"]
    )
    with pytest.raises(SplitError) as info:
        resolve_split(split, index)
    message = str(info.value)
    assert "26 split keys are not in the dataset" in message
    assert "train 25, test 1" in message
    assert "per class: {'blues': 25, 'jazz': 1}" in message
    assert "blues/blues.00005" in message and "blues/blues.00024" in message  # the first 20 ...
    assert "blues/blues.00025" not in message and "(+6 more)" in message  # ... and how many more
    assert "allow_missing=True" in message

    resolved = resolve_split(split, index, allow_missing=True)
    assert [t.key for t in resolved.train] == [f"blues/blues.{n:05d}" for n in range(5)]
    assert len(resolved.valid) == 3 and resolved.test == ()
    assert resolved.n_missing == 26
    assert resolved.missing["test"] == ("jazz/jazz.00054",) and resolved.missing["valid"] == ()
    report = resolved.report()
    json.dumps(report)
    assert report["parts"]["train"] == {"n": 5, "counts": {"blues": 5}}
    assert report["missing"]["train"][0] == "blues/blues.00005" and "valid" not in report["missing"]


def test_missing_key_of_a_corrupt_file_says_why(tmp_path, shared_data):
    """GTZAN's jazz.00054 is corrupt in common copies: the fold error must say it was skipped and why."""
    base = tmp_path / "genres_original"
    base.mkdir()
    for g in GTZAN_GENRES:
        (base / g).mkdir()
        for clip in sorted((shared_data / "gtzan-mini" / g).glob("*.wav"))[:2]:
            (base / g / clip.name).symlink_to(clip)
    (base / "jazz" / "jazz.00054.wav").write_bytes(b"\x00" * 1000)
    with pytest.warns(DatasetWarning):
        index = validate_tracks(discover(tmp_path), max_skip_fraction=0.1)
    fold = next(k for k, f in enumerate(paper_folds(), start=1) if "jazz/jazz.00054" in f)
    with pytest.raises(SplitError) as info:
        resolve_split({"test": paper_folds()[fold - 1]}, index)
    message = str(info.value)
    assert "99 split keys" in message and "(1 of them found but skipped as unusable)" in message
    assert "keys: jazz/jazz.00054 (skipped: not a recognised audio file" in message  # listed first


def test_gtzan_mini_resolves_against_the_paper_folds(shared_data):
    index = discover(shared_data / "gtzan-mini")
    folds = paper_folds()
    for k in (1, 5, 10):
        split = cv_fold(folds, k)
        resolved = resolve_split(split, index, allow_missing=True)
        assert sum(len(p) for p in resolved.parts.values()) == 100  # every mini clip is in some part
        assert resolved.n_missing == 900
        for part, tracks in resolved.parts.items():
            assert {t.key for t in tracks} == set(getattr(split, part)) & set(index.by_key)
            assert not set(resolved.missing[part]) & set(index.by_key)
    with pytest.raises(SplitError, match="900 split keys"):
        resolve_split(cv_fold(folds, 1), index)
    ff = resolve_split(fault_filtered(), index, allow_missing=True)
    assert 0 < sum(len(p) for p in ff.parts.values()) <= 100 and ff.n_missing >= 830
