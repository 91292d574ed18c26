"""A synthetic corpus shaped like Melon Playlist, so the scale path runs without the real data.

Writes `root/arena_mel/<id // 1000>/<id>.npy` float16 arrays of shape (48, T) and
`root/song_meta.json` with one genre code per song (plus a few multi-genre songs, which
discovery counts and leaves out, as in Melon), the layout `discover_melon` reads.

T is drawn like Melon's arena_mel: the public files are segments of about 20-30 s, most
of them the full length; we assume 1876 frames (30 s at 16 kHz, hop 256, the length
commonly reported for arena_mel files) for 80% of the songs and uniform 1250..1875 frames
(20-30 s) for the rest. That is an assumption, not a measurement of the real corpus
(BUILD_NOTES.md). The values are NOT music: per-genre smooth spectral envelopes plus noise,
in the log-mel range of the real files, so that a model can learn something.

    python -m keras_mgc.data.synthetic_melon OUT_DIR --songs 20000 [--genres 28] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from keras_mgc.data.datasets import MELON_MEL_BINS
from keras_mgc.io import atomic_path, write_text

FULL_FRAMES = 1876
SHORT_FRAMES = (1250, 1875)
FULL_FRACTION = 0.8


def draw_lengths(rng: np.random.Generator, n: int) -> np.ndarray:
    """Frame counts T of `n` songs, drawn as described in the module docstring."""
    short = rng.integers(SHORT_FRAMES[0], SHORT_FRAMES[1] + 1, size=n)
    return np.where(rng.random(n) < FULL_FRACTION, FULL_FRAMES, short).astype(np.int64)


def make_synthetic_melon(root: str | os.PathLike[str], n_songs: int, n_genres: int = 28, seed: int = 0,
                         multi_genre_fraction: float = 0.02, frames: int | None = None) -> Path:
    """Write the corpus (see the module docstring); `frames` fixes T (for small test corpora)."""
    if n_songs < 1 or n_genres < 1:
        raise ValueError(f"need n_songs >= 1 and n_genres >= 1, got {n_songs}, {n_genres}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    lengths = draw_lengths(rng, n_songs) if frames is None else np.full(n_songs, frames, dtype=np.int64)
    genres = rng.integers(0, n_genres, size=n_songs)
    codes = [f"GN{(g + 1) * 100:04d}" for g in range(n_genres)]
    bins = np.arange(MELON_MEL_BINS)[:, None]
    envelopes = [np.sin(bins / MELON_MEL_BINS * np.pi * (1 + g % 5)) * 2.0 + (g // 5) * 0.3 for g in range(n_genres)]
    songs = []
    for sid in range(n_songs):
        g = int(genres[sid])
        t = int(lengths[sid])
        mel = envelopes[g] + rng.standard_normal((MELON_MEL_BINS, t), dtype=np.float32) - 4.0
        folder = root / "arena_mel" / str(sid // 1000)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / f"{sid}.npy") as tmp:
            np.save(tmp, mel.astype(np.float16))
        basket = [codes[g]]
        if rng.random() < multi_genre_fraction:
            basket.append(codes[(g + 1) % n_genres])
        songs.append({"id": sid, "song_gn_gnr_basket": basket, "song_name": f"synthetic {sid}"})
    write_text(root / "song_meta.json", json.dumps(songs))
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m keras_mgc.data.synthetic_melon", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root")
    parser.add_argument("--songs", type=int, default=20000)
    parser.add_argument("--genres", type=int, default=28)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    make_synthetic_melon(args.root, args.songs, args.genres, args.seed)
    print(f"{args.root}: {args.songs} synthetic Melon-shaped songs, {args.genres} genres")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
