"""Tests of keras_mgc.data.datasets: layouts, keys, skipped files, validation, Melon."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from keras_mgc.audio import load_audio
from keras_mgc.data.datasets import (
    GTZAN_GENRES,
    MELON_MEL_BINS,
    DatasetError,
    DatasetIndex,
    DatasetWarning,
    MelonError,
    Track,
    discover,
    discover_melon,
    load_melon_mel,
    validate_tracks,
)

GTZAN_KEY = re.compile(r"^(?P<genre>[a-z]+)/(?P=genre)\.\d{5}$")
RNG = np.random.default_rng(99)


def tone(path: Path, seconds: float = 0.2, rate: int = 22050, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, RNG.uniform(-0.5, 0.5, int(rate * seconds)).astype(np.float32), rate, **kw)
    return path


def junk(path: Path, content: bytes = b"not audio at all\n" * 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


# --------------------------------------------------------------------------- GTZAN layouts


@pytest.fixture
def gtzan_wav(tmp_path, shared_data) -> Path:
    """The Kaggle layout (genres_original/<genre>/*.wav), symlinked to the real gtzan-mini clips."""
    base = tmp_path / "Data" / "genres_original"
    base.mkdir(parents=True)
    for genre in GTZAN_GENRES:
        (base / genre).symlink_to(shared_data / "gtzan-mini" / genre, target_is_directory=True)
    return tmp_path / "Data"


@pytest.fixture
def gtzan_au(tmp_path, shared_data) -> Path:
    """The original layout (genres/<genre>/*.au), real clips converted to 16-bit AU."""
    root = tmp_path / "gtzan"
    for genre in ("blues", "jazz", "rock"):
        for n in range(3):
            name = f"{genre}.{n:05d}"
            data, rate = sf.read(shared_data / "gtzan-mini" / genre / f"{name}.wav", dtype="int16")
            out = root / "genres" / genre / f"{name}.au"
            out.parent.mkdir(parents=True, exist_ok=True)
            sf.write(out, data, rate, format="AU", subtype="PCM_16")
    # The original tarball also holds Marsyas collection files beside the genre folders.
    (root / "genres" / "input.mf").write_text("blues/blues.00000.au\tblues\n")
    (root / "genres" / "bextract_single.mf").write_text("")
    return root


def test_kaggle_layout_from_any_level(gtzan_wav):
    indexes = [discover(gtzan_wav), discover(gtzan_wav / "genres_original"), discover(gtzan_wav.parent)]
    # tmp_path itself is not a GTZAN folder: it holds Data/, which holds genres_original/.
    for index in indexes[:2]:
        assert index.layout == "gtzan"
        assert index.root == str(gtzan_wav / "genres_original")
        assert index.class_names == GTZAN_GENRES
        assert index.counts == {g: 10 for g in GTZAN_GENRES}
        assert len(index) == 100 and index.skipped == ()
        assert all(GTZAN_KEY.match(t.key) and t.key.startswith(t.label + "/") for t in index.tracks)
        assert all(os.path.isabs(t.path) and os.path.isfile(t.path) for t in index.tracks)
    assert indexes[0].tracks == indexes[1].tracks
    assert indexes[0].by_key["jazz/jazz.00007"].path == str(gtzan_wav / "genres_original" / "jazz" / "jazz.00007.wav")
    assert indexes[2].root == str(gtzan_wav / "genres_original")


def test_plain_gtzan_genre_tree_is_recognised(shared_data):
    index = discover(shared_data / "gtzan-mini")
    assert index.layout == "gtzan" and len(index) == 100 and index.class_names == GTZAN_GENRES
    assert {t.key for t in index.tracks} == {f"{g}/{g}.{n:05d}" for g in GTZAN_GENRES for n in range(10)}


def test_original_au_layout_matches_wav_keys(gtzan_au, gtzan_wav):
    au = discover(gtzan_au)
    assert discover(gtzan_au / "genres").tracks == au.tracks
    assert au.layout == "gtzan" and au.class_names == ("blues", "jazz", "rock")
    assert au.counts == {"blues": 3, "jazz": 3, "rock": 3} and au.skipped == ()
    wav = discover(gtzan_wav)
    for track in au.tracks:
        assert track.path.endswith(".au")
        twin = wav.by_key[track.key]  # same key as the .wav copy
        np.testing.assert_array_equal(load_audio(track.path), load_audio(twin.path))


def test_two_gtzan_copies_in_one_root_is_ambiguous(tmp_path):
    tone(tmp_path / "genres" / "blues" / "blues.00000.au", format="AU")
    tone(tmp_path / "genres_original" / "blues" / "blues.00000.wav")
    with pytest.raises(DatasetError, match="several GTZAN copies"):
        discover(tmp_path)
    assert len(discover(tmp_path / "genres")) == 1


# --------------------------------------------------------------------------- folder layout


def test_folder_per_class_layout(tmp_path):
    root = tmp_path / "data"
    tone(root / "cats" / "a.wav")
    tone(root / "cats" / "sub" / "deeper" / "b.flac", format="FLAC")
    tone(root / "dogs" / "c.ogg", format="OGG")
    tone(root / "dogs" / ".hidden.wav")  # hidden (e.g. macOS "._" files): ignored
    tone(root / ".cache" / "x.wav")  # hidden folder: not a class
    junk(root / "dogs" / "notes.txt")  # not audio: ignored silently
    junk(root / "empty" / "readme.md")  # no audio: dropped with a record
    tone(root / "stray.wav")  # audio outside any class folder: recorded
    junk(root / "README.md")
    with pytest.warns(DatasetWarning, match="2 entries"):
        index = discover(root)
    assert index.layout == "folder"
    assert index.class_names == ("cats", "dogs")
    assert [t.key for t in index.tracks] == ["cats/a", "cats/sub/deeper/b", "dogs/c"]
    assert [t.label for t in index.tracks] == ["cats", "cats", "dogs"]
    assert index.counts == {"cats": 2, "dogs": 1}
    reasons = {Path(s["path"]).name: s["reason"] for s in index.skipped}
    assert set(reasons) == {"empty", "stray.wav"}
    assert "no audio" in reasons["empty"] and "outside any class folder" in reasons["stray.wav"]
    json.dumps(index.report())  # the record is JSON-ready


def test_class_names_are_sorted_folder_names(tmp_path):
    for name in ("zebra", "Apple", "mango", "10_numbers"):
        tone(tmp_path / name / "x.wav")
    index = discover(tmp_path)
    assert index.class_names == ("10_numbers", "Apple", "mango", "zebra")
    assert [index.label_id(n) for n in index.class_names] == [0, 1, 2, 3]
    assert index.label_ids().tolist() == [0, 1, 2, 3]
    with pytest.raises(DatasetError, match="unknown class 'pear'"):
        index.label_id("pear")


def test_same_key_twice_keeps_the_first_and_records_the_other(tmp_path):
    tone(tmp_path / "rock" / "rock.00001.au", format="AU")
    tone(tmp_path / "rock" / "rock.00001.wav")
    tone(tmp_path / "rock" / "rock.00002.wav")
    with pytest.warns(DatasetWarning):
        index = discover(tmp_path)
    assert [t.key for t in index.tracks] == ["rock/rock.00001", "rock/rock.00002"]
    assert index.by_key["rock/rock.00001"].path.endswith(".au")
    (entry,) = index.skipped
    assert entry["path"].endswith("rock.00001.wav") and entry["key"] == "rock/rock.00001"
    assert "duplicate key" in entry["reason"]


def test_non_ascii_and_spaces_in_names(tmp_path):
    tone(tmp_path / "música popular" / "canción número 1.wav")
    tone(tmp_path / "日本" / "曲 2.flac", format="FLAC")
    index = discover(tmp_path)
    assert index.class_names == ("música popular", "日本")
    assert [t.key for t in index.tracks] == ["música popular/canción número 1", "日本/曲 2"]
    assert all(len(load_audio(t.path)) == 4410 for t in index.tracks)


def test_symlink_loops_do_not_duplicate_tracks(tmp_path):
    tone(tmp_path / "cats" / "a.wav")
    (tmp_path / "cats" / "again").symlink_to(tmp_path / "cats", target_is_directory=True)
    assert [t.key for t in discover(tmp_path).tracks] == ["cats/a"]


def test_bad_roots(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        discover(tmp_path / "nowhere")
    junk(tmp_path / "file.wav")
    with pytest.raises(DatasetError, match="not a folder"):
        discover(tmp_path / "file.wav")
    junk(tmp_path / "empty_root" / "a" / "notes.txt")
    with pytest.raises(DatasetError, match="no audio files"):
        discover(tmp_path / "empty_root")


def test_index_rejects_inconsistent_contents():
    t = Track("/x/a.wav", "a", "a/a")
    with pytest.raises(DatasetError, match="not classes"):
        DatasetIndex("", "tracks", (t,), ("b",))
    with pytest.raises(DatasetError, match="duplicate track keys"):
        DatasetIndex("", "tracks", (t, Track("/x/b.wav", "a", "a/a")), ("a",))
    with pytest.raises(DatasetError, match="sorted"):
        DatasetIndex("", "tracks", (t,), ("b", "a"))


# --------------------------------------------------------------------------- validation


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    """Two classes with 10 good files each, and some bad ones among them."""
    for label in ("pop", "rock"):
        for n in range(10):
            tone(tmp_path / label / f"{label}.{n:05d}.wav")
    x = RNG.uniform(-0.5, 0.5, 4410).astype(np.float32)
    x[100] = np.nan
    sf.write(tmp_path / "pop" / "pop.00010.wav", x, 22050, subtype="FLOAT")  # NaN inside
    junk(tmp_path / "rock" / "rock.00010.wav")  # text named .wav
    (tmp_path / "rock" / "rock.00011.wav").touch()  # zero bytes
    return tmp_path


def test_validate_moves_corrupt_files_to_skipped(mixed_folder):
    index = discover(mixed_folder)
    assert len(index) == 23
    with pytest.warns(DatasetWarning, match="skipped unusable 3"):
        valid = validate_tracks(index, max_skip_fraction=0.2)
    assert len(valid) == 20 and valid.class_names == index.class_names
    assert valid.counts == {"pop": 10, "rock": 10}
    reasons = {s["key"]: s["reason"] for s in valid.skipped}
    assert set(reasons) == {"pop/pop.00010", "rock/rock.00010", "rock/rock.00011"}
    assert "non-finite" in reasons["pop/pop.00010"]
    assert "not a recognised audio file" in reasons["rock/rock.00010"]
    assert "empty file" in reasons["rock/rock.00011"]
    assert all(s["path"].startswith(str(mixed_folder)) for s in valid.skipped)
    json.dumps(valid.report())


def test_validate_header_only_misses_what_only_decoding_finds(mixed_folder):
    with pytest.warns(DatasetWarning):
        cheap = validate_tracks(discover(mixed_folder), max_skip_fraction=0.2, decode=False, workers=1)
    assert {s["key"] for s in cheap.skipped} == {"rock/rock.00010", "rock/rock.00011"}  # not the NaN file


def test_validate_raises_above_the_skip_fraction(mixed_folder):
    with pytest.raises(DatasetError) as info:
        validate_tracks(discover(mixed_folder), max_skip_fraction=0.05)
    message = str(info.value)
    assert "3 of 23 files" in message and "max_skip_fraction=0.05" in message
    assert "pop.00010.wav: non-finite" in message and "rock.00011.wav: empty file" in message


def test_validate_raises_when_a_class_loses_every_track(tmp_path):
    tone(tmp_path / "good" / "a.wav")
    junk(tmp_path / "bad" / "b.wav")
    with pytest.raises(DatasetError, match=r"class\(es\) \['bad'\]"):
        validate_tracks(discover(tmp_path), max_skip_fraction=1.0)


def test_validate_truncated_files_kept_and_flagged_or_skipped(tmp_path):
    for n in range(4):
        tone(tmp_path / "a" / f"{n}.wav", seconds=0.5)
    full = (tmp_path / "a" / "3.wav").read_bytes()
    (tmp_path / "a" / "3.wav").write_bytes(full[: len(full) // 2])
    index = discover(tmp_path)
    kept = validate_tracks(index)
    assert len(kept) == 4 and kept.skipped == ()
    assert [f["key"] for f in kept.flagged] == ["a/3"] and "truncated" in kept.flagged[0]["reason"]
    with pytest.warns(DatasetWarning):
        strict = validate_tracks(index, allow_truncated=False, max_skip_fraction=0.5)
    assert len(strict) == 3 and [s["key"] for s in strict.skipped] == ["a/3"] and strict.flagged == ()


def test_validate_accepts_a_track_list(tmp_path):
    good = Track(str(tone(tmp_path / "x.wav")), "x", "x/x")
    bad = Track(str(junk(tmp_path / "y.wav")), "y", "y/y")
    with pytest.warns(DatasetWarning):
        index = validate_tracks([good, bad, Track(str(tone(tmp_path / "z.wav")), "y", "y/z")], max_skip_fraction=0.5)
    assert index.tracks == (good, Track(str(tmp_path / "z.wav"), "y", "y/z"))
    assert index.class_names == ("x", "y") and index.skipped[0]["key"] == "y/y"
    with pytest.raises(ValueError, match="max_skip_fraction"):
        validate_tracks([good], max_skip_fraction=1.5)


def test_real_gtzan_clips_all_validate(gtzan_wav):
    index = validate_tracks(discover(gtzan_wav), max_skip_fraction=0.0)
    assert len(index) == 100 and index.skipped == () and index.flagged == ()


# --------------------------------------------------------------------------- Melon


def _save_mel(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)
    return path


@pytest.fixture
def melon(tmp_path) -> Path:
    """A small Melon tree: arena_mel/<id // 1000>/<id>.npy and song_meta.json."""
    root = tmp_path / "melon"
    songs = []
    plan = {  # id: genres basket
        0: ["GN0100"], 1: ["GN0200"], 2: ["GN0100", "GN0200"], 3: [], 4: ["GN0300"],
        1000: ["GN0200"], 1001: ["GN0200", "GN0200"], 1002: ["GN0900"],  # 1002 has no mel file
    }
    for sid, basket in plan.items():
        songs.append({"id": sid, "song_name": f"song {sid}", "song_gn_gnr_basket": basket})
        if sid != 1002:
            _save_mel(root / "arena_mel" / str(sid // 1000) / f"{sid}.npy", RNG.normal(size=(48, 20 + sid % 7)).astype(np.float16))
    _save_mel(root / "arena_mel" / "5" / "5555.npy", np.zeros((48, 5), np.float16))  # no metadata
    (root / "song_meta.json").write_text(json.dumps(songs))
    return root


def test_discover_melon_keeps_single_genre_songs(melon):
    with pytest.warns(DatasetWarning, match="1 entries"):
        index = discover_melon(melon)
    assert index.layout == "melon"
    assert [(t.key, t.label) for t in index.tracks] == [
        ("0", "GN0100"), ("1", "GN0200"), ("4", "GN0300"), ("1000", "GN0200"), ("1001", "GN0200"),
    ]  # 1001 lists GN0200 twice: one distinct genre
    assert index.class_names == ("GN0100", "GN0200", "GN0300")
    assert index.counts == {"GN0100": 1, "GN0200": 3, "GN0300": 1}
    (missing,) = index.skipped
    assert missing["key"] == "1002" and missing["label"] == "GN0900" and "not found" in missing["reason"]
    assert index.stats["several genres"] == 1 and index.stats["no genre"] == 1
    assert index.stats["mel files without metadata"] == 1 and index.stats["songs"] == 8
    assert index.by_key["1000"].path == str(melon / "arena_mel" / "1" / "1000.npy")


def test_load_melon_mel_is_time_major_float32(melon):
    path = melon / "arena_mel" / "0" / "4.npy"
    raw = np.load(path)
    mel = load_melon_mel(path)
    assert raw.shape == (MELON_MEL_BINS, 24) and raw.dtype == np.float16
    assert mel.shape == (24, MELON_MEL_BINS) and mel.dtype == np.float32 and mel.flags.c_contiguous
    np.testing.assert_array_equal(mel, raw.T.astype(np.float32))


BAD_MELS = {
    "1-D": (np.zeros(48, np.float32), "shape (48,)"),
    "3-D": (np.zeros((1, 48, 10), np.float32), "shape (1, 48, 10)"),
    "wrong bins": (np.zeros((64, 10), np.float32), "expected (48, T)"),
    "transposed": (np.zeros((10, 48), np.float32), "time-major?"),
    "no frames": (np.zeros((48, 0), np.float32), "no frames"),
    "int dtype": (np.zeros((48, 10), np.int16), "dtype int16"),
    "bool dtype": (np.zeros((48, 10), bool), "dtype bool"),
    "string dtype": (np.full((48, 10), "x"), "dtype <U1"),
    "complex dtype": (np.zeros((48, 10), np.complex64), "dtype complex64"),
    "NaN": (np.where(np.eye(48, 10) > 0, np.nan, 0.0).astype(np.float32), "10 non-finite"),
    "Inf": (np.full((48, 10), np.inf, np.float16), "480 non-finite"),
    "float64 overflow": (np.full((48, 10), 1e300), "non-finite"),
}


@pytest.mark.parametrize("case", list(BAD_MELS))
def test_load_melon_mel_rejects_bad_arrays(tmp_path, case):
    array, fragment = BAD_MELS[case]
    path = _save_mel(tmp_path / "bad.npy", array)
    with pytest.raises(MelonError) as info:
        load_melon_mel(path)
    assert info.value.path == str(path) and fragment in info.value.reason, info.value.reason


@pytest.mark.parametrize(
    "name,make,fragment",
    [
        ("missing.npy", None, "file not found"),
        ("empty.npy", b"", "empty file"),
        ("random.npy", RNG.bytes(500), "not a readable .npy"),
        ("cut.npy", "cut", "not a readable .npy"),
        ("archive.npy", "npz", ".npz archive"),
    ],
)
def test_load_melon_mel_rejects_bad_files(tmp_path, name, make, fragment):
    path = tmp_path / name
    if make == "cut":
        full = _save_mel(tmp_path / "full.npy", np.zeros((48, 100), np.float32)).read_bytes()
        path.write_bytes(full[:300])
    elif make == "npz":
        with open(path, "wb") as f:
            np.savez(f, mel=np.zeros((48, 3), np.float32))
    elif make is not None:
        path.write_bytes(make)
    with pytest.raises(MelonError, match=re.escape(fragment)):
        load_melon_mel(path)


def test_validate_melon_tracks(melon):
    with pytest.warns(DatasetWarning):
        index = discover_melon(melon)
    good = np.load(index.by_key["1000"].path)
    _save_mel(Path(index.by_key["1000"].path), np.where(good == good.max(), np.nan, good))  # NaN: found by decoding
    _save_mel(Path(index.by_key["1"].path), good.T)  # wrong shape: found from the header
    with pytest.warns(DatasetWarning):
        full = validate_tracks(index, max_skip_fraction=0.5, decode=True)
        header = validate_tracks(index, max_skip_fraction=0.5, decode=False)
    assert {s["key"] for s in full.skipped} == {"1002", "1000", "1"}
    assert {s["key"] for s in header.skipped} == {"1002", "1"}
    assert "non-finite" in next(s["reason"] for s in full.skipped if s["key"] == "1000")
    assert full.counts == {"GN0100": 1, "GN0200": 1, "GN0300": 1}
    _save_mel(Path(index.by_key["4"].path), good.T)  # GN0300's only song
    with pytest.raises(DatasetError, match=r"every track of class\(es\) \['GN0300'\]"):
        validate_tracks(index, max_skip_fraction=1.0)


@pytest.mark.parametrize(
    "content,fragment",
    [
        (None, "song_meta.json not found"),
        ('[{"id": 0, "song_gn_gnr_basket": ["GN0100"]', "not valid JSON"),
        ('{"id": 0}', "expected a non-empty JSON list"),
        ("[]", "expected a non-empty JSON list"),
        ('[{"id": 0, "song_gn_gnr_basket": ["GN0100"]}, 7]', "entry 1: expected an object"),
        ('[{"song_gn_gnr_basket": ["GN0100"]}]', "entry 0: missing field 'id'"),
        ('[{"id": 0}]', "entry 0: missing field 'song_gn_gnr_basket'"),
        ('[{"id": 0, "song_gn_gnr_basket": "GN0100"}]', "must be a list of genre codes"),
        ('[{"id": 0, "song_gn_gnr_basket": [1]}]', "must be a list of genre codes"),
        ('[{"id": [0], "song_gn_gnr_basket": []}]', "'id' must be an integer or a string"),
        ('[{"id": 0, "song_gn_gnr_basket": []}, {"id": 0, "song_gn_gnr_basket": []}]', "duplicate song id 0"),
    ],
)
def test_bad_song_meta_is_a_clear_error(melon, content, fragment):
    meta = melon / "song_meta.json"
    if content is None:
        meta.unlink()
    else:
        meta.write_text(content)
    with pytest.raises(DatasetError) as info:
        discover_melon(melon)
    assert str(meta) in str(info.value) and fragment in str(info.value), str(info.value)


def test_melon_without_arena_mel_or_usable_songs(melon, tmp_path):
    with pytest.raises(DatasetError, match="arena_mel/ folder not found"):
        discover_melon(tmp_path)
    (melon / "song_meta.json").write_text(json.dumps([{"id": 2, "song_gn_gnr_basket": ["GN0100", "GN0200"]}]))
    with pytest.raises(DatasetError, match="no single-genre song"):
        discover_melon(melon)


def test_audio_file_discovery_is_one_rule_for_datasets_tagger_and_exporter(tmp_path):
    """keras_mgc.audio.find_audio_files: by extension, hidden skipped, links followed once, stable order."""
    import os

    from keras_mgc.audio import find_audio_files

    (tmp_path / "a" / "sub").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for rel in ("a/z.wav", "a/b.FLAC", "a/sub/x.mp3", "a/._z.wav", "a/notes.txt", ".hidden/y.wav"):
        (tmp_path / rel).write_bytes(b"")
    os.symlink(tmp_path / "a", tmp_path / "a" / "sub" / "loop")  # a cycle: followed once, not forever
    os.symlink(tmp_path / "a" / "sub", tmp_path / "linked")
    found = [p.relative_to(tmp_path).as_posix() for p in find_audio_files(tmp_path)]
    assert found == ["a/b.FLAC", "a/z.wav", "a/sub/x.mp3"]
