"""Classify audio with MediaPipe Tasks' AudioClassifier, as an app would; print JSON.

Run by tests/test_mediapipe.py in a child process (MediaPipe and TensorFlow each bundle their
own TFLite runtime, so they are kept out of one process), with the venv's Python or with
``.venv-mediapipe/bin/python`` where MediaPipe lives apart. Imports no keras_mgc code.

    python tests/mediapipe_classify.py --model model_task_float32.tflite --mode clips \
        --sample-rate 22050 a.npy b.npy

Each .npy is mono float32 audio at --sample-rate. Output: one JSON object
{"<file>": [{"timestamp_ms": int, "scores": [score of class 0, 1, ...]}, ...]}.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--mode", choices=("clips", "stream"), required=True)
    parser.add_argument("--sample-rate", type=int, required=True)
    parser.add_argument("--block", type=int, default=4096, help="samples per stream block")
    parser.add_argument("audio", nargs="+")
    args = parser.parse_args(argv)

    from mediapipe.tasks.python import audio
    from mediapipe.tasks.python.audio.core import audio_task_running_mode
    from mediapipe.tasks.python.components.containers import audio_data as audio_data_mod
    from mediapipe.tasks.python.core import base_options as base_options_mod

    AudioData = audio_data_mod.AudioData
    AudioDataFormat = audio_data_mod.AudioDataFormat
    modes = audio_task_running_mode.AudioTaskRunningMode

    def scores(result) -> list[float]:
        (head,) = result.classifications
        out = [0.0] * len(head.categories)
        for category in head.categories:
            out[category.index] = float(category.score)
        return out

    results: dict[str, list[dict]] = {}
    for path in args.audio:
        samples = np.load(path).astype(np.float32)
        found: list[dict] = []
        if args.mode == "clips":
            options = audio.AudioClassifierOptions(
                base_options=base_options_mod.BaseOptions(model_asset_path=args.model),
                running_mode=modes.AUDIO_CLIPS, max_results=-1)
            with audio.AudioClassifier.create_from_options(options) as classifier:
                data = AudioData.create_from_array(samples, args.sample_rate)
                for result in classifier.classify(data):
                    found.append({"timestamp_ms": int(result.timestamp_ms), "scores": scores(result)})
        else:
            def collect(result, timestamp_ms: int) -> None:
                found.append({"timestamp_ms": int(timestamp_ms), "scores": scores(result)})

            options = audio.AudioClassifierOptions(
                base_options=base_options_mod.BaseOptions(model_asset_path=args.model),
                running_mode=modes.AUDIO_STREAM, max_results=-1, result_callback=collect)
            with audio.AudioClassifier.create_from_options(options) as classifier:
                for start in range(0, len(samples), args.block):
                    block = samples[start : start + args.block]
                    data = AudioData(len(block), AudioDataFormat(1, args.sample_rate))
                    data.load_from_array(block)
                    classifier.classify_async(data, round(start * 1000 / args.sample_rate))
        results[path] = found
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
