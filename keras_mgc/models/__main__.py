"""Every published row of the paper: parameters (PyTorch counting), GFLOPs per second of audio, accuracy.

    python -m keras_mgc.models [--no-flops] [--classes N] [--json FILE]

One line per row of Table 2 (GTZAN, 10 classes, raw audio: the front end's share of the
FLOPs is shown) and Table 3 (Melon Playlist, 28 classes, mel input), in the paper's order:
the model built from the row's preset, its trainable parameters beside the authors' count
(where known for that number of classes), GFLOPs per second of audio (30 s of input; a
fixed-length model such as VGG: one window, divided by its length) and the published
accuracy (keras_mgc.paper).
"""

from __future__ import annotations

import argparse
import json

from keras_mgc import paper, presets

#: Presets with the authors' parameter counts (the paper's systems whose counts are known).
PAPER_SYSTEMS = [p for p in presets.PRESETS.values() if p.authors_params is not None]
#: Classes of each table's dataset.
TABLE_CLASSES = {"gtzan": 10, "melon": 28}
SECONDS = 30


def measure(row: paper.PaperRow, classes: int, flops: bool) -> dict:
    """Parameters (and FLOPs) of one published row's model."""
    import keras

    from keras_mgc.models import build_model, count_params

    preset = presets.get(row.preset)
    keras.backend.clear_session()
    cfg = presets.model_config(row.preset)
    model = build_model(cfg, classes)
    authors = preset.authors_params if preset.authors_classes == classes else None
    out = {"ref": row.ref, "system": row.system, "dataset": row.dataset, "preset": row.preset, "classes": classes,
           "params": count_params(model), "authors_params": authors, "published_accuracy": row.accuracy,
           "evaluation": row.eval_mode}
    if flops:
        from keras_mgc.models.flops import count_flops

        hop, rate = cfg.frontend.hop_length, cfg.frontend.sample_rate
        length = cfg.fixed_input_length()
        if length is None:
            length = SECONDS * rate if cfg.input == "waveform" else 1 + SECONDS * rate // hop
            seconds = float(SECONDS)
        else:  # one window of a fixed-length model
            seconds = cfg.fixed_samples() / rate
        counted = count_flops(model, length)
        out.update(gflops_per_second=counted["total"] / seconds / 1e9,
                   frontend_gflops_per_second=counted["frontend"] / seconds / 1e9,
                   flops_input=f"{length} {'samples' if cfg.input == 'waveform' else 'frames'}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, help="classes of every model (default: 10 for GTZAN rows, 28 for Melon)")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count (a few seconds per model)")
    parser.add_argument("--json", help="also write the table as JSON to this file")
    args = parser.parse_args(argv)

    rows = []
    print(f"{'row':<4} {'system':<42} {'preset':<28} {'cls':>3} {'params':>11} {'authors':>11} "
          f"{'GFLOP/s':>8} {'frontend':>8} {'paper %':>7}")
    for row in paper.rows():
        classes = args.classes or TABLE_CLASSES[row.dataset]
        out = measure(row, classes, not args.no_flops)
        rows.append(out)
        authors = f"{out['authors_params']:,}" if out["authors_params"] else "-"
        mark = "  <-- differs" if out["authors_params"] and out["authors_params"] != out["params"] else ""
        gflops, frontend = out.get("gflops_per_second", float("nan")), out.get("frontend_gflops_per_second", float("nan"))
        system = row.system if row.eval_mode == "whole" or "TTA" in row.system else f"{row.system} ({row.eval_mode})"
        print(f"{row.ref:<4} {system[:42]:<42} {row.preset:<28} {classes:>3} {out['params']:>11,} {authors:>11} "
              f"{gflops:>8.2f} {frontend:>8.2f} {row.accuracy:>7.1f}{mark}")
    print("GFLOP/s: per second of audio (30 s input; VGG: one 200-frame window); frontend: the log-mel front "
          "end's share (Melon models take mels). TTA (#16) runs 16 crops of 2.01 s per clip.")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
