"""Real audio for verification and int8 calibration: finding, loading, skipping bad files.

Clips are decoded with `keras_mgc.audio.load_audio` (any libsndfile format, resampled to the
model's rate, mixed to mono). A file that cannot be used (missing, not audio, corrupt,
shorter than one crop) is reported once with its reason and skipped; the rest goes on.

Where clips come from when none are given: the run's training data folder (recipe
``data.root``) when it exists on this machine, else ``$KERAS_MGC_SHARED_DATA/gtzan-mini``.
When no real clip is found at all, generated signals are used and the report says so in
capitals: agreement on generated signals is weak evidence. Evaluation and representative
clips drawn from one pool are disjoint (alternate files). This module does not import
TensorFlow.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from keras_mgc import windows
from keras_mgc.audio import AudioError, find_audio_files, load_audio
from keras_mgc.contract import DEFAULT_SAMPLE_RATE

__all__ = ["Log", "Clip", "ClipSet", "expand", "stratified", "default_pool", "load", "generated", "crops", "random_crops"]

Log = Callable[[str], None]


@dataclass
class Clip:
    name: str  # path as given (or a generated id)
    audio: np.ndarray  # float32 mono at the model's rate


@dataclass
class ClipSet:
    clips: list[Clip] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    source: str = "real"  # "real" or "generated"
    origin: str = ""  # where the files came from
    notes: list[str] = field(default_factory=list)
    sample_rate: int = DEFAULT_SAMPLE_RATE

    def summary(self) -> dict[str, Any]:
        return {"source": self.source, "origin": self.origin, "clips": [c.name for c in self.clips],
                "n_clips": len(self.clips), "skipped": self.skipped, "notes": self.notes,
                "seconds": [round(len(c.audio) / self.sample_rate, 2) for c in self.clips]}


def expand(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[Path], list[dict[str, str]]]:
    """Files named directly (any extension: they are tried) and audio files under folders."""
    files: list[Path] = []
    problems: list[dict[str, str]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = find_audio_files(path)
            if not found:
                problems.append({"path": str(path), "reason": "folder holds no audio files"})
            files += found
        elif path.is_file():
            files.append(path)
        else:
            problems.append({"path": str(path), "reason": "not found"})
    seen: set[Path] = set()
    unique = [f for f in files if not (f.resolve() in seen or seen.add(f.resolve()))]
    return unique, problems


def stratified(files: list[Path]) -> list[Path]:
    """Round-robin over parent folders (genres), so any prefix covers every class."""
    groups: dict[Path, list[Path]] = {}
    for f in sorted(files):
        groups.setdefault(f.parent, []).append(f)
    order: list[Path] = []
    queues = [list(g) for g in groups.values()]
    while any(queues):
        for q in queues:
            if q:
                order.append(q.pop(0))
    return order


def default_pool(recipe: dict[str, Any]) -> tuple[list[Path], str]:
    """Real clips available on this machine without being told: (files, where from)."""
    candidates = []
    root = (recipe.get("data") or {}).get("root")
    if root:
        candidates.append(Path(root))
    env = os.environ.get("KERAS_MGC_SHARED_DATA")
    if env:
        candidates.append(Path(env) / "gtzan-mini")
    for folder in candidates:
        if folder.is_dir():
            files = find_audio_files(folder)
            if files:
                return stratified(files), str(folder)
    return [], ""


def load(files: list[Path], *, purpose: str, sample_rate: int, min_samples: int, limit: int | None,
         log: Log, problems: list[dict[str, str]] | None = None, origin: str = "") -> ClipSet:
    """Decode up to `limit` usable clips from `files`, reporting and skipping the rest."""
    out = ClipSet(origin=origin, sample_rate=sample_rate)
    for problem in problems or []:
        out.skipped.append(problem)
        log(f"skipped {purpose} audio {problem['path']}: {problem['reason']}")
    for path in files:
        if limit is not None and len(out.clips) >= limit:
            break
        reason = None
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                audio = load_audio(path, sample_rate)
            for w in caught:
                out.notes.append(f"{path}: {w.message}")
            if len(audio) < min_samples:
                reason = (f"too short: {len(audio)} samples at {sample_rate} Hz, the model needs at least one "
                          f"crop ({min_samples})")
        except AudioError as exc:
            reason = exc.reason
        except (OSError, ValueError, RuntimeError) as exc:  # anything else the decoder raises
            reason = f"{type(exc).__name__}: {exc}"
        if reason is not None:
            out.skipped.append({"path": str(path), "reason": reason})
            log(f"skipped {purpose} audio {path}: {reason}")
            continue
        out.clips.append(Clip(str(path), audio))
    return out


def generated(n: int, seconds: float, sample_rate: int, seed: int = 0) -> ClipSet:
    """Deterministic music-like signals (harmonic tones, beats, noise); NOT music."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    clips = []
    for i in range(n):
        f0 = 55.0 * 2 ** rng.uniform(0, 4)
        tone = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3)) / k for k in range(1, 6))
        period = 60.0 / rng.uniform(70, 160)
        beat = np.exp(-((t % period) * rng.uniform(10, 40))) * rng.standard_normal(t.size)
        sweep = np.sin(2 * np.pi * (200 + 2000 * (t / seconds)) * t) * rng.uniform(0, 0.5)
        x = rng.uniform(0.2, 1.0) * tone + rng.uniform(0, 1.0) * beat + sweep
        clips.append(Clip(f"generated-{i:03d}", (0.3 * x / np.max(np.abs(x))).astype(np.float32)))
    return ClipSet(clips=clips, source="generated", origin="generated signals (not music)", sample_rate=sample_rate,
                   notes=["NO REAL CLIPS AVAILABLE: verified on generated signals, which is weak evidence; "
                          "pass --eval-audio / --representative-audio with real music"])


def crops(clip_set: ClipSet, crop: int, per_clip: int) -> list[tuple[str, np.ndarray]]:
    """`per_clip` crops per clip at the TTA starts (`keras_mgc.windows.tta_starts`: first and last included)."""
    out = []
    for clip in clip_set.clips:
        out += [(f"{clip.name}@{s}", windows.crop(clip.audio, int(s), crop))
                for s in windows.tta_starts(len(clip.audio), crop, per_clip)]
    return out


def random_crops(clip_set: ClipSet, crop: int, n: int, seed: int = 0) -> list[np.ndarray]:
    """`n` crops at random places, cycling over the clips (for calibration)."""
    rng = np.random.default_rng(seed)
    if not clip_set.clips:
        return []
    out = []
    for i in range(n):
        audio = clip_set.clips[i % len(clip_set.clips)].audio
        start = int(rng.integers(0, max(len(audio) - crop, 0) + 1))
        out.append(windows.crop(audio, start, crop))
    return out
