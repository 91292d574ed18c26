"""The tagger's output (keras_mgc.tag_output): formats, batch files that resume, segments on
real music with known boundaries, Audacity label tracks, the timeline plot.

Uses the `tag_model` fixture (tests/conftest.py): a small model trained briefly on GTZAN
tracks 1-4; the songs here are track 0 (or excerpts of it), which it never saw.
"""

from __future__ import annotations

import csv
import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from keras_mgc.audio import load_audio
from keras_mgc.segments import segment_windows
from keras_mgc.tag import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Tagger, main
from keras_mgc.tag_output import PLOT_SIZE, SEGMENT_COLUMNS, csv_columns
from tests.tflite_fixtures import GENRES, SAMPLE_RATE

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The DJ-mix test: four unseen GTZAN clips (track 0, ~30 s each), in this order.
MIX = ["classical", "metal", "blues", "country"]


@pytest.fixture(scope="session")
def gtzan(shared_data):
    return shared_data / "gtzan-mini"


@pytest.fixture(scope="session")
def model(tag_model):
    return str(tag_model.path)


@pytest.fixture(scope="session")
def mix(gtzan, tmp_path_factory):
    """The four clips end to end in one WAV, and the true boundaries (seconds)."""
    clips = [load_audio(gtzan / g / f"{g}.00000.wav") for g in MIX]
    path = tmp_path_factory.mktemp("mix") / "mix.wav"
    sf.write(path, np.concatenate(clips), SAMPLE_RATE, subtype="FLOAT")
    return path, np.cumsum([len(c) for c in clips])[:-1] / SAMPLE_RATE


@pytest.fixture()
def excerpts(gtzan, tmp_path):
    """A folder of five 5 s excerpts of different genres, in two subfolders."""
    folder = tmp_path / "songs"
    for i, genre in enumerate(["blues", "classical", "disco", "jazz", "metal"]):
        audio = load_audio(gtzan / genre / f"{genre}.00000.wav")[10 * SAMPLE_RATE : 15 * SAMPLE_RATE]
        path = folder / ("a" if i < 3 else "b") / f"{genre}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, audio, SAMPLE_RATE)
    return folder


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


# --------------------------------------------------------------------------- segments on real music


def test_segments_find_the_boundaries_of_concatenated_real_clips(model, mix, tmp_path, capsys):
    """Classical, metal, blues, country end to end: one segment each, every boundary within
    one window plus one hop (3.01 s) of the true one."""
    path, truth = mix
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, path, "--model", model, "--segments", "--output", out)
    assert code == EXIT_OK, err
    doc = json.loads((out / "mix.wav.json").read_text())
    assert doc["hysteresis"] == 0.1 and doc["min_segment"] == 10.0 and doc["files"] == 1
    (result,) = doc["results"]
    segments = result["segments"]
    assert [set(s) for s in segments] == [{"start", "end", "genre", "probability"}] * len(segments)
    tolerance = doc["window"] + doc["hop"]
    found = [s["start"] for s in segments[1:]]
    assert len(found) == len(truth), segments
    assert np.abs(np.array(found) - truth).max() <= tolerance, (found, truth)
    assert segments[0]["start"] == 0.0 and segments[-1]["end"] == result["duration"]
    assert all(a["genre"] != b["genre"] for a, b in zip(segments, segments[1:]))
    # the two most distinct clips are named right (blues and country vary more with training)
    assert segments[0]["genre"] == "classical" and segments[1]["genre"] == "metal"
    assert all(0 < s["probability"] <= 1 for s in segments)

    # the Audacity label track beside the result: the same segments, tab-separated, 6 decimals
    labels = (out / "mix.wav.labels.txt").read_text().splitlines()
    assert [line.split("\t")[2] for line in labels] == [s["genre"] for s in segments]
    assert [float(line.split("\t")[0]) for line in labels] == pytest.approx([s["start"] for s in segments], abs=5e-4)
    assert all(len(line.split("\t")[1].split(".")[1]) == 6 for line in labels)

    # the CLI's segments are the Python API's, and the one algorithm's on the window probabilities
    tagged = Tagger(model).tag(path)
    api = [s.as_dict() for s in tagged.segments()]
    assert api == segments
    again = segment_windows(tagged.window_probabilities, tagged.window_starts, tagged.window, tagged.hop,
                            tagged.duration, tagged.class_names)
    assert [s.as_dict() for s in again] == segments

    # the options reach the algorithm: a 200 s minimum leaves one segment, a zero one more
    code, out_text, _ = run_cli(capsys, path, "--model", model, "--segments", "--min-segment", "200", "--json")
    assert code == EXIT_OK and len(json.loads(out_text)["results"][0]["segments"]) == 1
    code, out_text, _ = run_cli(capsys, path, "--model", model, "--segments", "--min-segment", "0",
                                "--hysteresis", "0", "--json")
    raw = json.loads(out_text)["results"][0]["segments"]
    assert len(raw) >= len(segments)
    top = tagged.window_probabilities.argmax(axis=1)
    assert len(raw) == 1 + int((top[1:] != top[:-1]).sum())  # no smoothing: one per change of argmax


def test_segments_in_text_and_csv(model, mix, tmp_path, capsys):
    path, truth = mix
    code, out, _ = run_cli(capsys, path, "--model", model, "--segments")
    assert code == EXIT_OK
    rows = out.split("segments (start - end, genre, mean probability):\n")[1].splitlines()
    assert len(rows) == len(truth) + 1 and rows[0].split()[:3] == ["0.00", "-", rows[0].split()[2]]
    table = tmp_path / "tags.csv"
    code, _, err = run_cli(capsys, path, "--model", model, "--segments", "--output", table)
    assert code == EXIT_OK, err
    columns, rows = read_csv(table.with_name("tags.segments.csv"))
    assert columns == SEGMENT_COLUMNS and len(rows) == len(truth) + 1
    assert [r["segment"] for r in rows] == ["1", "2", "3", "4"] and {r["file"] for r in rows} == {str(path)}
    assert float(rows[-1]["end"]) == pytest.approx(float(read_csv(table)[1][0]["duration"]), abs=1e-3)
    # CSV on stdout has room for one table only
    code, out, err = run_cli(capsys, path, "--model", model, "--segments", "--format", "csv")
    assert code == EXIT_USAGE and "needs --output" in err and out == ""


# --------------------------------------------------------------------------- batch files and resume


def test_csv_batch_table_resumes_and_retries_failures(model, excerpts, tmp_path, capsys):
    bad = excerpts / "b" / "broken.wav"
    bad.write_bytes(b"RIFF" + bytes(60))
    table = tmp_path / "tags.csv"
    code, out, err = run_cli(capsys, excerpts, "--model", model, "--output", table, "--progress")
    assert code == EXIT_FAILED and out == ""
    assert err.count(f"keras_mgc.tag: error: {bad}:") == 1
    assert "tagging: 100%" in err and "6/6" in err  # the progress bar
    columns, rows = read_csv(table)
    assert columns == csv_columns(GENRES) and len(rows) == 6
    ok = [r for r in rows if not r["error"]]
    assert len(ok) == 5 and [Path(r["file"]).name for r in ok][:3] == ["blues.wav", "classical.wav", "disco.wav"]
    for r in ok:
        probs = np.array([float(r[g]) for g in GENRES])
        assert probs.sum() == pytest.approx(1.0, abs=1e-4)
        assert r["genre"] == GENRES[int(probs.argmax())] and float(r["probability"]) == pytest.approx(probs.max())
        assert float(r["duration"]) == pytest.approx(5.0) and r["windows"] == "4"
    (failed,) = [r for r in rows if r["error"]]
    assert failed["file"] == str(bad) and failed["genre"] == "" and failed["blues"] == ""

    # rerun: the five are skipped (their rows, with their timings, stay as they were), the bad one retried
    code, _, err = run_cli(capsys, excerpts, "--model", model, "--output", table)
    assert code == EXIT_FAILED and "5 files already in" in err and err.count("error:") == 1
    assert "tagging:" not in err  # no bar by default when stderr is not a terminal
    assert read_csv(table)[1][:5] == ok
    # fixed: only it is tagged
    bad.unlink()
    sf.write(bad, load_audio(excerpts / "a" / "disco.wav")[: 3 * SAMPLE_RATE], SAMPLE_RATE)
    code, _, err = run_cli(capsys, excerpts, "--model", model, "--output", table)
    assert code == EXIT_OK and "5 files already in" in err
    rows = read_csv(table)[1]
    assert rows[:5] == ok and len(rows) == 6 and rows[5]["file"] == str(bad) and not rows[5]["error"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_interrupted_batch_keeps_a_complete_file_and_resumes(model, excerpts, tmp_path, capsys, monkeypatch):
    """Ctrl-C on the third song: the file holds the first two, complete; a rerun tags the rest."""
    table = tmp_path / "tags.json"
    calls, on_disk = [], []
    real_tag = Tagger.tag

    def tag_then_interrupt(self, source, *args, **kwargs):
        calls.append(source)
        if len(calls) == 3:
            # checkpointed during the batch (the second song may still wait: the interval
            # adapts to the write's duration)
            on_disk.append(json.loads(table.read_text())["files"])
            raise KeyboardInterrupt
        return real_tag(self, source, *args, **kwargs)

    monkeypatch.setattr(Tagger, "tag", tag_then_interrupt)
    monkeypatch.setattr("keras_mgc.tag_output.CHECKPOINT_SECONDS", 0.0)
    with pytest.raises(KeyboardInterrupt):
        main([str(excerpts), "--model", model, "--output", str(table)])
    monkeypatch.undo()
    doc = json.loads(table.read_text())  # complete JSON: written on the way out
    assert on_disk in ([1], [2]) and doc["files"] == 2 and [Path(r["file"]).name for r in doc["results"]] == ["blues.wav", "classical.wav"]
    code, _, err = run_cli(capsys, excerpts, "--model", model, "--output", table)
    assert code == EXIT_OK and "2 files already in" in err
    doc = json.loads(table.read_text())
    names = [Path(r["file"]).name for r in doc["results"]]
    assert names == ["blues.wav", "classical.wav", "disco.wav", "jazz.wav", "metal.wav"]
    # a file written with other settings is refused, not mixed
    code, _, err = run_cli(capsys, excerpts, "--model", model, "--output", table, "--hop", "2")
    assert code == EXIT_USAGE and "hop 1.0, this run 2.0" in err


def test_folder_output_mirrors_the_input_folders(model, excerpts, tmp_path, capsys):
    out = tmp_path / "results"
    code, _, err = run_cli(capsys, excerpts, "--model", model, "--output", out, "--format", "csv")
    assert code == EXIT_OK, err
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["a/blues.wav.csv", "a/classical.wav.csv", "a/disco.wav.csv", "b/jazz.wav.csv",
                     "b/metal.wav.csv"]
    columns, rows = read_csv(out / "a" / "disco.wav.csv")
    assert columns == csv_columns(GENRES) and len(rows) == 1 and rows[0]["file"] == str(excerpts / "a" / "disco.wav")
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.csv")}
    (out / "b" / "metal.wav.csv").unlink()
    code, _, err = run_cli(capsys, excerpts, "--model", model, "--output", out, "--format", "csv")
    assert code == EXIT_OK and "4 files already in" in err
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p.name != "metal.wav.csv")
    assert (out / "b" / "metal.wav.csv").is_file()
    # two file arguments with one name would write one result file: the second is refused
    twin = tmp_path / "other" / "blues.wav"
    twin.parent.mkdir()
    twin.write_bytes((excerpts / "b" / "jazz.wav").read_bytes())
    code, _, err = run_cli(capsys, excerpts / "a" / "blues.wav", twin, "--model", model, "--output",
                           tmp_path / "flat", "--format", "text")
    assert code == EXIT_FAILED and f"{twin}: its result name 'blues.wav' is already used by" in err
    assert (tmp_path / "flat" / "blues.wav.txt").read_text().startswith(f"{excerpts / 'a' / 'blues.wav'}: 5.00 s")


def test_output_and_format_errors_exit_2(model, excerpts, tmp_path, capsys):
    song = excerpts / "a" / "blues.wav"
    for argv, match in [
        (["--output", tmp_path / "t.csv", "--format", "json"], "is a CSV file but --format is json"),
        (["--output", tmp_path / "t.txt"], "cannot be resumed"),
        (["--json", "--format", "csv"], "--json contradicts --format csv"),
        (["--hysteresis", "1.5"], "--hysteresis must be"),
        (["--min-segment", "-1"], "--min-segment must be"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main([str(song), "--model", model, *map(str, argv)])
        assert exc.value.code == EXIT_USAGE and match in capsys.readouterr().err
    (tmp_path / "old.csv").write_text("file,genre\nx.wav,rock\n")
    code, _, err = run_cli(capsys, song, "--model", model, "--output", tmp_path / "old.csv")
    assert code == EXIT_USAGE and "holds results of another kind" in err
    code, _, err = run_cli(capsys, excerpts, "--model", model, "--plot", tmp_path / "one.png")
    assert code == EXIT_USAGE and "several songs" in err
    # a batch file that cannot be written (its folder is a file): one clear message, exit 1
    (tmp_path / "plain").write_text("")
    code, _, err = run_cli(capsys, song, "--model", model, "--output", tmp_path / "plain" / "t.csv")
    assert code == EXIT_FAILED and err.startswith(f"keras_mgc.tag: error: cannot write {tmp_path / 'plain' / 't.csv'}")


def test_csv_on_stdout_streams_the_table(model, excerpts, capsys):
    code, out, _ = run_cli(capsys, excerpts / "a", "--model", model, "--format", "csv")
    assert code == EXIT_OK
    lines = out.splitlines()
    assert lines[0] == ",".join(csv_columns(GENRES)) and len(lines) == 4


# --------------------------------------------------------------------------- plot


def test_plot_draws_the_genre_timeline(model, mix, tmp_path, capsys):
    path, _ = mix
    png = tmp_path / "timeline.png"
    code, _, err = run_cli(capsys, path, "--model", model, "--plot", png)
    assert code == EXIT_OK, err
    assert png_size(png) == PLOT_SIZE
    import matplotlib.image

    pixels = matplotlib.image.imread(png)[..., :3]
    colours = np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert pixels.std() > 0.1 and len(colours) > 50  # stacked areas in many colours, not a blank canvas
    # a folder of plots for a batch, named like the per-song results
    code, _, _ = run_cli(capsys, path, path.parent, "--model", model, "--plot", tmp_path / "plots")
    assert png_size(tmp_path / "plots" / "mix.wav.png") == PLOT_SIZE


def test_matplotlib_is_imported_only_for_a_plot(model, excerpts, tmp_path):
    script = textwrap.dedent(
        """
        import json, sys
        from keras_mgc.tag import main
        code = main(sys.argv[1:])
        print(json.dumps({"code": code, "matplotlib": "matplotlib" in sys.modules}), file=sys.stderr)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    song = str(excerpts / "a" / "blues.wav")
    for extra, expected in [([], False), (["--plot", str(tmp_path / "p.png")], True)]:
        proc = subprocess.run([sys.executable, "-c", script, song, "--model", model, "--segments",
                               "--output", str(tmp_path / f"o{len(extra)}.csv"), *extra],
                              capture_output=True, text=True, env=env, timeout=120)
        report = json.loads(proc.stderr.strip().splitlines()[-1])
        assert report == {"code": 0, "matplotlib": expected}, proc.stderr
