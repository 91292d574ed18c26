"""Genre tagging in the browser: the static page in web/ and a local server for it.

    python -m keras_mgc.web --prepare                  # once: ONNX Runtime Web into web/vendor/ (npm ci)
    python -m keras_mgc.web --model DIR [--port N]     # serve the page + DIR on http://127.0.0.1:N/
    python -m keras_mgc.web --model DIR --site OUT     # a static folder to put on any web host

The page (web/index.html, web/js/) runs the exporter's ONNX waveform model with
onnxruntime-web (WebAssembly, one thread, in a Web Worker) on the listener's machine: the
song is decoded by the browser (Web Audio), resampled to the model's rate, cut into the
Python tagger's windows (keras_mgc/windows.py), and the page shows the whole-song genres, a
timeline of the per-window probabilities, the genre segments (keras_mgc/segments.py's
algorithm) and the tagger's --json document to download. Nothing is sent anywhere.

DIR is an export folder (``python -m keras_mgc.export``: its ``onnx/`` folder is used) or a folder
holding ``model.onnx`` with its metadata ``model.json`` (class_names, sample_rate,
crop_samples) and ``labels.txt``. The server refuses to start, with the reason, when the
page's ONNX Runtime files were not prepared or the model folder lacks them or the metadata.

Why npm: ONNX Runtime Web is published only on npm. web/package.json pins its version and
web/package-lock.json the integrity hashes of every file, so ``npm ci`` fetches exactly the
verified release; the three runtime files the page needs are then copied into web/vendor/
(neither node_modules nor the binaries are committed). The page loads nothing from a CDN.

Exit codes: 0 served / prepared; 1 the preparation failed (npm); 2 usage error (bad
arguments, assets not prepared, unusable model folder); 4 the disk filled up while writing
(keras_mgc.io.disk_full_guard, as every command).
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import posixpath
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: The page's source folder (like recipes/, it sits at the repository root).
PAGE_DIR = Path(__file__).resolve().parents[1] / "web"
#: Where `--prepare` copies ONNX Runtime Web, relative to the page (js/worker.js imports from it).
VENDOR = Path("vendor") / "onnxruntime-web"
#: The files of onnxruntime-web's dist/ that the page needs: the WebAssembly-only ES module
#: build, and the single-binary SIMD runtime it loads (the threaded build runs one thread here).
VENDOR_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
PACKAGE = "onnxruntime-web"
#: The page's own files, copied by --site.
PAGE_FILES = ("index.html", "style.css", "js")
MODEL_FILES = ("model.onnx", "model.json", "labels.txt")
MODEL_URL = "/model/"
MIME_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".onnx": "application/octet-stream",
    ".txt": "text/plain; charset=utf-8",
}
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_PROG = "keras_mgc.web"


class WebError(ValueError):
    """Something the user can fix: assets not prepared, an unusable model folder, bad arguments."""


# --------------------------------------------------------------------------- ONNX Runtime Web


def pinned_version(page_dir: Path = PAGE_DIR) -> str:
    """The onnxruntime-web version web/package.json pins (the one place it is written)."""
    package_json = page_dir / "package.json"
    try:
        version = json.loads(package_json.read_text(encoding="utf-8"))["dependencies"][PACKAGE]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WebError(f"{package_json}: cannot read the pinned {PACKAGE} version ({exc})") from exc
    return str(version)


def prepare(page_dir: Path = PAGE_DIR, npm: str | None = None) -> Path:
    """Install the pinned onnxruntime-web with ``npm ci`` and copy its runtime files beside the page.

    Returns the vendor folder. Raises WebError when npm is missing and RuntimeError when
    npm fails or installs another version than the one pinned.
    """
    npm = npm or shutil.which("npm")
    if not npm:
        raise WebError("npm not found: install Node.js with npm (Debian: apt-get install npm), "
                       f"then run python -m {_PROG} --prepare")
    version = pinned_version(page_dir)
    cmd = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
    proc = subprocess.run(cmd, cwd=page_dir, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd[1:])}` in {page_dir} failed ({proc.returncode}):\n{proc.stderr.strip()}")
    package_dir = page_dir / "node_modules" / PACKAGE
    installed = json.loads((package_dir / "package.json").read_text(encoding="utf-8"))["version"]
    if installed != version:
        raise RuntimeError(f"npm installed {PACKAGE} {installed}, but web/package.json pins {version}")
    vendor = page_dir / VENDOR
    vendor.mkdir(parents=True, exist_ok=True)
    for name in VENDOR_FILES:
        shutil.copy2(package_dir / "dist" / name, vendor / name)
    licence = package_dir / "LICENSE"
    if licence.is_file():
        shutil.copy2(licence, vendor / "LICENSE")
    (vendor / "VERSION").write_text(f"{PACKAGE} {version}\n", encoding="utf-8")
    return vendor


def check_assets(page_dir: Path = PAGE_DIR) -> None:
    """WebError unless the page and the prepared ONNX Runtime files of the pinned version are there."""
    missing = [name for name in ("index.html", "js/app.js", "js/worker.js") if not (page_dir / name).is_file()]
    if missing:
        raise WebError(f"{page_dir}: the page's files are missing: {', '.join(missing)}")
    vendor = page_dir / VENDOR
    missing = [name for name in VENDOR_FILES if not (vendor / name).is_file()]
    if missing:
        raise WebError(f"{vendor}: ONNX Runtime Web is not prepared (missing {', '.join(missing)}); "
                       f"run: python -m {_PROG} --prepare  (needs npm)")
    stamp = vendor / "VERSION"
    want = f"{PACKAGE} {pinned_version(page_dir)}"
    have = stamp.read_text(encoding="utf-8").strip() if stamp.is_file() else "an unknown version"
    if have != want:
        raise WebError(f"{vendor} holds {have} but web/package.json pins {want}; "
                       f"run: python -m {_PROG} --prepare")


# --------------------------------------------------------------------------- the model folder


def model_folder(path: str | os.PathLike[str]) -> Path:
    """The folder with model.onnx + model.json for `path` (an export folder or its onnx/ folder).

    Raises WebError naming what is missing or wrong; the metadata is checked as the tagger
    checks it (keras_mgc.tag.load_metadata), and must give the sample rate and crop itself.
    """
    from keras_mgc.tag import TaggerError, load_metadata

    root = Path(path)
    if not root.is_dir():
        raise WebError(f"model folder not found: {root}")
    folder = root if (root / "model.onnx").is_file() else root / "onnx"
    if not (folder / "model.onnx").is_file():
        raise WebError(f"{root}: no model.onnx (nor onnx/model.onnx): the page runs the exporter's ONNX "
                       "waveform model; export with: python -m keras_mgc.export --run RUN --formats onnx")
    meta_path = folder / "model.json"
    if not meta_path.is_file():
        raise WebError(f"{folder}: no model.json beside model.onnx: the page needs the exporter's metadata "
                       "(class_names, sample_rate, crop_samples) and will not guess the sample rate and window")
    try:
        load_metadata(folder / "model.onnx")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except TaggerError as exc:
        raise WebError(str(exc)) from exc
    absent = [key for key in ("sample_rate", "crop_samples") if key not in meta]
    if absent:
        raise WebError(f"{meta_path}: missing {', '.join(repr(k) for k in absent)} (the page will not guess them)")
    return folder


# --------------------------------------------------------------------------- serving


class PageHandler(http.server.SimpleHTTPRequestHandler):
    """The page's files at /, the model folder at /model/, with the right MIME types."""

    page_dir: Path = PAGE_DIR
    model_dir: Path | None = None
    quiet: bool = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, directory=os.fspath(self.page_dir), **kwargs)

    def translate_path(self, path: str) -> str:
        url_path = posixpath.normpath(urllib.parse.unquote(urllib.parse.urlsplit(path).path))
        if self.model_dir is not None and (url_path + "/").startswith(MODEL_URL):
            name = url_path[len(MODEL_URL):].strip("/")
            # only the model's own files, never anything else from its folder
            return os.fspath(self.model_dir / name) if name in MODEL_FILES else os.fspath(self.model_dir / "__not_served__")
        return super().translate_path(path)

    def guess_type(self, path: str | os.PathLike[str]) -> str:
        return MIME_TYPES.get(Path(path).suffix.lower()) or super().guess_type(path)

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        if not self.quiet:
            super().log_message(format, *args)


def make_server(model_dir: Path, port: int = 8000, page_dir: Path = PAGE_DIR,
                quiet: bool = True) -> http.server.ThreadingHTTPServer:
    """A server on 127.0.0.1:`port` (0: any free port) for the page and `model_dir`.

    Checks the assets and the model folder first (WebError).
    """
    check_assets(page_dir)
    folder = model_folder(model_dir)
    handler = type("Handler", (PageHandler,), {"page_dir": page_dir, "model_dir": folder, "quiet": quiet})
    try:
        return http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as exc:
        raise WebError(f"cannot listen on 127.0.0.1:{port} ({exc.strerror or exc}); try another --port") from exc


def write_site(model_dir: Path, out: Path, page_dir: Path = PAGE_DIR) -> Path:
    """A self-contained static folder: the page, ONNX Runtime Web and the model in out/model/."""
    check_assets(page_dir)
    folder = model_folder(model_dir)
    if out.exists() and any(out.iterdir()):
        raise WebError(f"{out}: exists and is not empty; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    for name in PAGE_FILES:
        src = page_dir / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, out / name)
    shutil.copytree(page_dir / VENDOR, out / VENDOR)
    (out / "model").mkdir()
    for name in MODEL_FILES:
        if (folder / name).is_file():
            shutil.copy2(folder / name, out / "model" / name)
    return out


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m {_PROG}",
        description="Genre tagging in the browser: serve the page with an exported model on 127.0.0.1.",
        epilog="Exit codes: 0 ok, 1 --prepare failed, 2 usage error (assets not prepared, unusable model folder).",
    )
    add = parser.add_argument
    add("--model", help="export folder (its onnx/ is used) or a folder with model.onnx, model.json, labels.txt")
    add("--port", type=int, default=8000, help="port on 127.0.0.1 (default %(default)s; 0: any free port)")
    add("--prepare", action="store_true", help=f"install the pinned {PACKAGE} with npm ci into web/vendor/")
    add("--site", metavar="OUT", help="write a static folder (page + runtime + model) instead of serving")
    add("--verbose", action="store_true", help="log every request")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.prepare and not args.model:
        parser.error("give --model DIR (to serve or write a site) and/or --prepare")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be 0-65535, got {args.port}")
    try:
        if args.prepare:
            vendor = prepare()
            print(f"{PACKAGE} {pinned_version()} prepared in {vendor}", flush=True)
            if not args.model:
                return EXIT_OK
        if args.site:
            out = write_site(Path(args.model), Path(args.site))
            print(f"static site written to {out} (open it through any web server; file:// cannot load modules)")
            return EXIT_OK
        server = make_server(Path(args.model), args.port, quiet=not args.verbose)
    except WebError as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    host, port = server.server_address[:2]
    print(f"Serving the genre page on http://{host}:{port}/ (model: {server.RequestHandlerClass.model_dir}); "
          "Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return EXIT_OK


if __name__ == "__main__":
    from keras_mgc.io import disk_full_guard

    sys.exit(disk_full_guard(_PROG, checkpoints=False)(main)())
