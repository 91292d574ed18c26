"""Audio decoding: any file libsndfile reads -> float32 mono at one sample rate.

Files are read with libsndfile (through `soundfile`: WAV in any PCM or float width, AU,
AIFF, FLAC, OGG/Opus, MP3, ...), mixed to mono by averaging the channels and resampled
with soxr (HQ) when the file's rate differs. `load_audio` returns a whole clip,
`stream_audio` yields fixed-size blocks in bounded memory (hour-long files); both run the
same decoder, so the concatenated stream equals `load_audio` (bit-exact when no
resampling is needed).

Every problem with a file is an `AudioError` naming the file and what is wrong: missing,
empty, not audio, unreadable or malformed header, an implausible sample rate, no frames,
a decoder error mid-file, NaN or Inf samples, samples beyond +-MAX_ABS_SAMPLE (finite,
but they overflow the float32 log-mel power and would train on NaN), a clip too short to
leave one sample after resampling. Silence is valid.

Truncation policy: when libsndfile ends the data early but cleanly (a WAV/AU/AIFF whose
header declares more data than the file holds, or an MP3 whose Xing/Info header declares
more frames than decode), the decodable prefix is returned and a `TruncatedAudioWarning`
names the file and the shortfall; ``strict=True`` makes it an `AudioError`. A decoder
*error* (e.g. a FLAC cut mid-frame) is always an `AudioError`: what follows it is unknown.

This module must not import TensorFlow: the on-device tagger uses it with only NumPy,
soundfile and soxr installed.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from keras_mgc.contract import DEFAULT_SAMPLE_RATE

__all__ = ["AUDIO_EXTENSIONS", "RESAMPLE_QUALITY", "MAX_ABS_SAMPLE", "AudioError", "TruncatedAudioWarning", "AudioInfo",
           "is_audio_file", "find_audio_files", "audio_info", "load_audio", "stream_audio", "check_audio"]

#: File extensions treated as audio (lower case, with the dot): what libsndfile reads.
AUDIO_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".wav", ".wave", ".bwf", ".rf64", ".w64",  # RIFF family
        ".au", ".snd",  # Sun/NeXT (original GTZAN)
        ".aiff", ".aif", ".aifc",
        ".flac",
        ".ogg", ".oga", ".opus",
        ".mp3",
        ".caf",
    }
)

#: soxr quality used everywhere (the method asks for high-quality resampling).
RESAMPLE_QUALITY = "HQ"

#: Largest sample magnitude accepted. Float files may exceed +-1 (unnormalised exports,
#: integers stored as floats reach 2.1e9), but beyond ~7e15 the log-mel power overflows
#: float32 and the features become NaN; 1e12 leaves a wide margin on both sides.
MAX_ABS_SAMPLE = 1e12

#: Sample rates accepted in a header. A corrupt header can say 1 Hz, which soxr would
#: turn into 22,050 output samples per input frame (hundreds of GB for a small file).
MIN_FILE_RATE, MAX_FILE_RATE = 1_000, 1_000_000

# Frames read per libsndfile call when a whole clip is loaded (about 24 s at 44.1 kHz).
_LOAD_READ_FRAMES = 1 << 20
# MP3 frame counts come from the Xing/Info header or a size estimate: allow this slack
# before calling a short decode truncated (two MPEG frames, or 1 % of the clip).
_MP3_FRAME = 1152
_UNRECOGNISED = "not a recognised audio file (unknown format, or a corrupt or truncated header)"
_NO_FRAMES = "no audio frames (header only, or an empty data chunk)"
# libsndfile logs "data : 44100 (should be 956)" when a chunk is shorter than declared.
_SHORT_CHUNK = re.compile(r"^\s*(?:data|SSND|Data Size)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


class AudioError(ValueError):
    """A file that cannot be used as audio; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across worker processes
        return (type(self), (self.path, self.reason))


class TruncatedAudioWarning(UserWarning):
    """A file ended before its header said it would; the decodable prefix was used."""


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says (for reports); `frames` is the declared length."""

    path: str
    sample_rate: int
    channels: int
    frames: int
    duration: float  # seconds, frames / sample_rate
    format: str  # libsndfile major format, e.g. "WAV", "MP3"
    subtype: str  # e.g. "PCM_16", "FLOAT", "MPEG_LAYER_III"
    truncated: bool  # the file holds less audio than its header declares (see check_audio)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_audio_file(path: str | os.PathLike[str]) -> bool:
    """True when the name has an audio extension (case-insensitive); says nothing of content."""
    return Path(path).suffix.lower() in AUDIO_EXTENSIONS


def find_audio_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Audio files below `folder`: the one discovery rule of the project.

    Used by dataset indexing (`keras_mgc.data.datasets`), the tagger's directory arguments
    (`keras_mgc.tag`) and the exporter's evaluation clips (`keras_mgc.export.clips`). Rules:
    by extension (`is_audio_file`; contents are not opened); hidden files and folders
    (".name", e.g. macOS "._x.wav" resource forks) are ignored; symlinked folders are
    followed, each real folder once (no loops); order is deterministic: each folder's files
    sorted by name, then its subfolders in sorted order (`os.walk`, top-down).
    """
    seen: set[str] = set()
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath, name) for name in sorted(filenames)
                  if not name.startswith(".") and is_audio_file(name) and os.path.isfile(os.path.join(dirpath, name))]
    return found


def _libsndfile_message(exc: Exception) -> str:
    """libsndfile's own words, without soundfile's "Error opening '<path>': " prefix."""
    return getattr(exc, "error_string", None) or str(exc) or type(exc).__name__


def _open(path: str | os.PathLike[str]) -> sf.SoundFile:
    """Open a file for reading, turning every failure into an AudioError with a clear reason."""
    p = Path(path)
    if not p.exists():
        raise AudioError(p, "file not found")
    if not p.is_file():
        raise AudioError(p, "not a regular file (a directory?)")
    if p.stat().st_size == 0:
        raise AudioError(p, "empty file (0 bytes)")
    try:
        # Bytes, not str: soundfile encodes a str path strictly, which fails for a Linux file
        # name that is not valid UTF-8 (Python holds it with surrogate escapes).
        f = sf.SoundFile(os.fsencode(p))
    except (RuntimeError, OSError, ValueError, TypeError) as exc:
        msg = _libsndfile_message(exc)
        if "not recognised" in msg or "does not exist" in msg:
            # libsndfile's MP3 probe says "does not exist" for any unrecognised content.
            reason = _UNRECOGNISED
        elif "malformed" in msg or "Error in" in msg:
            reason = "malformed or truncated header"
        else:
            reason = "cannot be opened as audio"
        raise AudioError(p, f"{reason} [libsndfile: {msg}]") from exc
    if f.format == "RAW":
        # We never ask for headerless RAW, so this is libsndfile's fallback for a header it
        # could not parse (seen for .au files that are not AU, or are cut inside the header).
        f.close()
        raise AudioError(p, f"{_UNRECOGNISED} [libsndfile fell back to headerless RAW]")
    if not MIN_FILE_RATE <= f.samplerate <= MAX_FILE_RATE:
        rate = f.samplerate
        f.close()
        raise AudioError(p, f"implausible sample rate {rate} Hz in the header (corrupt header?); "
                            f"accepted: {MIN_FILE_RATE:,} to {MAX_FILE_RATE:,} Hz")
    return f


def _header_shortfall(f: sf.SoundFile) -> int:
    """Bytes the data chunk declares beyond the end of the file (0 when complete)."""
    missing = 0
    for declared, actual in _SHORT_CHUNK.findall(f.extra_info):
        missing = max(missing, int(declared) - int(actual))
    return missing


def audio_info(path: str | os.PathLike[str]) -> AudioInfo:
    """Header facts of an audio file, without decoding it; AudioError if it cannot be opened."""
    with _open(path) as f:
        return AudioInfo(
            path=os.fspath(path),
            sample_rate=int(f.samplerate),
            channels=int(f.channels),
            frames=int(f.frames),
            duration=f.frames / f.samplerate,
            format=f.format,
            subtype=f.subtype,
            truncated=_header_shortfall(f) > 0,
        )


def _on_truncated(strict: bool) -> Callable[[Path, str], None]:
    """The truncation policy of `load_audio` / `stream_audio`: warn, or raise when strict."""

    def handle(path: Path, detail: str) -> None:
        if strict:
            raise AudioError(path, f"truncated: {detail}")
        warnings.warn(f"{path}: truncated, using the decodable part: {detail}", TruncatedAudioWarning, stacklevel=4)

    return handle


def _to_mono(block: np.ndarray) -> np.ndarray:
    """(frames, channels) float32 -> (frames,) float32, averaging channels in float64."""
    if block.shape[1] == 1:
        return np.ascontiguousarray(block[:, 0])
    return (block.sum(axis=1, dtype=np.float64) / block.shape[1]).astype(np.float32)


def _decode(
    path: str | os.PathLike[str],
    sample_rate: int | None,
    read_frames: int,
    on_truncated: Callable[[Path, str], None],
) -> Iterator[np.ndarray]:
    """The one decoder: yield mono float32 pieces (variable length) at `sample_rate`.

    `sample_rate=None` keeps the file's rate (used to check files without resampling).
    Raises AudioError for every problem; a clean early end is passed to `on_truncated`.
    """
    p = Path(path)
    with _open(p) as f:
        declared, rate, is_mp3 = int(f.frames), int(f.samplerate), f.format == "MP3"
        if declared <= 0:
            raise AudioError(p, _NO_FRAMES)
        shortfall = _header_shortfall(f)
        if shortfall:
            on_truncated(p, f"the header declares {shortfall} more bytes of audio than the file holds")
        resampler = None
        if sample_rate is not None and sample_rate != rate:
            resampler = soxr.ResampleStream(rate, sample_rate, 1, dtype="float32", quality=RESAMPLE_QUALITY)
        decoded = produced = 0
        while True:
            try:
                block = f.read(read_frames, dtype="float32", always_2d=True)
            except (RuntimeError, OSError, ValueError) as exc:
                detail = f"decoder error after {decoded} of {declared} frames [libsndfile: {_libsndfile_message(exc)}]"
                raise AudioError(p, detail) from exc
            if len(block) == 0:
                break
            mono = _to_mono(block)
            peak = float(np.abs(mono).max())
            if not peak <= MAX_ABS_SAMPLE:  # NaN, Inf or absurdly large
                finite = np.isfinite(mono)
                if not finite.all():
                    at = decoded + int(np.argmin(finite))
                    raise AudioError(p, f"non-finite sample (NaN or Inf) at frame {at} ({at / rate:.3f} s)")
                at = decoded + int(np.argmax(np.abs(mono)))
                raise AudioError(p, f"sample magnitude {peak:.3g} at frame {at} ({at / rate:.3f} s) is beyond "
                                    f"+-{MAX_ABS_SAMPLE:.0e}: not audio (a corrupt float file?)")
            decoded += len(mono)
            out = mono if resampler is None else resampler.resample_chunk(mono)
            produced += len(out)
            yield out
    if decoded == 0:
        raise AudioError(p, "no audio frames could be decoded")
    if is_mp3 and declared - decoded > max(2 * _MP3_FRAME, declared // 100):
        on_truncated(p, f"decoded {decoded} of {declared} declared frames ({decoded / rate:.2f} s)")
    if resampler is not None:
        out = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
        produced += len(out)
        if produced == 0:
            raise AudioError(p, f"too short: {decoded} frame(s) at {rate} Hz leave no sample at {sample_rate} Hz")
        yield out


def _check_rate(sample_rate: int) -> None:
    if isinstance(sample_rate, bool) or not (isinstance(sample_rate, (int, np.integer)) and sample_rate > 0):
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")


def load_audio(path: str | os.PathLike[str], sample_rate: int = DEFAULT_SAMPLE_RATE, *, strict: bool = False,
               on_truncated: Callable[[str], None] | None = None) -> np.ndarray:
    """Decode a whole file to a 1-D float32 mono array at `sample_rate` (soxr HQ if needed).

    Raises AudioError for unusable files; see the module docstring for truncated ones.
    `on_truncated` (when not strict) is called with a description of the shortfall
    instead of a TruncatedAudioWarning, for callers that record it (thread-safe).
    """
    _check_rate(sample_rate)
    handler = _on_truncated(strict)
    if on_truncated is not None and not strict:
        handler = lambda _path, detail: on_truncated(detail)  # noqa: E731
    pieces = [x for x in _decode(path, sample_rate, _LOAD_READ_FRAMES, handler) if len(x)]
    if len(pieces) == 1:
        return pieces[0]
    return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


def stream_audio(
    path: str | os.PathLike[str],
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    *,
    block_seconds: float = 10.0,
    strict: bool = False,
) -> Iterator[np.ndarray]:
    """Yield float32 mono blocks of exactly round(block_seconds * sample_rate) samples (the last
    one shorter), in memory bounded by a few blocks whatever the file's length.

    Concatenated, the blocks equal `load_audio(path, sample_rate)` (bit-exact without
    resampling). Errors found while decoding (NaN, decoder errors, MP3 truncation) are
    raised when reached, after the blocks before them were yielded.
    """
    _check_rate(sample_rate)
    size = int(round(block_seconds * sample_rate))
    if size <= 0:
        raise ValueError(f"block_seconds must give at least one sample, got {block_seconds!r}")
    pending: list[np.ndarray] = []
    held = 0
    for piece in _decode(path, sample_rate, size, _on_truncated(strict)):
        pending.append(piece)
        held += len(piece)
        if held < size:
            continue
        buf = np.concatenate(pending) if len(pending) > 1 else pending[0]
        cut = len(buf) - len(buf) % size
        for start in range(0, cut, size):
            yield buf[start : start + size].copy()
        pending, held = ([buf[cut:].copy()], len(buf) - cut) if cut < len(buf) else ([], 0)
    if held:
        yield np.concatenate(pending)


def check_audio(path: str | os.PathLike[str], *, decode: bool = True) -> AudioInfo:
    """Check that a file is usable audio and return its header facts; AudioError if not.

    `decode=False` only reads the header (cheap: catches missing, empty, non-audio,
    malformed, zero-length and header-truncated files); `decode=True` also decodes every
    frame at the file's own rate (catches decoder errors, NaN/Inf, MP3 truncation).
    Truncation is not an error here: it is reported in the returned `truncated` field.
    """
    info = audio_info(path)
    if not decode:
        if info.frames <= 0:
            raise AudioError(path, _NO_FRAMES)
        return info
    found: list[str] = []
    for _ in _decode(path, None, _LOAD_READ_FRAMES, lambda _path, detail: found.append(detail)):
        pass
    return replace(info, truncated=bool(found))
