"""Spectrum candidates for the TFLite front end: float32 error and 2-thread latency, one run.

    python scripts/frontend_candidates.py [--out bench_results/frontend_candidates.json] [NAME ...]

Why this exists: issue 14 asked for a front end at least 3x cheaper in TFLite, with builtin
ops only and float32 parity with the float64 reference. This script times every spectrum
formulation tried (BUILD_NOTES.md "The 3x target, measured on a quiet machine"), each converted
for a fixed 30 s input (XNNPACK delegates such a graph whole), and measures its worst log-mel
error on the GTZAN clips where float32 is worst (needs ../shared/data; the error column is
left empty without it):

- ``dense``: the 512 x 2046 DFT table (the artifacts before issue 14);
- ``folded``: the window-symmetric halves (`LogMelSpectrogram(spectrum="matmul")`, used now);
- ``rfft2d``: `tf.signal.rfft`, which the converter lowers to the builtin RFFT2D;
- ``fourstep_PxQ``: a 2048-point four-step (Cooley-Tukey) FFT in two matrix products, the
  twiddles folded into a batch matmul over the Q inner samples (P x Q = 2048).

Prints a table and writes JSON. Reads the repository's own modules; run from a checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_mgc.bench import tflite_interpreter  # noqa: E402
from keras_mgc.frontend import (LogMelSpectrogram, frames_from_blocks, hop_blocks, mel_filterbank,  # noqa: E402
                                periodic_hann, subtract_time_mean)
from keras_mgc.timing import timings  # noqa: E402

N_FFT, WIN, HOP, N_MELS = 2048, 512, 256, 48
CLIP = 30 * 22050


def _logmel(power: tf.Tensor, mel: np.ndarray) -> tf.Tensor:
    return subtract_time_mean(tf.math.log(tf.matmul(power, tf.constant(mel, tf.float32)) + 1e-6))


FBANK = mel_filterbank(22050, N_FFT, N_MELS)
USED = np.flatnonzero(FBANK.any(axis=1))
K0, K1 = int(USED[0]), int(USED[-1]) + 1


def fourstep(p: int, q: int):
    """X[c + p d] = sum_b W_q^{bd} W_N^{bc} sum_a y[a q + b] W_p^{ac}; only 512 / q values of a are non-zero."""
    a, b, c = np.arange(WIN // q), np.arange(q), np.arange(p)
    d = np.arange(N_FFT // 2 // p + 1)  # bins up to N/2 only
    window = periodic_hann(WIN).reshape(-1, q)  # w[a q + b]
    phase = 2 * np.pi * (np.outer(a, c)[None] / p + np.outer(b, c)[:, None, :] / N_FFT)  # (q, a, c)
    stage1 = np.concatenate([window.T[:, :, None] * np.cos(phase), -window.T[:, :, None] * np.sin(phase)], -1)
    cos, sin = np.cos(2 * np.pi * np.outer(b, d) / q), np.sin(2 * np.pi * np.outer(b, d) / q)
    stage2 = np.block([[cos, -sin], [sin, cos]])  # [re, im] over b -> [re, im] over d
    k = (c[:, None] + p * d[None, :]).reshape(-1)
    mel = np.zeros((k.size, N_MELS))
    inside = (k >= K0) & (k < K1)
    mel[inside] = FBANK[k[inside]]  # the permuted bins' filter rows

    def spectrum(w: tf.Tensor) -> tf.Tensor:
        frames = frames_from_blocks(hop_blocks(w, HOP))
        batch, n_frames = tf.shape(frames)[0], tf.shape(frames)[1]
        y = tf.transpose(tf.reshape(frames, [batch * n_frames, WIN // q, q]), [2, 0, 1])  # (q, frames, a)
        s1 = tf.matmul(y, tf.constant(stage1, tf.float32))  # (q, frames, 2p), twiddles included
        s1 = tf.reshape(tf.transpose(tf.reshape(s1, [q, -1, 2, p]), [1, 3, 2, 0]), [-1, p, 2 * q])
        x = tf.matmul(s1, tf.constant(stage2, tf.float32))  # (frames, p, 2 len(d))
        power = x[..., : d.size] ** 2 + x[..., d.size:] ** 2
        return _logmel(tf.reshape(power, [batch, n_frames, k.size]), mel)

    return spectrum


CANDIDATES = {
    "dense": LogMelSpectrogram(dft_precision="float32", spectrum="dense"),
    "folded": LogMelSpectrogram(dft_precision="float32", spectrum="matmul"),
    "rfft2d": LogMelSpectrogram(dft_precision="float32", spectrum="fft"),  # lowered to the builtin RFFT2D
    **{f"fourstep_{p}x{q}": fourstep(p, q) for p, q in ((64, 32), (128, 16), (256, 8), (32, 64))},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"candidates (default: all of {', '.join(CANDIDATES)})")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "gtzan-mini"))
    parser.add_argument("--out", default="bench_results/frontend_candidates.json")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in CANDIDATES]
    if unknown:
        parser.error(f"unknown candidates {unknown}; known: {list(CANDIDATES)}")
    clips = []
    if Path(args.data).is_dir():
        import soundfile as sf

        from tests.reference_frontend import WORST_FLOAT32, reference_logmel

        for clip in WORST_FLOAT32:
            audio, _ = sf.read(Path(args.data) / f"{clip}.wav", dtype="float64")
            clips.append((clip, audio, reference_logmel(audio)))
    x = (np.random.default_rng(0).standard_normal((1, CLIP)) * 0.1).astype(np.float32)
    results = {}
    print(f"| candidate | max log-mel error, float32 | 30 s clip, ms ({args.threads} threads, p10-p90) |")
    print("|---|---|---|")
    for name in args.names or CANDIDATES:
        fn = CANDIDATES[name]
        errors = []
        for _, audio, ref in clips:
            samples = audio[None].astype(np.float32)
            interpreter = tflite_interpreter(fn, samples.shape, samples, args.threads)
            interpreter.invoke()
            output = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
            errors.append(float(np.abs(output[0] - ref).max()))
        interpreter = tflite_interpreter(fn, x.shape, x, args.threads)
        t = timings(interpreter.invoke, args.repeats, warmup=3)
        results[name] = {"max_error": max(errors) if errors else None, "clip_s": t}
        err = f"{max(errors):.1e}" if errors else "-"
        print(f"| {name} | {err} | {1e3 * t['median']:.1f} ({1e3 * t['p10']:.1f}-{1e3 * t['p90']:.1f}) |", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"threads": args.threads, "clips": [name for name, _, _ in clips],
                               "results": results}, indent=2) + "\n")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
