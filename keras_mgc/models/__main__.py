"""Print the paper's ECAPA systems: parameter counts (PyTorch counting) and GFLOPs per second of audio.

    python -m keras_mgc.models [--classes 10] [--no-flops] [--json FILE]
"""

from __future__ import annotations

import argparse
import json

from keras_mgc import presets

#: The paper's GTZAN systems (Table 2): presets with the authors' parameter counts.
PAPER_SYSTEMS = [p for p in presets.PRESETS.values() if p.authors_params is not None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count (a few seconds per model)")
    parser.add_argument("--json", help="also write the table as JSON to this file")
    args = parser.parse_args(argv)

    import keras

    from keras_mgc.models import build_model, count_params
    from keras_mgc.models.flops import count_flops

    rows = []
    print(f"{'system':<30} {'params':>12} {'authors':>12} {'GFLOP/s audio':>14} {'of which front end':>19}")
    for preset in PAPER_SYSTEMS:
        keras.backend.clear_session()
        name, cfg, expected = preset.name, preset.model, preset.authors_params
        model = build_model(presets.model_config(name), args.classes)
        params = count_params(model)
        row = {"system": name, "description": preset.description, "config": cfg, "params": params,
               "authors_params": expected}
        gflops = frontend = float("nan")
        if not args.no_flops:
            seconds = 30
            flops = count_flops(model, seconds * model.get_layer("frontend").sample_rate)
            gflops, frontend = flops["total"] / seconds / 1e9, flops["frontend"] / seconds / 1e9
            row.update(gflops_per_second=gflops, frontend_gflops_per_second=frontend)
        rows.append(row)
        mark = "" if args.classes != 10 or params == expected else "  <-- differs"
        print(f"{name:<30} {params:>12,} {expected:>12,} {gflops:>14.2f} {frontend:>19.2f}{mark}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
