"""What the tagger writes: text, JSON and CSV results, batch files that resume, label tracks, plots.

``python -m keras_mgc.tag`` (keras_mgc/tag.py) tags songs; this module turns each song's
result into output people use. Like the tagger it needs no TensorFlow (matplotlib is
imported only for ``--plot``, tqdm only when a progress bar is shown).

Where results go (``--output``)
    - no ``--output``: stdout. text: a few lines per song; json: one document at the end;
      csv: the batch table, one row per song as it is tagged.
    - ``--output FILE`` ending in ``.json`` or ``.csv``: one file for the whole batch (the
      format follows the suffix). It is written atomically (``keras_mgc.io``) every
      `CHECKPOINT_SECONDS` (or ten times as long as the last write took, for a huge
      document) and at the end, also when interrupted: the file on disk is always a
      complete document, at most a few seconds behind.
    - ``--output DIR`` (any other name; created): one result file per song,
      ``DIR/<name>.<json|csv|txt>``, where <name> is the song's path below the folder
      given on the command line (``artist/album/01 intro.mp3``), or its file name for a
      file argument. Two songs with the same <name> (same file name from two folders given
      as files) are an error for the second one.
    - Resuming: a song whose results are all in the output already is skipped (in a DIR:
      its files exist, which atomic writes make complete; in a FILE: its row or result has
      no error). Failed songs are tried again. A batch FILE written with other settings
      (class names, window, hop, segment options) is refused rather than mixed.

Formats
    json: ``{"model", "class_names", "sample_rate", "window", "hop", "top_k",
    ["hysteresis", "min_segment",] "files", "failed", "results": [...]}``; each result
    ``{"file", "duration", "windows", "top": [{"label", "probability"}], "probabilities":
    {class: p}, "notes", "seconds", "error"[, "timeline"][, "segments"]}``, with
    ``"segments": [{"start", "end", "genre", "probability"}]``. A DIR holds the same
    document with one result per file.
    csv: `csv_columns`: file, duration, windows, genre and probability (the top class), one
    column per class, notes, seconds, error. Segments go to a second table beside it,
    ``<stem>.segments.csv`` (`SEGMENT_COLUMNS`: file, segment, start, end, genre,
    probability), one row per segment.
    text: the song's top classes, notes, and with ``--timeline`` / ``--segments`` its
    windows / segments.

Segments (``--segments``, `keras_mgc.segments`) also go to an Audacity label track
(``<name>.labels.txt``) beside each result in a DIR. ``--plot PATH`` draws the genre
timeline: PATH ending in ``.png`` for a single song, else a folder of ``<name>.png``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keras_mgc.io import atomic_path, write_text
from keras_mgc.segments import Segment, audacity_labels

if TYPE_CHECKING:  # the tagger imports this module; no import cycle at run time
    from keras_mgc.tag import TagResult

FORMATS = ("text", "json", "csv")
SUFFIXES = {"text": ".txt", "json": ".json", "csv": ".csv"}
#: A batch FILE is rewritten (atomically) at most this often, and at the end.
CHECKPOINT_SECONDS = 10.0
#: A progress bar is shown for more songs than this (when stderr is a terminal, or --progress).
PROGRESS_MIN_FILES = 3
#: The plot's size: 12 x 4.5 inches at 100 dpi.
PLOT_SIZE = (1200, 450)
PLOT_DPI = 100
#: The segments table's columns (CSV output with --segments).
SEGMENT_COLUMNS = ["file", "segment", "start", "end", "genre", "probability"]


class OutputError(ValueError):
    """An output path or an existing output file cannot be used (the CLI exits with 2)."""


@dataclass(frozen=True)
class Song:
    """One input: its path, and its <name> for per-song output files."""

    path: str
    name: str


@dataclass(frozen=True)
class Header:
    """The settings every result of a batch shares (the JSON document's top)."""

    model: str
    class_names: tuple[str, ...]
    sample_rate: int
    window: float
    hop: float
    top_k: int
    segments: tuple[float, float] | None  # (hysteresis, min_segment) with --segments
    timeline: bool

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "class_names": list(self.class_names),
            "sample_rate": self.sample_rate,
            "window": round(self.window, 6),
            "hop": round(self.hop, 6),
            "top_k": self.top_k,
        }
        if self.segments is not None:
            out["hysteresis"], out["min_segment"] = self.segments
        return out


# --------------------------------------------------------------------------- destinations


def destination(output: str | None, fmt: str | None) -> tuple[str, str, Path | None]:
    """(kind, format, path) for --output and --format: kind is "stdout", "file" or "dir".

    >>> destination(None, None)
    ('stdout', 'text', None)
    >>> destination("tags.csv", None)
    ('file', 'csv', PosixPath('tags.csv'))
    >>> destination("results", "json")
    ('dir', 'json', PosixPath('results'))
    """
    if fmt is not None and fmt not in FORMATS:
        raise OutputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if output is None:
        return "stdout", fmt or "text", None
    path = Path(output)
    suffix = path.suffix.lower()
    if suffix in (".json", ".csv") and not path.is_dir():
        implied = suffix[1:]
        if fmt is not None and fmt != implied:
            raise OutputError(f"--output {output} is a {implied.upper()} file but --format is {fmt}")
        return "file", implied, path
    if suffix == ".txt" and not path.is_dir():
        raise OutputError(
            f"--output {output}: one text file for a batch cannot be resumed; give a folder "
            "(one result file per song), a .json or .csv file, or redirect stdout"
        )
    if path.exists() and not path.is_dir():
        raise OutputError(f"--output {output} exists and is not a folder (a batch file ends in .json or .csv)")
    return "dir", fmt or "json", path


def per_song_path(folder: Path, song: Song, suffix: str) -> Path:
    """``folder/<name><suffix>``: the song's name keeps its audio extension (a.mp3 vs a.wav)."""
    return folder / (song.name + suffix)


def check_names(songs: Sequence[Song]) -> dict[str, str]:
    """{path: problem} for songs whose <name> another song already has (per-song outputs)."""
    owner: dict[str, str] = {}
    problems: dict[str, str] = {}
    for song in songs:
        first = owner.setdefault(song.name, song.path)
        if first != song.path:
            problems[song.path] = (f"its result name {song.name!r} is already used by {first}; "
                                   "tag it separately or give its folder instead")
    return problems


# --------------------------------------------------------------------------- records


def csv_columns(class_names: Sequence[str]) -> list[str]:
    """The batch table's columns (class names must not repeat a fixed column)."""
    fixed_before = ["file", "duration", "windows", "genre", "probability"]
    fixed_after = ["notes", "seconds", "error"]
    clash = sorted(set(class_names) & set(fixed_before + fixed_after))
    if clash:
        raise OutputError(f"class names {clash} are also CSV column names; use --format json")
    return fixed_before + list(class_names) + fixed_after


def csv_row(record: dict[str, Any], class_names: Sequence[str]) -> dict[str, str]:
    """One song's row of the batch table (empty cells for a failed song)."""
    def num(value: Any, digits: int) -> str:
        return "" if value is None else f"{value:.{digits}f}"

    top = record["top"][0] if record["top"] else None
    probabilities = record["probabilities"] or {}
    row = {
        "file": record["file"],
        "duration": num(record["duration"], 3),
        "windows": str(record["windows"]),
        "genre": top["label"] if top else "",
        "probability": num(top["probability"], 6) if top else "",
        "notes": "; ".join(record["notes"]),
        "seconds": num(record["seconds"], 3),
        "error": record["error"] or "",
    }
    row |= {c: num(probabilities.get(c), 6) for c in class_names}
    return row


def segment_rows(record: dict[str, Any]) -> list[dict[str, str]]:
    """The song's rows of the segments table."""
    return [
        {"file": record["file"], "segment": str(i), "start": f"{s['start']:.3f}", "end": f"{s['end']:.3f}",
         "genre": s["genre"], "probability": f"{s['probability']:.6f}"}
        for i, s in enumerate(record.get("segments") or [], 1)
    ]


def text_of(result: "TagResult", timeline: bool, segments: Sequence[Segment] | None) -> str:
    """The text form of one song's result."""
    width = max(len(c) for c in result.class_names)
    plural = "s" if result.windows != 1 else ""
    lines = [f"{result.source}: {result.duration:.2f} s, {result.windows} window{plural} "
             f"of {result.window:.2f} s every {result.hop:.2f} s"]
    lines += [f"  {label:<{width}}  {p:.3f}" for label, p in result.top]
    lines += [f"  note: {note}" for note in result.notes]
    if timeline:
        lines.append(f"  timeline (window start, top {result.top_k}):")
        for start, pairs in result.timeline():
            lines.append(f"    {start:8.2f} s  " + "  ".join(f"{label:<{width}} {p:.3f}" for label, p in pairs))
    if segments is not None:
        lines.append("  segments (start - end, genre, mean probability):")
        lines += [f"    {s.start:8.2f} - {s.end:8.2f} s  {s.genre:<{width}}  {s.probability:.3f}" for s in segments]
    return "\n".join(lines) + "\n"


def _csv_text(columns: Sequence[str], rows: Sequence[dict[str, str]], header: bool = True) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _document(header: Header, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return header.as_dict() | {
        "files": len(records),
        "failed": sum(1 for r in records if r["error"]),
        "results": list(records),
    }


def _json_text(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------- writers


class ResultWriter:
    """Sends each song's result where --output says, and knows which songs are done.

    Call `done(song)` before tagging a song, `add(song, record, result, segments)` after
    (result None for a failed song), and `close()` at the end (also after an error).
    """

    def __init__(self, kind: str, fmt: str, path: Path | None, header: Header) -> None:
        self.kind, self.format, self.path, self.header = kind, fmt, path, header
        self.stdout = sys.stdout
        self.columns = csv_columns(header.class_names) if fmt == "csv" else []
        self.records: list[dict[str, Any]] = []  # the batch FILE's / stdout JSON's results
        self._done: set[str] = set()
        self._last_write = time.monotonic()
        self._interval = CHECKPOINT_SECONDS
        self._dirty = False
        if kind == "stdout" and fmt == "csv" and header.segments is not None:
            raise OutputError("--segments with --format csv needs --output (a .csv file or a folder): "
                              "the segments are a second table")
        if kind == "stdout" and fmt == "csv":
            self.stdout.write(_csv_text(self.columns, []))
        if kind == "file":
            self._resume_file()
        if kind == "dir":
            assert path is not None
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(f"--output {path}: cannot create the folder ({exc.strerror or exc})") from exc

    # ---------------------------------------------------------------- resume

    @property
    def segments_path(self) -> Path:
        assert self.path is not None
        return self.path.with_name(self.path.stem + ".segments.csv")

    def song_files(self, song: Song) -> list[Path]:
        """A DIR's files for one song; the result file last (written last: it marks the song done)."""
        assert self.path is not None
        files = []
        if self.header.segments is not None:
            files.append(per_song_path(self.path, song, ".labels.txt"))
            if self.format == "csv":
                files.append(per_song_path(self.path, song, ".segments.csv"))
        return files + [per_song_path(self.path, song, SUFFIXES[self.format])]

    def done(self, song: Song) -> bool:
        if self.kind == "dir":
            return all(f.is_file() for f in self.song_files(song))
        return song.path in self._done

    def _resume_file(self) -> None:
        assert self.path is not None
        if self.path.is_dir():
            raise OutputError(f"--output {self.path} is a folder, not a batch file")
        if not self.path.exists():
            return
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise OutputError(f"--output {self.path}: cannot read it to resume ({exc})") from exc
        if self.format == "json":
            records = self._resume_json(text)
        else:
            records = self._resume_csv(text)
        self.records = [r for r in records if not r["error"]]
        self._done = {r["file"] for r in self.records}

    def _refuse(self, why: str) -> OutputError:
        return OutputError(f"--output {self.path} holds results of another kind ({why}); "
                           "delete it or choose another --output")

    def _resume_json(self, text: str) -> list[dict[str, Any]]:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise self._refuse(f"not JSON: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
            raise self._refuse("not a tagger document with 'results'")
        mine = self.header.as_dict()
        for key in ("class_names", "sample_rate", "window", "hop", "hysteresis", "min_segment"):
            if doc.get(key) != mine.get(key):
                raise self._refuse(f"{key} {doc.get(key)!r}, this run {mine.get(key)!r}")
        records = [r for r in doc["results"] if isinstance(r, dict) and "file" in r and "error" in r]
        if self.header.timeline:  # a result without the asked-for parts is not done
            records = [r for r in records if r["error"] or "timeline" in r]
        if self.header.segments is not None:
            records = [r for r in records if r["error"] or "segments" in r]
        return records

    def _resume_csv(self, text: str) -> list[dict[str, Any]]:
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames != self.columns:
            raise self._refuse(f"columns {reader.fieldnames}, this run {self.columns}")
        rows = list(reader)
        segments: dict[str, list[dict[str, str]]] = {}
        if self.header.segments is not None and self.segments_path.exists():
            seg_reader = csv.DictReader(io.StringIO(self.segments_path.read_text(encoding="utf-8")))
            if seg_reader.fieldnames != SEGMENT_COLUMNS:
                raise OutputError(f"{self.segments_path} has columns {seg_reader.fieldnames}, expected "
                                  f"{SEGMENT_COLUMNS}; delete it or choose another --output")
            for row in seg_reader:
                segments.setdefault(row["file"], []).append(row)
        records = []
        for row in rows:
            record: dict[str, Any] = {"file": row["file"], "error": row["error"] or None, "row": row}
            if self.header.segments is not None:
                if row["file"] not in segments:
                    continue  # tagged before without --segments: tag again
                record["segment_rows"] = segments[row["file"]]
            records.append(record)
        return records

    # ---------------------------------------------------------------- adding results

    def add(self, song: Song, record: dict[str, Any], result: "TagResult | None" = None,
            segments: Sequence[Segment] | None = None) -> None:
        """Write or keep one song's result (`record` is its JSON form; `result` None if it failed)."""
        if self.kind == "stdout":
            self._add_stdout(record, result, segments)
        elif self.kind == "dir":
            if result is not None:  # a failed song leaves no file, so a rerun tries it again
                self._add_dir(song, record, result, segments)
        else:
            self.records.append(record)
            self._dirty = True
            if time.monotonic() - self._last_write >= self._interval:
                try:
                    self.flush()
                except OSError:  # not this song's fault: tried again at the next checkpoint and at the end
                    self._last_write = time.monotonic()

    def _add_stdout(self, record: dict[str, Any], result: "TagResult | None",
                    segments: Sequence[Segment] | None) -> None:
        if self.format == "text":
            if result is not None:
                self.stdout.write(text_of(result, self.header.timeline, segments))
        elif self.format == "csv":
            self.stdout.write(_csv_text(self.columns, [csv_row(record, self.header.class_names)], header=False))
        else:
            self.records.append(record)
        self.stdout.flush()

    def _add_dir(self, song: Song, record: dict[str, Any], result: "TagResult",
                 segments: Sequence[Segment] | None) -> None:
        *extra, main = self.song_files(song)
        for path in extra:
            if path.name.endswith(".labels.txt"):
                write_text(path, audacity_labels(segments or []))
            else:
                write_text(path, _csv_text(SEGMENT_COLUMNS, segment_rows(record)))
        if self.format == "json":
            text = _json_text(_document(self.header, [record]))
        elif self.format == "csv":
            text = _csv_text(self.columns, [csv_row(record, self.header.class_names)])
        else:
            text = text_of(result, self.header.timeline, segments)
        write_text(main, text)

    # ---------------------------------------------------------------- finishing

    def flush(self) -> None:
        """Write the batch FILE now (atomically): the segments table first, the main file last."""
        if self.kind != "file" or not self._dirty:
            return
        assert self.path is not None
        started = time.monotonic()
        if self.format == "json":
            write_text(self.path, _json_text(_document(self.header, self.records)))
        else:
            rows, seg_rows = [], []
            for record in self.records:
                rows.append(record.get("row") or csv_row(record, self.header.class_names))
                if self.header.segments is not None:
                    seg_rows += record.get("segment_rows") or segment_rows(record)
            if self.header.segments is not None:
                write_text(self.segments_path, _csv_text(SEGMENT_COLUMNS, seg_rows))
            write_text(self.path, _csv_text(self.columns, rows))
        self._dirty = False
        # at least CHECKPOINT_SECONDS apart, and writing takes at most ~10% of the time
        self._interval = max(CHECKPOINT_SECONDS, 10 * (time.monotonic() - started))
        self._last_write = time.monotonic()

    def close(self) -> None:
        if self.kind == "stdout" and self.format == "json":
            self.stdout.write(_json_text(_document(self.header, self.records)))
            self.stdout.flush()
        self.flush()


# --------------------------------------------------------------------------- progress


class Progress:
    """A progress bar on stderr (tqdm) for more than `PROGRESS_MIN_FILES` songs.

    `enabled`: True always, False never, None when stderr is a terminal. Messages go
    through `message` so they do not break the bar.
    """

    def __init__(self, total: int, enabled: bool | None, desc: str = "tagging") -> None:
        show = enabled if enabled is not None else (total > PROGRESS_MIN_FILES and sys.stderr.isatty())
        self._bar = None
        if show:
            from tqdm import tqdm  # comes with ai-edge-litert; only needed here

            self._bar = tqdm(total=total, desc=desc, unit="file", file=sys.stderr, dynamic_ncols=True,
                             mininterval=0.5)

    def message(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def update(self, skipped: int = 0) -> None:
        """One more song done; `skipped`: how many were skipped as already in the output so far."""
        if self._bar is not None:
            if skipped:
                self._bar.set_postfix(skipped=skipped, refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# --------------------------------------------------------------------------- plot


def plot_path(plot: str, song: Song, single: bool) -> Path:
    """--plot PATH: the .png itself for a single song, else ``PATH/<name>.png``."""
    path = Path(plot)
    if path.suffix.lower() == ".png":
        if not single:
            raise OutputError(f"--plot {plot} is one image but several songs are tagged; give a folder")
        return path
    return per_song_path(path, song, ".png")


def plot_timeline(result: "TagResult", segments: Sequence[Segment], path: str | os.PathLike[str]) -> Path:
    """Draw the genre timeline: stacked window probabilities over time, segment boundaries.

    x is each window's centre (start + window / 2), held flat to 0 and to the song's end; the stacked areas are the classes'
    probabilities (they sum to 1); dashed lines are segment boundaries, each segment named
    above the plot. `PLOT_SIZE` pixels; written atomically.
    """
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # imported here only: matplotlib is heavy
    from matplotlib.figure import Figure

    width, height = PLOT_SIZE
    fig = Figure(figsize=(width / PLOT_DPI, height / PLOT_DPI), dpi=PLOT_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.06, 0.12, 0.76, 0.74))
    # each window at its centre; the first and last windows' values held out to 0 and the end
    centres = np.clip(result.window_starts + result.window / 2, 0.0, result.duration)
    centres = np.concatenate([[0.0], centres, [result.duration]])
    probs = np.asarray(result.window_probabilities, np.float64)
    probs = np.concatenate([probs[:1], probs, probs[-1:]])
    names = list(result.class_names)
    cmap = colormaps["tab20" if len(names) > 10 else "tab10"]
    colors = [cmap(i % cmap.N) for i in range(len(names))]
    ax.stackplot(centres, probs.T, labels=names, colors=colors, linewidth=0)
    ax.set_xlim(0, result.duration)
    ax.set_ylim(0, 1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("probability")
    for seg in segments[1:]:
        ax.axvline(seg.start, color="black", linestyle="--", linewidth=1.2)
    for seg in segments:
        ax.text((seg.start + seg.end) / 2, 1.02, seg.genre, ha="center", va="bottom", fontsize=9,
                transform=ax.get_xaxis_transform(), clip_on=False)
    ax.set_title(Path(result.source).name, pad=18, fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=PLOT_DPI)
    return path
