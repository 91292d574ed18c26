"""On-device genre tagger: a LiteRT (TFLite) model over sliding windows of any audio file.

    python -m keras_mgc.tag SONG... --model model.tflite [--top-k 3] [--window 2.01]
                            [--hop 1.0] [--timeline] [--format text|json|csv]
                            [--output FILE.csv|FILE.json|DIR] [--segments
                            [--min-segment 10] [--hysteresis 0.1]] [--plot FILE.png|DIR]
                            [--threads N] [--batch N]

Runs with only NumPy, soundfile, soxr and ai-edge-litert installed: this module never
imports TensorFlow or Keras (tests/test_tag.py checks ``sys.modules`` after tagging).
A SONG may be a directory: the audio files under it (`keras_mgc.audio.find_audio_files`: by
extension, hidden files skipped, symlinks followed) are tagged in that order.

The model (the exporter's contract)
    A ``.tflite`` file with a signature "serving_default": input "waveform" float32
    [batch, samples] at the metadata's sample rate (both dimensions resizable), outputs
    "probabilities" [batch, n_classes] (softmax applied) and, optionally, "embedding"
    [batch, D]. Beside it ``<stem>.json`` holds "class_names" (label order), "sample_rate"
    and "crop_samples" (the training crop); ``labels.txt`` (one class per line) is the
    fallback for the class names, with the paper's 22,050 Hz and 44,356-sample crop
    (`keras_mgc.contract` defines these names and defaults, and the check); a
    ``--labels FILE`` overrides both. On loading, one window of quiet noise is run to check
    that the model gives finite probabilities that sum to 1 (a model converted with its
    weights left as uninitialised variables returns NaN without any error). A model whose
    input dimensions were exported fixed still works: a fixed batch is filled with silent
    windows (their results dropped), a fixed length is the only window length.

Decoding
    Any file libsndfile reads, through `keras_mgc.audio.stream_audio`: mixed to mono,
    resampled to the model's rate with soxr HQ, and always streamed in blocks of
    `block_seconds` (10 s), so memory stays bounded whatever the file's length (a few
    blocks plus one batch of windows; an hour-long file needs no more than a 30 s one).
    Only one small array per window is kept: its class probabilities.

Windows (the model's front end subtracts each mel bin's mean over its input, so every
window is a separate model input; windows are batched `batch` at a time)
    - Length `window` seconds, default the training crop (crop_samples / sample_rate =
      2.01 s); windows start every `hop` seconds (default 1.0) from 0.
    - Tail: when the regular windows do not reach the end of the song, one more window
      aligned to the end (start = duration - window) is added, so every sample is covered.
      A song of N >= W samples thus gets 1 + ceil((N - W) / H) windows.
    - A hop longer than the window leaves gaps between windows (as asked); the tail rule
      still holds.
    - Shorter than one window: the song is looped (repeated from its start) up to one
      window, and the result carries a note such as "padded: 1.20 s shorter than one
      2.01 s window (looped to fill it)". Looping keeps the per-bin mel means music-like;
      zero padding adds frames at log(1e-6) that pull every bin's mean down (on a 1 s
      GTZAN excerpt: mean log-mel 2.21 looped, -5.76 zero-padded, 2.10 for the real
      2.01 s), an input the model never saw in training.

Whole-song result
    The mean of the window probabilities (so it is itself a distribution). The paper's
    test-time augmentation sums the softmax outputs of 16 crops: the same ranking. The
    embedding, when the model has one, is the mean of the window embeddings.

Output (formats, batch files that resume, segments, label tracks, plots): see
`keras_mgc.tag_output`; the segment algorithm: `keras_mgc.segments`.

Exit codes: 0 every file tagged; 1 some file could not be tagged (one message per file
on stderr naming it and why; the other files are still tagged and printed); 2 usage
error (bad arguments, missing or unusable model, missing metadata); 4 the results could
not be written (no space left where stdout goes).

Python API (with an exported model and a song at hand)::

    tagger = Tagger("model_float32.tflite")
    result = tagger.tag("song.mp3", top_k=3)
    result.top                        # [("rock", 0.61), ("metal", 0.20), ("blues", 0.08)]
    result.window_probabilities.shape  # (windows, n_classes)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import numbers
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from keras_mgc.audio import AUDIO_EXTENSIONS, AudioError, TruncatedAudioWarning, find_audio_files, stream_audio
from keras_mgc.contract import (DEFAULT_CROP_SAMPLES, DEFAULT_SAMPLE_RATE, EMBEDDING, PROBABILITIES, SIGNATURE,
                                WAVEFORM_INPUT, ContractError, check_signatures)
from keras_mgc.io import DISK_FULL_ERRNOS
from keras_mgc.segments import DEFAULT_HYSTERESIS, DEFAULT_MIN_SEGMENT, Segment, segment_windows
from keras_mgc.tag_output import (
    FORMATS,
    Header,
    OutputError,
    Progress,
    ResultWriter,
    Song,
    check_names,
    destination,
    plot_path,
    plot_timeline,
)
from keras_mgc.windows import Windower

__all__ = ["DEFAULT_HOP", "DEFAULT_TOP_K", "DEFAULT_BATCH", "MIN_WINDOW_SECONDS", "BLOCK_SECONDS", "MAX_BATCH_SAMPLES",
           "TaggerError", "ModelMetadata", "load_metadata", "TagResult", "error_dict", "Tagger", "build_parser", "main"]

DEFAULT_HOP = 1.0
DEFAULT_TOP_K = 3
DEFAULT_BATCH = 4  # windows per invoke: batch 8 was <3% faster on #15 here, for +160 MB of RSS
#: Shortest window accepted: the front end needs well over one 256-sample mel hop.
MIN_WINDOW_SECONDS = 0.1
#: Decoding block (seconds at the model's rate): memory is a few of these.
BLOCK_SECONDS = 10.0
#: Cap on one batch's input (samples), so a long `window` cannot multiply memory by `batch`.
MAX_BATCH_SAMPLES = 1 << 22

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_PROG = "keras_mgc.tag"


class TaggerError(ValueError):
    """The model, its metadata or an argument cannot be used (the CLI exits with 2)."""


# --------------------------------------------------------------------------- metadata


@dataclass(frozen=True)
class ModelMetadata:
    """What the tagger needs to know beside the model file."""

    class_names: tuple[str, ...]
    sample_rate: int
    crop_samples: int
    source: str  # which file(s) it came from, for messages

    @property
    def crop_seconds(self) -> float:
        return self.crop_samples / self.sample_rate


def _read_labels(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TaggerError(f"{path}: cannot read labels ({exc})") from exc
    names = [line.strip() for line in text.splitlines()]
    while names and not names[-1]:
        names.pop()
    return names


def _positive_int(meta: dict[str, Any], key: str, path: Path, default: int) -> int:
    value = meta.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise TaggerError(f"{path}: '{key}' must be a positive integer, got {value!r}")
    return value


def load_metadata(model_path: str | os.PathLike[str], labels: str | os.PathLike[str] | None = None) -> ModelMetadata:
    """Class names, sample rate and crop for a model: ``<stem>.json``, then labels.txt.

    `labels` (a file with one class per line) overrides the class names of both.
    """
    model_path = Path(model_path)
    meta_path = model_path.with_suffix(".json")
    labels_path = model_path.parent / "labels.txt"
    meta: dict[str, Any] = {}
    sources = []
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TaggerError(f"{meta_path}: unreadable model metadata ({exc})") from exc
        if not isinstance(meta, dict):
            raise TaggerError(f"{meta_path}: model metadata must be a JSON object")
        sources.append(str(meta_path))
    if labels is not None:
        labels = Path(labels)
        if not labels.is_file():
            raise TaggerError(f"labels file not found: {labels}")
        names, sources = _read_labels(labels), sources + [str(labels)]
    elif "class_names" in meta:
        names = meta["class_names"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise TaggerError(f"{meta_path}: 'class_names' must be a list of strings")
    elif labels_path.is_file():
        names, sources = _read_labels(labels_path), sources + [str(labels_path)]
    else:
        raise TaggerError(
            f"no class names for {model_path}: expected {meta_path.name} (the exporter's metadata, "
            f"with 'class_names') or labels.txt beside the model, or pass --labels FILE"
        )
    source = " + ".join(sources)
    if not names or not all(names):
        raise TaggerError(f"{source}: class names must be non-empty (got {names!r})")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise TaggerError(f"{source}: duplicate class names {duplicates}")
    return ModelMetadata(
        class_names=tuple(names),
        sample_rate=_positive_int(meta, "sample_rate", meta_path, DEFAULT_SAMPLE_RATE),
        crop_samples=_positive_int(meta, "crop_samples", meta_path, DEFAULT_CROP_SAMPLES),
        source=source,
    )


# --------------------------------------------------------------------------- windows


# Windows: keras_mgc.windows (window_starts, Windower).


# --------------------------------------------------------------------------- results


@dataclass
class TagResult:
    """Genres of one song: the whole-song mean and every window's probabilities."""

    source: str  # the file, or "<array>"
    class_names: tuple[str, ...]
    sample_rate: int
    duration: float  # seconds of audio decoded (at the model's rate)
    window: float  # seconds
    hop: float  # seconds
    probabilities: np.ndarray  # (n_classes,) mean of the window probabilities
    window_starts: np.ndarray  # (windows,) seconds
    window_probabilities: np.ndarray  # (windows, n_classes) float32
    embedding: np.ndarray | None = None  # (D,) mean of the window embeddings
    top_k: int = DEFAULT_TOP_K
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0  # wall time spent decoding and running the model

    @property
    def windows(self) -> int:
        return len(self.window_starts)

    @property
    def top(self) -> list[tuple[str, float]]:
        """The `top_k` classes of the whole song, most probable first."""
        return self.top_classes(self.top_k)

    def top_classes(self, k: int | None = None, probabilities: np.ndarray | None = None) -> list[tuple[str, float]]:
        p = self.probabilities if probabilities is None else probabilities
        order = np.argsort(-np.asarray(p, np.float64), kind="stable")[: k or self.top_k]
        return [(self.class_names[i], float(p[i])) for i in order]

    def timeline(self, k: int | None = None) -> list[tuple[float, list[tuple[str, float]]]]:
        """(start in seconds, top-k classes) for every window, in time order."""
        return [(float(s), self.top_classes(k, p)) for s, p in zip(self.window_starts, self.window_probabilities)]

    def segments(self, hysteresis: float = DEFAULT_HYSTERESIS, min_segment: float = DEFAULT_MIN_SEGMENT) -> list[Segment]:
        """Genre segments of the song (`keras_mgc.segments`: the algorithm the browser page shares)."""
        return segment_windows(self.window_probabilities, self.window_starts, self.window, self.hop,
                               self.duration, self.class_names, hysteresis, min_segment)

    def as_dict(self, timeline: bool = False, digits: int = 6, segments: list[Segment] | None = None) -> dict[str, Any]:
        """The JSON form (probabilities rounded to `digits`; times to 3 decimals)."""

        def tops(pairs: list[tuple[str, float]]) -> list[dict[str, Any]]:
            return [{"label": label, "probability": round(p, digits)} for label, p in pairs]

        out: dict[str, Any] = {
            "file": self.source,
            "duration": round(self.duration, 3),
            "windows": self.windows,
            "top": tops(self.top),
            "probabilities": {c: round(float(p), digits) for c, p in zip(self.class_names, self.probabilities)},
            "notes": list(self.notes),
            "seconds": round(self.seconds, 3),
            "error": None,
        }
        if timeline:
            out["timeline"] = [{"start": round(s, 3), "top": tops(t)} for s, t in self.timeline()]
        if segments is not None:
            out["segments"] = [s.as_dict(digits) for s in segments]
        return out


def error_dict(path: str, reason: str, timeline: bool = False, segments: bool = False) -> dict[str, Any]:
    """The JSON form of a song that could not be tagged (the same keys as `TagResult.as_dict`)."""
    out: dict[str, Any] = {"file": path, "duration": None, "windows": 0, "top": [], "probabilities": None,
                           "notes": [], "seconds": None, "error": reason}
    if timeline:
        out["timeline"] = []
    if segments:
        out["segments"] = []
    return out


# --------------------------------------------------------------------------- the tagger


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter  # the older name of the same runtime
        except ImportError:
            raise TaggerError("the tagger needs LiteRT: pip install ai-edge-litert") from None
    return Interpreter


class _QuietStderr:
    """Collect what native code writes to fd 2 (LiteRT's "INFO: Created ... delegate" line)."""

    def __enter__(self) -> "_QuietStderr":
        self.text = ""
        try:
            sys.stderr.flush()
            self._saved = os.dup(2)
        except (OSError, ValueError):
            self._saved = None
            return self
        self._file = tempfile.TemporaryFile()
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if self._saved is None:
            return
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        self.text = self._file.read().decode("utf-8", "replace")
        self._file.close()
        if exc_type is not None:
            self.replay()  # the runtime's own words may explain the failure

    def replay(self) -> None:
        """Write back everything except LiteRT's informational lines."""
        lines = [ln for ln in self.text.splitlines() if ln.strip() and not ln.startswith("INFO: ")]
        if lines:
            print("\n".join(lines), file=sys.stderr)


class Tagger:
    """A LiteRT genre model with its class names, ready to tag files or arrays.

    `threads` defaults to every core this process may use. `batch` windows go through
    the model per invoke. Not thread-safe: use one Tagger per thread.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        labels: str | os.PathLike[str] | None = None,
        threads: int | None = None,
        batch: int = DEFAULT_BATCH,
    ) -> None:
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise TaggerError(f"model not found: {self.model_path}")
        if threads is not None and threads < 1:
            raise TaggerError(f"threads must be >= 1, got {threads}")
        if batch < 1:
            raise TaggerError(f"batch must be >= 1, got {batch}")
        self.metadata = load_metadata(self.model_path, labels)
        self.class_names = self.metadata.class_names
        self.sample_rate = self.metadata.sample_rate
        self.threads = threads or _default_threads()
        self.batch = batch
        Interpreter = _interpreter_class()
        with _QuietStderr() as quiet:
            try:
                self._interpreter = Interpreter(model_path=os.fspath(self.model_path), num_threads=self.threads)
            except (ValueError, RuntimeError) as exc:
                raise TaggerError(f"{self.model_path}: not a usable TFLite model ({exc})") from exc
            self._runner = self._signature_runner()
            self._check_model()
        quiet.replay()

    def _signature_runner(self) -> Any:
        try:
            report = check_signatures(self._interpreter, len(self.class_names), labels_source=self.metadata.source)
        except ContractError as exc:
            raise TaggerError(f"{self.model_path}: {exc}") from exc
        self._has_embedding = report.has_embedding
        # A model exported with fixed input dimensions still works: a fixed batch is filled
        # (zero windows, results dropped), a fixed length becomes the only window length.
        self._fixed_batch = report.fixed_batch
        self._fixed_samples = report.fixed_samples
        if self._fixed_batch:
            self.batch = self._fixed_batch
        return self._interpreter.get_signature_runner(SIGNATURE)

    def _check_model(self) -> None:
        """Run one window of quiet noise: finite probabilities summing to 1, or a clear error."""
        length = self._fixed_samples or self.metadata.crop_samples
        probe = (np.random.default_rng(0).standard_normal((1, length)) * 0.01).astype(np.float32)
        try:
            probs, _ = self._run(probe)
        except RuntimeError as exc:
            raise TaggerError(f"{self.model_path}: the model fails on a test window ({exc})") from exc
        if not np.isfinite(probs).all():
            raise TaggerError(
                f"{self.model_path}: the model returns non-finite probabilities on a test window "
                "(weights exported as uninitialised variables?)"
            )
        if abs(float(probs.sum()) - 1.0) > 1e-3 or (probs < 0).any():
            raise TaggerError(
                f'{self.model_path}: output "{PROBABILITIES}" does not sum to 1 (sum {float(probs.sum()):.4g}): '
                "the exporter's contract is softmax probabilities, not logits"
            )

    def _run(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        n = len(windows)
        if self._fixed_batch and n != self._fixed_batch:
            windows = np.concatenate([windows, np.zeros((self._fixed_batch - n, windows.shape[1]), np.float32)])
        out = self._runner(**{WAVEFORM_INPUT: np.ascontiguousarray(windows, np.float32)})
        probs = np.array(out[PROBABILITIES][:n], dtype=np.float32)
        emb = np.array(out[EMBEDDING][:n], dtype=np.float32) if self._has_embedding else None
        return probs, emb

    # ---------------------------------------------------------------- tagging

    def _window_samples(self, window: float | None, hop: float) -> tuple[int, int]:
        for name, value in (("window", window), ("hop", hop)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0
            ):
                raise TaggerError(f"{name} must be a positive number of seconds, got {value!r}")
        if window is None:
            w = self._fixed_samples or self.metadata.crop_samples
        else:
            if window < MIN_WINDOW_SECONDS:
                raise TaggerError(f"window must be at least {MIN_WINDOW_SECONDS} s, got {window}")
            w = int(round(window * self.sample_rate))
            if self._fixed_samples and w != self._fixed_samples:
                raise TaggerError(f"this model takes windows of exactly {self._fixed_samples} samples "
                                  f"({self._fixed_samples / self.sample_rate:.4g} s), not {window} s")
        h = max(1, int(round(hop * self.sample_rate)))
        return w, h

    def tag(
        self,
        source: str | os.PathLike[str] | np.ndarray,
        top_k: int = DEFAULT_TOP_K,
        window: float | None = None,
        hop: float = DEFAULT_HOP,
        *,
        sample_rate: int | None = None,
        block_seconds: float = BLOCK_SECONDS,
    ) -> TagResult:
        """Tag a file (any format libsndfile reads) or an array of samples.

        An array is 1-D mono or (frames, channels), at `sample_rate` (default: the
        model's; other rates are resampled with soxr HQ). `window` and `hop` are seconds
        (window default: the model's training crop). Raises AudioError for a file that
        cannot be decoded, TaggerError for bad arguments.
        """
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise TaggerError(f"top_k must be a positive integer, got {top_k!r}")
        w, h = self._window_samples(window, hop)
        started = time.perf_counter()
        notes: list[str] = []
        if isinstance(source, np.ndarray):
            name = "<array>"
            blocks: Iterable[np.ndarray] = [self._prepare_array(source, sample_rate)]
        else:
            name = os.fspath(source)
            blocks = stream_audio(source, self.sample_rate, block_seconds=block_seconds)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TruncatedAudioWarning)
            starts, probs, emb_sum, total = self._tag_blocks(blocks, w, h)
        for warning in caught:
            if issubclass(warning.category, TruncatedAudioWarning):
                notes.append(str(warning.message).removeprefix(f"{name}: "))
            else:
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        if total < w:
            notes.append(
                f"padded: {(w - total) / self.sample_rate:.2f} s shorter than one "
                f"{w / self.sample_rate:.2f} s window (looped to fill it)"
            )
        window_probs = np.stack(probs) if probs else np.zeros((0, len(self.class_names)), np.float32)
        return TagResult(
            source=name,
            class_names=self.class_names,
            sample_rate=self.sample_rate,
            duration=total / self.sample_rate,
            window=w / self.sample_rate,
            hop=h / self.sample_rate,
            probabilities=window_probs.mean(axis=0, dtype=np.float64),
            window_starts=np.asarray(starts, np.float64) / self.sample_rate,
            window_probabilities=window_probs,
            embedding=None if emb_sum is None else emb_sum / len(starts),
            top_k=int(min(top_k, len(self.class_names))),
            notes=notes,
            seconds=time.perf_counter() - started,
        )

    def _prepare_array(self, audio: np.ndarray, sample_rate: int | None) -> np.ndarray:
        audio = np.asarray(audio)
        if not np.issubdtype(audio.dtype, np.floating):
            raise TaggerError(f"audio array must be floating point in [-1, 1], got {audio.dtype}")
        if audio.ndim == 2:  # (frames, channels), as soundfile reads
            audio = audio.astype(np.float64).mean(axis=1)
        elif audio.ndim != 1:
            raise TaggerError(f"audio array must be 1-D or (frames, channels), got shape {audio.shape}")
        if audio.size == 0:
            raise TaggerError("audio array is empty")
        audio = audio.astype(np.float32)
        if not np.isfinite(audio).all():
            raise TaggerError("audio array has NaN or Inf samples")
        if sample_rate is not None and sample_rate != self.sample_rate:
            import soxr  # keras_mgc.audio's resampler

            audio = soxr.resample(audio, sample_rate, self.sample_rate, quality="HQ").astype(np.float32)
        return audio

    def _tag_blocks(
        self, blocks: Iterable[np.ndarray], w: int, h: int
    ) -> tuple[list[int], list[np.ndarray], np.ndarray | None, int]:
        batch = max(1, min(self.batch, MAX_BATCH_SAMPLES // w))
        buf = np.empty((batch, w), np.float32)
        starts: list[int] = []
        probs: list[np.ndarray] = []
        emb_sum: list[np.ndarray | None] = [None]
        filled = 0

        def flush(n: int) -> None:
            p, e = self._run(buf[:n])
            if p.shape != (n, len(self.class_names)) or not np.isfinite(p).all():
                raise RuntimeError(f"{self.model_path}: the model returned unusable probabilities {p.shape}")
            probs.extend(p)
            if e is not None:
                s = e.sum(axis=0, dtype=np.float64)
                emb_sum[0] = s if emb_sum[0] is None else emb_sum[0] + s

        windower = Windower(w, h)

        def windows() -> Iterator[tuple[int, np.ndarray]]:
            for block in blocks:
                yield from windower.feed(np.asarray(block, np.float32))
            yield from windower.finish()

        for start, samples in windows():
            buf[filled] = samples
            starts.append(start)
            filled += 1
            if filled == batch:
                flush(filled)
                filled = 0
        if filled:
            flush(filled)
        if windower.total == 0:
            raise TaggerError("no audio samples to tag")
        return starts, probs, emb_sum[0], windower.total


# --------------------------------------------------------------------------- command line


def _expand(paths: Sequence[str]) -> Iterator[tuple[Song, str | None]]:
    """(song, problem) for every song argument; a directory gives its audio files, sorted.

    A song's name (for per-song output files) is its path below the directory argument, or
    the file name of a file argument.
    """
    for arg in paths:
        p = Path(arg)
        if p.is_dir():
            found = find_audio_files(p)
            if not found:
                yield Song(arg, p.name or arg), (
                    "directory holds no audio files (by extension: " + " ".join(sorted(AUDIO_EXTENSIONS)) + ")"
                )
            for f in found:
                yield Song(os.fspath(f), f.relative_to(p).as_posix()), None
        else:
            yield Song(arg, p.name or arg), None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m {_PROG}",
        description="Tag songs with genres using an exported LiteRT (.tflite) model; no TensorFlow needed.",
        epilog="Exit codes: 0 every file tagged, 1 some file failed (others still tagged), 2 usage error.",
    )
    add = parser.add_argument
    add("songs", nargs="+", metavar="SONG", help="audio files (anything libsndfile reads) or directories")
    add("--model", required=True, help="the .tflite model (metadata <stem>.json or labels.txt beside it)")
    add("--labels", help="class names, one per line (overrides the metadata)")
    add("--top-k", type=int, default=DEFAULT_TOP_K, help="classes to print (default %(default)s)")
    add("--window", type=float, default=None, help="window length in seconds (default: the training crop, 2.01 s)")
    add("--hop", type=float, default=DEFAULT_HOP, help="seconds between window starts (default %(default)s)")
    add("--timeline", action="store_true", help="also give every window's start time and top-k")
    add("--format", choices=FORMATS, default=None,
        help="text (default), json or csv; with --output FILE.json/.csv the suffix decides")
    add("--json", action="store_true", help="the same as --format json")
    add("--output", metavar="FILE|DIR",
        help="FILE.csv or FILE.json: one table/document for the batch; any other name: a folder with one "
             "result file per song. Songs already in it are skipped (resume); default stdout")
    add("--segments", action="store_true",
        help="merge windows into genre segments (JSON/CSV/text; an Audacity label track per song in a folder)")
    add("--min-segment", type=float, default=DEFAULT_MIN_SEGMENT, metavar="SECONDS",
        help="shortest segment kept; shorter ones merge into a neighbour (default %(default)s)")
    add("--hysteresis", type=float, default=DEFAULT_HYSTERESIS, metavar="P",
        help="probability lead a new genre needs over the current one to start a segment (default %(default)s)")
    add("--plot", metavar="FILE.png|DIR",
        help="draw the genre timeline (stacked probabilities, segment boundaries): FILE.png for one song, "
             "else a folder of <name>.png")
    add("--progress", action=argparse.BooleanOptionalAction, default=None,
        help="progress bar on stderr (default: for more than a few files, when stderr is a terminal)")
    add("--threads", type=int, default=None, help="interpreter threads (default: all cores)")
    add("--batch", type=int, default=DEFAULT_BATCH, help="windows per model invoke (default %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error(f"--top-k must be >= 1, got {args.top_k}")
    for name in ("window", "hop"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            parser.error(f"--{name} must be a positive number of seconds, got {value}")
    if args.window is not None and args.window < MIN_WINDOW_SECONDS:
        parser.error(f"--window must be at least {MIN_WINDOW_SECONDS} s, got {args.window}")
    if not (math.isfinite(args.min_segment) and args.min_segment >= 0):
        parser.error(f"--min-segment must be a number of seconds >= 0, got {args.min_segment}")
    if not (math.isfinite(args.hysteresis) and 0 <= args.hysteresis <= 1):
        parser.error(f"--hysteresis must be a probability difference in [0, 1], got {args.hysteresis}")
    if args.json:
        if args.format not in (None, "json"):
            parser.error(f"--json contradicts --format {args.format}")
        args.format = "json"
    try:
        kind, fmt, out_path = destination(args.output, args.format)
    except OutputError as exc:
        parser.error(str(exc))
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        parser.error("--plot needs matplotlib (pip install matplotlib==3.11.2); the tagger itself does not")
    try:
        tagger = Tagger(args.model, labels=args.labels, threads=args.threads, batch=args.batch)
    except TaggerError as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    window_samples, hop_samples = tagger._window_samples(args.window, args.hop)
    options = (args.hysteresis, args.min_segment)
    header = Header(
        model=os.fspath(tagger.model_path),
        class_names=tagger.class_names,
        sample_rate=tagger.sample_rate,
        window=window_samples / tagger.sample_rate,
        hop=hop_samples / tagger.sample_rate,
        top_k=min(args.top_k, len(tagger.class_names)),
        segments=options if args.segments else None,
        timeline=args.timeline,
    )
    songs = list(_expand(args.songs))
    single = len(songs) == 1
    try:
        writer = ResultWriter(kind, fmt, out_path, header)
        plots = {s.path: plot_path(args.plot, s, single) for s, _ in songs} if args.plot else {}
    except OutputError as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    clashes = check_names([s for s, _ in songs]) if kind == "dir" or (plots and not single) else {}

    failed = skipped = 0
    progress = Progress(len(songs), args.progress)
    try:
        for song, problem in songs:
            problem = problem or clashes.get(song.path)
            plot = plots.get(song.path)
            if not problem and writer.done(song) and (plot is None or plot.is_file()):
                skipped += 1
                progress.update(skipped=skipped)
                continue
            try:
                if problem:
                    raise AudioError(song.path, problem)
                result = tagger.tag(song.path, top_k=args.top_k, window=args.window, hop=args.hop)
                segments = result.segments(*options) if args.segments or plot else None
                if plot is not None:
                    plot_timeline(result, segments or [], plot)
                shown = segments if args.segments else None
                writer.add(song, result.as_dict(timeline=args.timeline, segments=shown), result, shown)
            except AudioError as exc:
                reason = exc.reason
            except (TaggerError, RuntimeError, OSError, MemoryError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            else:
                progress.update()
                continue
            failed += 1
            progress.message(f"{_PROG}: error: {song.path}: {reason}")
            writer.add(song, error_dict(song.path, reason, args.timeline, args.segments))
            progress.update()
    finally:
        progress.close()
        try:
            writer.close()
        except OSError as exc:
            if exc.errno in DISK_FULL_ERRNOS:
                raise  # the command's disk-full guard names the file and exits 4
            print(f"{_PROG}: error: cannot write {args.output or 'the standard output'}: {exc.strerror or exc}",
                  file=sys.stderr)
            failed += 1
    if skipped:
        print(f"{_PROG}: {skipped} file{'s' if skipped != 1 else ''} already in {args.output}: skipped",
              file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def _cli() -> int:
    """`main` for the console: file names that are not valid UTF-8 print as \\udcXX escapes
    (valid inside JSON strings too), a closed pipe (``| head``) ends quietly, Ctrl-C exits 130."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    from keras_mgc.io import DiskFullError, disk_full_guard, output_name

    def tag_main() -> int:
        try:
            return main()
        except OSError as exc:  # the results go to stdout: a full disk there is a write of stdout
            if exc.errno in DISK_FULL_ERRNOS and not exc.filename:
                raise DiskFullError(output_name(1), exc.errno) from exc
            raise

    try:
        return disk_full_guard(_PROG, checkpoints=False)(tag_main)()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout at exit
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{_PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(_cli())
