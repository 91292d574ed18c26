"""The browser page (web/, served by `python -m keras_mgc.web`) in a real headless Chromium.

The page runs the exporter's ONNX model with onnxruntime-web (WebAssembly) on songs the
browser decodes; the Python tagger runs the TFLite model of the same weights on the same
files. Needs Debian's `chromium` + `chromium-driver`, selenium, and the prepared ONNX
Runtime files (`python -m keras_mgc.web --prepare`); `.ci/run` installs all three. Each
test skips with the reason when one is missing.

Tolerance (BUILD_NOTES.md "Browser page (issue 15)", measured on these files and model):
files at the model's rate differ only by the runtimes (ONNX Runtime Web vs LiteRT: <= 2.4e-6);
files at another rate are decoded at their own rate and resampled by the page's
Kaiser-windowed sinc instead of soxr HQ, and Chromium's MP3 decoder clips at +-1 where
libsndfile's does not: up to 4.8e-4 (trance.mp3).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from keras_mgc import web
from tests.tflite_fixtures import GENRES, SAMPLE_RATE, build_test_model

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Whole-song probabilities, page vs tagger (measured max 4.8e-4, see the module docstring).
TOLERANCE = 1e-3
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1000,1150"]
#: Set this to a path to keep the screenshot of the page (the README's picture comes from it).
SCREENSHOT_ENV = "KERAS_MGC_WEB_SCREENSHOT"


def _executable(*names: str) -> str | None:
    return next((p for p in map(shutil.which, names) if p), None)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def browser_tools() -> tuple[str, str]:
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[tests]')")
    chromium = _executable("chromium", "chromium-browser")
    driver = _executable("chromedriver")
    if not chromium or not driver:
        pytest.skip("Chromium or its driver is not installed (Debian: apt-get install chromium chromium-driver)")
    try:
        web.check_assets()
    except web.WebError as exc:
        pytest.skip(f"the page's ONNX Runtime files are not prepared: {exc}")
    return chromium, driver


@pytest.fixture(scope="session")
def gtzan(shared_data) -> Path:
    return shared_data / "gtzan-mini"


@pytest.fixture(scope="session")
def web_model(browser_tools, gtzan, tmp_path_factory) -> Path:
    """A small model trained 40 steps on GTZAN tracks 1-4, as TFLite (tflite/) and ONNX (onnx/)."""
    root = tmp_path_factory.mktemp("web_model")
    build_test_model(root / "tflite", gtzan, steps=40, onnx_dir=root / "onnx")
    return root


@pytest.fixture(scope="session")
def server(web_model):
    """`python -m keras_mgc.web --model DIR --port 0`, as a user starts it; yields its URL."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "keras_mgc.web", "--model", str(web_model), "--port", "0"],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "http://127.0.0.1:" not in line:
        proc.kill()
        pytest.fail(f"the server did not start: {line}{proc.stderr.read()}")
    url = line.split("http://", 1)[1].split("/", 1)[0]
    yield f"http://{url}/"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def driver(browser_tools, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = browser_tools
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROME_FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}"]:
        options.add_argument(flag)
    d = webdriver.Chrome(service=Service(chromedriver), options=options)
    d.set_script_timeout(60)
    yield d
    d.quit()


@pytest.fixture
def page(driver, server):
    """The page, loaded fresh, with its model ready."""
    open_page(driver, server)
    return driver


def open_page(driver, url: str, expect: str = "ready") -> dict:
    driver.get(url)
    state = wait_for(driver, ("ready", "error"), timeout=120)
    assert state["state"] == expect, state
    return state


def wait_for(driver, states: tuple[str, ...], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = driver.execute_script("return window.kmgc ? {state: kmgc.state, error: kmgc.error} : {}")
        if state.get("state") in states or time.monotonic() > deadline:
            return state
        time.sleep(0.1)


def tag_in_page(driver, path: Path, timeout: float = 600) -> dict:
    """Choose `path` in the page's file input; returns window.kmgc once tagging ended."""
    from selenium.webdriver.common.by import By

    driver.execute_script("kmgc.state = 'submitted'")
    driver.find_element(By.ID, "song-file").send_keys(str(path))
    state = wait_for(driver, ("done", "error"), timeout)
    assert state.get("state") in ("done", "error"), f"{path.name}: the page did not finish in {timeout} s: {state}"
    return driver.execute_script("return window.kmgc")


def downloaded(driver, anchor_id: str) -> str:
    """The text behind a download link of the page (a blob: URL)."""
    return driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        f"fetch(document.getElementById('{anchor_id}').href).then(r => r.text()).then(done);")


def python_tagger_json(web_model: Path, songs: list[Path], *extra: str) -> dict:
    """`python -m keras_mgc.tag --json --timeline` on `songs`, as a user runs it."""
    proc = subprocess.run([sys.executable, "-m", "keras_mgc.tag", "--json", "--timeline", *extra,
                           "--model", str(web_model / "tflite" / "model_float32.tflite"), *map(str, songs)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def segments_flag() -> list[str]:
    from keras_mgc import tag

    return ["--segments"] if "--segments" in tag.build_parser().format_help() else []


def write_wav(path: Path, audio: np.ndarray, rate: int = SAMPLE_RATE) -> Path:
    sf.write(path, audio, rate, subtype="FLOAT")
    return path


# --------------------------------------------------------------------------- the page vs the tagger


def test_page_gives_the_python_taggers_result_on_real_music(page, web_model, shared_data, gtzan):
    genres = sorted(g for g in gtzan.iterdir() if g.is_dir())
    songs = sorted((shared_data / "other-music").iterdir()) + [sorted(g.glob("*.wav"))[0] for g in genres]
    expected = python_tagger_json(web_model, songs, *segments_flag())
    assert expected["failed"] == 0
    report = []
    for song, want in zip(songs, expected["results"]):
        state = tag_in_page(page, song)
        assert state["state"] == "done", f"{song.name}: {state['error']}"
        doc = state["document"]
        got = doc["results"][0]
        resampled = sf.info(str(song)).samplerate != SAMPLE_RATE
        p = np.array(state["raw"]["probabilities"])
        q = np.array([want["probabilities"][c] for c in GENRES])
        diff = float(np.abs(p - q).max())
        margin = float(np.diff(np.sort(q)[-2:])[0])
        report.append(f"{song.name}: max |p_web - p_tagger| {diff:.2e}, tagger's top-2 margin {margin:.3f}"
                      + (" (resampled)" if resampled else ""))
        # the same windows, sample for sample
        assert got["windows"] == want["windows"], song.name
        assert [w["start"] for w in got["timeline"]] == [w["start"] for w in want["timeline"]], song.name
        assert got["duration"] == want["duration"], song.name
        assert diff <= TOLERANCE, report[-1]
        assert got["top"][0]["label"] == want["top"][0]["label"], report[-1]
        # the tagger's JSON document, key for key
        options = {"hysteresis", "min_segment"}  # present with --segments (issue 14)
        assert doc.keys() - options == expected.keys() - options and options <= doc.keys()
        assert got.keys() - {"segments"} == want.keys() - {"segments"}
        for key in ("class_names", "sample_rate", "window", "hop", "top_k", *(options & expected.keys())):
            assert doc[key] == expected[key], key
        assert got["file"] == song.name and got["error"] is None and got["notes"] == want["notes"] == []
        if "segments" in want and not resampled:  # `keras_mgc.tag --segments` (issue 14), same numbers
            assert [s["genre"] for s in got["segments"]] == [s["genre"] for s in want["segments"]], song.name
    print("\n".join(report))
    # the download is the document the page shows
    assert json.loads(downloaded(page, "download-json")) == doc


def test_flac_and_ogg_at_48k_are_read_at_their_rate_and_resampled_like_the_tagger(page, web_model, gtzan,
                                                                                    tmp_path):
    import soxr

    audio, rate = sf.read(sorted((gtzan / "reggae").glob("*.wav"))[0], dtype="float32")
    at48k = soxr.resample(audio[: 12 * rate], rate, 48000, quality="VHQ")
    stereo = np.stack([at48k, 0.5 * at48k], axis=1)
    songs = [tmp_path / "reggae48k.flac", tmp_path / "reggae48k.ogg"]
    sf.write(songs[0], stereo, 48000, subtype="PCM_24")
    sf.write(songs[1], stereo, 48000, format="OGG", subtype="VORBIS")
    expected = python_tagger_json(web_model, songs)["results"]
    for song, want in zip(songs, expected):
        state = tag_in_page(page, song)
        assert state["state"] == "done", state["error"]
        got = state["document"]["results"][0]
        assert got["notes"] == want["notes"] == [], got["notes"]  # the rate was read from the header
        assert (got["windows"], got["duration"]) == (want["windows"], want["duration"])
        p = np.array(state["raw"]["probabilities"])
        assert np.abs(p - np.array([want["probabilities"][c] for c in GENRES])).max() <= TOLERANCE, song.name
    rates = page.execute_async_script(
        "const [urls, done] = arguments;"
        "import('./js/rate.js').then(m => done(urls.map(b64 => m.storedSampleRate("
        "Uint8Array.from(atob(b64), c => c.charCodeAt(0)).buffer))));",
        [base64.b64encode(song.read_bytes()[:70000]).decode() for song in songs])
    assert rates == [48000, 48000]


def test_short_song_is_looped_like_the_tagger_and_says_so(page, web_model, gtzan, tmp_path):
    audio, rate = sf.read(sorted((gtzan / "jazz").glob("*.wav"))[0], dtype="float32")
    short = write_wav(tmp_path / "short.wav", audio[: int(1.2 * rate)], rate)
    want = python_tagger_json(web_model, [short])["results"][0]
    state = tag_in_page(page, short)
    assert state["state"] == "done", state["error"]
    got = state["document"]["results"][0]
    assert got["notes"] == want["notes"] and "looped" in got["notes"][0], (got["notes"], want["notes"])
    assert got["windows"] == want["windows"] == 1
    p = np.array(state["raw"]["probabilities"])
    assert np.abs(p - np.array([want["probabilities"][c] for c in GENRES])).max() <= TOLERANCE
    assert "looped" in page.find_element("id", "notes").text


def test_undecodable_file_gets_a_clear_message_and_the_page_still_works(page, gtzan, tmp_path):
    bad = tmp_path / "not_audio.mp3"
    bad.write_bytes(b"this is not audio at all\n" * 200)
    state = tag_in_page(page, bad)
    assert state["state"] == "error"
    assert "not_audio.mp3" in state["error"] and "cannot decode" in state["error"], state["error"]
    assert page.find_element("id", "message").text == state["error"]
    good = tag_in_page(page, sorted((gtzan / "metal").glob("*.wav"))[0])
    assert good["state"] == "done", good["error"]


def test_model_folder_without_metadata_is_refused_by_the_page_and_the_server(driver, server, web_model, tmp_path):
    # the page, pointed at a folder with a model but no model.json
    state = open_page(driver, server + "?model=js/", expect="error")
    assert "has no model.json" in state["error"], state
    # the server refuses to start, naming the folder and the missing file
    folder = tmp_path / "no_meta"
    folder.mkdir()
    shutil.copy(web_model / "onnx" / "model.onnx", folder / "model.onnx")
    (folder / "labels.txt").write_text("\n".join(GENRES) + "\n")
    proc = subprocess.run([sys.executable, "-m", "keras_mgc.web", "--model", str(folder), "--port", "0"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == web.EXIT_USAGE
    assert str(folder) in proc.stderr and "no model.json" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_model_folder_chosen_in_the_page(page, server, web_model, tmp_path):
    """A listener's own export folder, chosen with the folder picker (no server involved)."""
    page.execute_script("kmgc.state = 'submitted'")
    page.find_element("id", "model-folder").send_keys(str(web_model))
    state = wait_for(page, ("ready", "error"), timeout=120)
    assert state["state"] == "ready", state
    assert "onnx/model.onnx" in page.find_element("id", "model-status").text
    bare = tmp_path / "bare_export" / "onnx"
    bare.mkdir(parents=True)
    shutil.copy(web_model / "onnx" / "model.onnx", bare / "model.onnx")
    open_page(page, server)  # a fresh input: chromedriver does not choose twice in one
    page.execute_script("kmgc.state = 'submitted'")
    page.find_element("id", "model-folder").send_keys(str(bare.parent))
    state = wait_for(page, ("ready", "error"), timeout=120)
    assert state["state"] == "error" and "has no model.json" in state["error"], state


def test_server_refuses_without_prepared_runtime_and_serves_only_the_model_files(web_model, server, tmp_path):
    import urllib.error
    import urllib.request

    page_dir = tmp_path / "page"
    shutil.copytree(web.PAGE_DIR, page_dir, ignore=shutil.ignore_patterns("node_modules", "vendor"))
    with pytest.raises(web.WebError, match="not prepared.*--prepare"):
        web.make_server(web_model, 0, page_dir=page_dir)
    with urllib.request.urlopen(server + "vendor/onnxruntime-web/ort-wasm-simd-threaded.wasm") as r:
        assert r.headers["Content-Type"] == "application/wasm"
    with urllib.request.urlopen(server + "js/worker.js") as r:
        assert r.headers["Content-Type"].startswith("text/javascript")
    with urllib.request.urlopen(server + "model/model.json") as r:
        assert json.load(r)["class_names"] == GENRES
    for path in ("model/../tflite/model_float32.tflite", "model/model_float32.json", "model/"):
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(server + path)


# --------------------------------------------------------------------------- the algorithms, in the browser


def test_page_windows_are_the_taggers_windows(page):
    from keras_mgc.windows import window_starts

    cases = [(n, w, h) for n in (1, 500, 44355, 44356, 44357, 66150, 661794, 1_000_003)
             for w, h in ((44356, 22050), (44356, 44356), (22050, 30000), (1000, 7))]
    got = page.execute_async_script(
        "const [cases, done] = arguments;"
        "import('./js/windows.js').then(m => done(cases.map(([n, w, h]) => m.windowStarts(n, w, h))));", cases)
    for (n, w, h), starts in zip(cases, got):
        assert starts == window_starts(n, w, h), (n, w, h)
    rounding = page.execute_async_script(
        "const done = arguments[0];"
        "import('./js/windows.js').then(m => done([2.5, 3.5, -2.5, 44320.5, 2.01 * 22050, 0.5]"
        ".map(m.roundHalfEven)));")
    assert rounding == [round(x) for x in (2.5, 3.5, -2.5, 44320.5, 2.01 * 22050, 0.5)]


def test_page_segments_are_the_one_segments_algorithm(page):
    segments = pytest.importorskip("keras_mgc.segments", reason="keras_mgc.segments (issue 14) is not on this branch")
    rng = np.random.default_rng(0)
    cases = []
    for n in (1, 2, 5, 40, 200):
        # genre runs with noise, so there are switches, near-ties and short excursions
        base = np.repeat(rng.integers(0, 4, max(1, n // 8)), 8)[:n]
        base = np.pad(base, (0, n - len(base)), mode="edge")
        P = rng.dirichlet(np.ones(4) * 0.7, n) * 0.6
        P[np.arange(n), base] += 0.4
        for h, m in ((0.1, 10.0), (0.0, 0.0), (0.3, 3.0)):
            cases.append((P.tolist(), [i * 1.0 for i in range(n)], 2.01, 1.0, n + 1.01, h, m))
    names = ["a", "b", "c", "d"]
    got = page.execute_async_script(
        "const [cases, names, done] = arguments;"
        "import('./js/segments.js').then(m => done(cases.map(([P, s, W, H, D, h, mm]) =>"
        " m.segmentWindows(P, s, W, H, D, names, h, mm))));", cases, names)
    for case, segs in zip(cases, got):
        P, s, W, H, D, h, m = case
        want = segments.segment_windows(np.array(P), s, W, H, D, names, hysteresis=h, min_segment=m)
        assert [(g["start"], g["end"], g["genre"], g["firstWindow"], g["stopWindow"]) for g in segs] == \
               [(w.start, w.end, w.genre, w.first_window, w.stop_window) for w in want], (len(P), h, m)
        assert np.allclose([g["probability"] for g in segs], [w.probability for w in want], rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- what a listener sees


def test_screenshot_after_tagging_a_mix_of_real_songs(page, gtzan, tmp_path):
    """Three GTZAN clips of different genres back to back: segments, timeline, no frozen tab."""
    clips = [sf.read(sorted((gtzan / g).glob("*.wav"))[0], dtype="float32")[0] for g in ("classical", "metal", "disco")]
    mix = write_wav(tmp_path / "mix.wav", np.concatenate(clips))
    state = tag_in_page(page, mix)
    assert state["state"] == "done", state["error"]
    result = state["document"]["results"][0]
    assert len(result["segments"]) >= 2, result["segments"]
    assert result["segments"][0]["start"] == 0 and result["segments"][-1]["end"] == result["duration"]
    # the worker kept the page responsive: no pause of the page's thread near a second
    assert state["maxStallMs"] < 1000, state["maxStallMs"]
    labels = downloaded(page, "download-labels").splitlines()
    assert [line.split("\t")[2] for line in labels] == [s["genre"] for s in result["segments"]]

    shot = tmp_path / "web_screenshot.png"
    assert page.save_screenshot(str(shot))
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copy(shot, os.environ[SCREENSHOT_ENV])
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"), np.float64)
    assert pixels.std() > 20, "the screenshot is blank"
    # the timeline canvas is drawn: many distinct colours, not a blank box
    canvas = page.find_element("id", "timeline")
    ratio = page.execute_script("return window.devicePixelRatio")
    r = {k: int(v * ratio) for k, v in canvas.rect.items()}
    region = pixels[r["y"]: r["y"] + r["height"], r["x"]: r["x"] + r["width"]]
    assert region.size and len(np.unique(region.reshape(-1, 3), axis=0)) >= len(GENRES), "the timeline is empty"
    # a new minimum segment length re-segments the same windows without running the model again
    page.execute_script("const e = document.getElementById('min-segment'); e.value = '100';"
                        "e.dispatchEvent(new Event('change'));")
    regrouped = json.loads(downloaded(page, "download-json"))["results"][0]
    assert len(regrouped["segments"]) == 1 and regrouped["segments"][0]["end"] == result["duration"]
    assert regrouped["timeline"] == result["timeline"]
    assert json.loads(downloaded(page, "download-json"))["min_segment"] == 100
