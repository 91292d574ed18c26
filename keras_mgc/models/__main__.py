"""Print the paper's ECAPA systems: parameter counts (PyTorch counting) and GFLOPs per second of audio.

    python -m keras_mgc.models [--classes 10] [--no-flops] [--json FILE]
"""

from __future__ import annotations

import argparse
import json

from keras_mgc.config import ECAPAConfig

#: The paper's GTZAN systems (Table 2) as model configurations, with the authors' parameter counts.
PAPER_SYSTEMS: dict[str, tuple[dict, int]] = {
    "#8 ECAPA-TDNN C=1024": ({"channels": 1024}, 14_721_054),
    "#9 CCS s=512 c=512": ({"channels": 512, "ccs": {"stop": 512}}, 13_851_678),
    "#10 CCS s=256 c=768": ({"channels": 768, "ccs": {"stop": 256}}, 15_860_766),
    "#11 CCS s=256 c=1024": ({"channels": 1024, "ccs": {"stop": 256}}, 24_386_046),
    "#12 CCS s=512 c=1024": ({"channels": 1024, "ccs": {"stop": 512}}, 31_424_478),
    "#13 CCS+FSA s=256 c=768": ({"channels": 768, "ccs": {"stop": 256}, "fsa": {"enabled": True}}, 12_218_990),
    "#14 CCS+FSA s=256 c=1024": ({"channels": 1024, "ccs": {"stop": 256}, "fsa": {"enabled": True}}, 19_600_574),
    "#15 CCS+FSA s=512 c=1024": ({"channels": 1024, "ccs": {"stop": 512}, "fsa": {"enabled": True}}, 21_722_270),
}


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
    print(f"{'system':<28} {'params':>12} {'authors':>12} {'GFLOP/s audio':>14} {'of which front end':>19}")
    for name, (cfg, expected) in PAPER_SYSTEMS.items():
        keras.backend.clear_session()
        model = build_model(ECAPAConfig(**cfg), args.classes)
        params = count_params(model)
        row = {"system": name, "config": cfg, "params": params, "authors_params": expected}
        gflops = frontend = float("nan")
        if not args.no_flops:
            seconds = 30
            flops = count_flops(model, seconds * model.get_layer("frontend").sample_rate)
            gflops, frontend = flops["total"] / seconds / 1e9, flops["frontend"] / seconds / 1e9
            row.update(gflops_per_second=gflops, frontend_gflops_per_second=frontend)
        rows.append(row)
        mark = "" if args.classes != 10 or params == expected else "  <-- differs"
        print(f"{name:<28} {params:>12,} {expected:>12,} {gflops:>14.2f} {frontend:>19.2f}{mark}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
