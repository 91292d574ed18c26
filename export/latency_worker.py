"""Child process for SavedModel latency with a given number of TensorFlow threads.

TensorFlow sizes its thread pools once per process, so `keras_mgc.export.verify` measures the
one-thread latency here: ``python -m keras_mgc.export.latency_worker --saved-model DIR --input clip.npy
--threads 1 --runs 5`` prints one JSON line {"median_s": ..., "times_s": [...]}.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from keras_mgc.timing import timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m keras_mgc.export.latency_worker")
    parser.add_argument("--saved-model", required=True)
    parser.add_argument("--input", required=True, help=".npy file, float32 (batch, samples)")
    parser.add_argument("--signature", default="serving_default")
    parser.add_argument("--input-name", default="waveform")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    x = tf.constant(np.load(args.input).astype(np.float32))
    fn = tf.saved_model.load(args.saved_model).signatures[args.signature]
    t = timings(lambda: fn(**{args.input_name: x})["probabilities"].numpy(), args.runs)
    print(json.dumps({"median_s": t["median"], "timings": t, "threads": args.threads}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
