"""Fuzzing the readers: random and mutated bytes, recipes, split lists and Melon metadata.

Each reader has one documented error type; nothing else may come out of it, whatever the
input: audio and mel files -> AudioError (MelonError is one), recipes -> RecipeError,
split lists -> SplitError, song_meta.json -> DatasetError. Audio inputs are mostly
*mutations* of real files of every format (cut, bytes overwritten, header fields
rewritten), since purely random bytes rarely get past the format probe. Example counts
are bounded so the whole module runs in well under 30 s; the regressions for what the
fuzzer found are plain tests at the end, each naming the input.
"""

from __future__ import annotations

import io
import json
import struct
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from keras_mgc.audio import AudioError, TruncatedAudioWarning, audio_info, check_audio, load_audio, stream_audio
from keras_mgc.config import RecipeError, apply_overrides, load_recipe, parse_recipe
from keras_mgc.data.datasets import DatasetError, DatasetWarning, MelonError, discover_melon, load_melon_mel
from keras_mgc.data.splits import SplitError, parse_split_list

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=True, database=None)
FUZZ_FILES = settings(FUZZ, max_examples=1000)  # decoding a tiny file takes about a millisecond


def _seed_files() -> dict[str, bytes]:
    """Small valid files of every format the toolkit reads, as bytes (made once)."""
    rng = np.random.default_rng(5)
    x = (0.3 * rng.standard_normal((2000, 2))).astype(np.float32)
    made = {}
    for name, fmt, subtype, rate in [
        ("pcm16.wav", "WAV", "PCM_16", 22050), ("float.wav", "WAV", "FLOAT", 44100), ("u8.wav", "WAV", "PCM_U8", 8000),
        ("pcm24.au", "AU", "PCM_24", 22050), ("pcm16.aiff", "AIFF", "PCM_16", 48000), ("pcm16.flac", "FLAC", "PCM_16", 22050),
        ("vorbis.ogg", "OGG", "VORBIS", 22050), ("layer3.mp3", "MP3", "MPEG_LAYER_III", 22050),
    ]:
        buf = io.BytesIO()
        sf.write(buf, x, rate, format=fmt, subtype=subtype)
        made[name] = buf.getvalue()
    return made


SEEDS = _seed_files()
EXTENSIONS = [".wav", ".au", ".mp3", ".flac", ".ogg", ".aiff"]


@st.composite
def mutated_audio(draw) -> tuple[str, bytes]:
    """(extension, content): a real file cut, overwritten in places, or random bytes."""
    kind = draw(st.sampled_from(["random", "cut", "overwrite", "header_field", "cut_and_overwrite"]))
    ext = draw(st.sampled_from(EXTENSIONS))
    if kind == "random":
        return ext, draw(st.binary(min_size=0, max_size=3000))
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[name])
    if draw(st.booleans()):
        ext = Path(name).suffix  # usually keep the real extension
    if kind in ("cut", "cut_and_overwrite"):
        data = data[: draw(st.integers(0, len(data)))]
    if kind in ("overwrite", "cut_and_overwrite") and data:
        for _ in range(draw(st.integers(1, 8))):
            pos = draw(st.integers(0, min(len(data) - 1, 200)))  # mostly inside the header
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[pos : pos + len(chunk)] = chunk
    if kind == "header_field" and len(data) >= 44:
        # Rewrite one 16/32-bit field of the first 64 bytes with an extreme value
        # (channels, rate, sizes, bits per sample ...).
        pos = draw(st.integers(0, 60))
        value = draw(st.sampled_from([0, 1, 2, 7, 255, 1023, 65535, 2**31 - 1, 2**32 - 1]))
        width = draw(st.sampled_from([2, 4]))
        order = draw(st.sampled_from(["<", ">"]))
        data[pos : pos + width] = struct.pack(order + ("H" if width == 2 else "I"), value % (1 << (8 * width)))
    return ext, bytes(data)


def _only_audio_errors(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncatedAudioWarning)
        for read in (lambda: load_audio(path), lambda: check_audio(path, decode=True),
                     lambda: check_audio(path, decode=False), lambda: audio_info(path),
                     lambda: sum(len(b) for b in stream_audio(path, block_seconds=0.05))):
            try:
                read()
            except AudioError:
                pass


@FUZZ_FILES
@given(mutated_audio())
@example((".wav", b""))
@example((".wav", b"RIFF"))
@example((".au", b".snd"))
def test_audio_readers_raise_only_audio_error(case):
    ext, content = case
    with tempfile.TemporaryDirectory() as d:
        path = Path(d, "fuzz" + ext)
        path.write_bytes(content)
        _only_audio_errors(path)


# --------------------------------------------------------------------------- Melon mels


@st.composite
def mutated_npy(draw) -> bytes:
    """A .npy file: random bytes, a real array cut or overwritten, or a forged header."""
    kind = draw(st.sampled_from(["random", "array", "cut", "header"]))
    if kind == "random":
        return draw(st.binary(max_size=600))
    if kind == "header":
        # Valid magic and version, then a header text the fuzzer writes: shapes, dtypes,
        # orders, or garbage.
        shape = draw(st.lists(st.integers(-3, 2**40), max_size=3))
        descr = draw(st.sampled_from(["<f4", "<f2", ">f8", "<i2", "|b1", "<c8", "|O", "<U3", "V8", "zz", "<f4"]))
        text = draw(st.sampled_from([
            f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple(shape)}, }}",
            f"{{'descr': '{descr}', 'fortran_order': True, 'shape': ({shape[0] if shape else 48}, 2), }}",
            draw(st.text(max_size=60)),
        ]))
        header = text.encode("utf-8", "replace")
        header += b" " * (-(len(header) + 11) % 64) + b"\n"
        body = draw(st.binary(max_size=400))
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + body
    dtype = draw(st.sampled_from(["float32", "float16", "float64", "int16", "bool", "complex64"]))
    shape = draw(st.sampled_from([(48, 5), (5, 48), (48,), (48, 0), (1, 48, 3), (40, 5)]))
    buf = io.BytesIO()
    array = np.zeros(shape, dtype=dtype)
    if dtype.startswith("float") and array.size and draw(st.booleans()):
        with np.errstate(over="ignore"):
            array.flat[draw(st.integers(0, array.size - 1))] = draw(st.sampled_from([np.nan, np.inf, 1e300]))
    np.save(buf, array)
    data = bytearray(buf.getvalue())
    if kind == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@FUZZ_FILES
@given(mutated_npy())
def test_melon_mel_reader_raises_only_melon_error(content):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d, "123.npy")
        path.write_bytes(content)
        try:
            mel = load_melon_mel(path)
        except MelonError:
            return
        assert mel.ndim == 2 and mel.shape[1] == 48 and mel.dtype == np.float32 and np.isfinite(mel).all()


# --------------------------------------------------------------------------- recipes

VALID = {
    "name": "fuzz", "seed": 1,
    "data": {"dataset": "synthetic", "split": "kfold", "n_folds": 3, "folds": [1], "data_cycle": 2},
    "model": {"channels": 16, "ccs": {"stop": 8}, "res2_scale": 2, "fsa": {"enabled": False, "bands": [[0, 18]]}},
    "train": {"epochs": 2, "batch_size": 4, "optimizer": {"learning_rate": 0.001}, "schedule": {"name": "cosine"}},
    "eval": {"modes": ["whole"], "headline": "whole"},
}
KEYS = ["name", "seed", "data", "model", "train", "eval", "dataset", "root", "split", "split_dir", "folds", "epochs",
        "batch_size", "channels", "ccs", "stop", "fsa", "bands", "enabled", "modes", "headline", "optimizer",
        "learning_rate", "max_skip_fraction", "cache", "extends", "n_folds", "frontend", "n_mels", "", "é ü", "a.b"]

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12) | st.sampled_from(["all", "lists", "melon", "whole", "tta", "-1", "1e400", "/", "\x00"]))
documents = st.recursive(scalars, lambda children: st.lists(children, max_size=4)
                         | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), children, max_size=5),
                         max_leaves=25)


def _paths(node, prefix=()):
    """Every key path of a nested mapping."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield prefix + (key,)
            yield from _paths(value, prefix + (key,))


@st.composite
def mutated_recipe(draw) -> dict:
    """The valid recipe with keys dropped, values replaced by random documents, keys added."""
    doc = json.loads(json.dumps(VALID))
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_paths(doc))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["drop", "replace", "add"]))
        if action == "drop":
            parent.pop(path[-1], None)
        elif action == "replace":
            parent[path[-1]] = draw(documents)
        else:
            parent[draw(st.sampled_from(KEYS) | st.text(max_size=8))] = draw(documents)
    return doc


override_strings = st.lists(
    st.one_of(
        st.text(max_size=30),
        st.builds(lambda k, v: f"{k}={v}", st.sampled_from(["train.epochs", "model.ccs.stop", "data.root", "name",
                                                            "data", "a..b", ".x", "train.epochs.x", "eval.modes"]),
                  st.text(max_size=20) | st.sampled_from(["[1, 2", "{a: 1}", "!!python/object:os.system x", "-3",
                                                          "1e999", "~", "&a [*a]", "'\x00'"])),
    ),
    max_size=4,
)


@FUZZ
@given(st.one_of(documents, mutated_recipe()), override_strings)
def test_parse_recipe_raises_only_recipe_error(document, overrides):
    try:
        parse_recipe(document, "fuzz.yaml", overrides)
    except RecipeError as exc:
        assert str(exc)


@FUZZ
@given(documents | mutated_recipe(), override_strings)
def test_apply_overrides_raises_only_recipe_error(document, overrides):
    if not isinstance(document, dict):
        document = {"x": document}
    try:
        apply_overrides(document, overrides)
    except RecipeError:
        pass


@FUZZ
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
                 mutated_recipe().map(yaml.safe_dump), documents.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
                 st.sampled_from(["extends: ''\nname: x\n", "extends: /\n", "extends: [1]\n", "extends: 'a\x00b'\n",
                                  "extends: " + "x" * 5000 + "\n", "!!binary AAAA\n", "a: &a [*a]\n"])))
def test_load_recipe_raises_only_recipe_error(text):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d, "fuzz.yaml")
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        try:
            load_recipe(path)
        except RecipeError:
            pass


# --------------------------------------------------------------------------- split lists and song_meta.json

entry = st.one_of(st.text(max_size=40), st.sampled_from(["", "#", "  ", "./", "genres/", "a/genres_original/b/c.wav",
                                                          "arena_mel/", "x\\y.au", "blues/blues.00001.mp3", "\x00"]))


@FUZZ
@given(st.lists(entry, max_size=30), st.sampled_from(["\n", "\r\n", "\r", "\x0b", "\u2028"]))
def test_parse_split_list_raises_only_split_error(lines, sep):
    try:
        keys = parse_split_list(sep.join(lines), "fuzz.txt")
    except SplitError:
        return
    assert len(keys) == len(set(keys)) and all(keys)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["id", "song_gn_gnr_basket", "song_name"]) | st.text(max_size=5), children, max_size=4),
    max_leaves=20,
)
songs = st.lists(st.fixed_dictionaries({"id": json_values | st.integers(0, 5) | st.text(max_size=3),
                                        "song_gn_gnr_basket": json_values | st.lists(st.sampled_from(["GN0100", "GN0200", ""]), max_size=3)}),
                 max_size=6)


@FUZZ
@given(st.one_of(songs.map(json.dumps), json_values.map(json.dumps), st.text(max_size=200),
                 st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                 st.sampled_from(["[" * 5000 + "]" * 5000, "[NaN]", '[{"id": 1e999, "song_gn_gnr_basket": []}]'])))
def test_discover_melon_raises_only_dataset_error(meta):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        for sid in range(3):
            (root / "arena_mel" / "0").mkdir(parents=True, exist_ok=True)
            np.save(root / "arena_mel" / "0" / f"{sid}.npy", np.zeros((48, 4), np.float16))
        (root / "song_meta.json").write_bytes(meta.encode("utf-8", "surrogatepass"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DatasetWarning)
            try:
                index = discover_melon(root)
            except DatasetError:
                return
        assert len(index) >= 1


# --------------------------------------------------------------------------- regressions


def test_regression_a_header_with_a_1_hz_sample_rate_is_rejected_not_resampled_to_gigabytes(tmp_path):
    path = tmp_path / "one_hz.wav"
    sf.write(path, np.zeros(100_000, np.float32), 1, subtype="FLOAT")  # soxr would make 2.2e9 samples
    with pytest.raises(AudioError, match="implausible sample rate 1 Hz"):
        load_audio(path)
    with pytest.raises(AudioError, match="implausible sample rate"):
        check_audio(path, decode=False)


def test_regression_data_root_too_long_for_the_file_system_is_a_recipe_error():
    with pytest.raises(RecipeError, match="data.root: not a usable path"):
        parse_recipe({"name": "x", "data": {"dataset": "folder", "root": "a" * 5000}})


def test_regression_a_forged_npy_header_is_an_error_not_a_23_gib_allocation(tmp_path):
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (79387, 79599), }"
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    path = tmp_path / "forged.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header)
    with pytest.raises(MelonError, match="not a readable .npy array"):
        load_melon_mel(path)


def test_regression_an_npy_header_numpy_cannot_tokenize_is_a_melon_error(tmp_path):
    path = tmp_path / "bad_header.npy"
    header = b")" + b" " * 52 + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header)
    with pytest.raises(MelonError, match="TokenError"):
        load_melon_mel(path)


def test_regression_song_meta_nested_too_deep_or_with_a_huge_number_is_a_dataset_error(tmp_path):
    (tmp_path / "arena_mel").mkdir()
    for content in ["[" * 100_000 + "]" * 100_000, "[" + "9" * 5000 + "]"]:
        (tmp_path / "song_meta.json").write_text(content)
        with pytest.raises(DatasetError, match="not usable JSON"):
            discover_melon(tmp_path)


def test_regression_an_unknown_key_named_like_a_type_is_reported_by_name():
    """pydantic's union tags ('none', 'int', ...) were stripped from the key path, and an
    unknown key called 'none' then raised IndexError instead of a RecipeError."""
    for key in ("none", "int", "str"):
        with pytest.raises(RecipeError, match=rf"  {key}: unknown key"):
            parse_recipe({**VALID, key: None})
