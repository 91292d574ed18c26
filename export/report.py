"""The export report: report.json (everything) and report.md (one table). No TensorFlow."""

from __future__ import annotations

from typing import Any

__all__ = ["table", "markdown"]


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def _num(x: Any, fmt: str = ".2e") -> str:
    return "-" if x is None else format(x, fmt)


def _pct(x: Any) -> str:
    return "-" if x is None else f"{x:.1%}"


def _ms(x: Any) -> str:
    return "-" if x is None else f"{x:.1f}"


def table(report: dict[str, Any]) -> str:
    """Markdown table: one row per artifact (the reference Keras model first)."""
    threads = report.get("latency", {}).get("threads", [1])
    head = ["artifact", "precision", "size", "max abs diff (wave / mel)", "top-1 agreement (wave / mel)"]
    head += [f"latency 30 s, {t} thread{'s' if t > 1 else ''} (ms)" for t in threads]
    head += ["status"]
    rows = [head, ["---"] * len(head)]
    ref = report.get("reference") or {}
    if ref:
        lat = ref.get("latency_ms") or {}
        rows.append(["keras (reference)", "float32, float64 DFT", "-", "0 / 0", "100% / 100%"]
                    + [_ms(lat.get(str(t))) for t in threads] + ["reference"])
    for art in report.get("artifacts", []):
        entries = art.get("entries") or {}
        diff = " / ".join(_num(entries.get(e, {}).get("max_abs_diff")) for e in ("waveform", "mel"))
        agree = " / ".join(_pct(entries.get(e, {}).get("top1_agreement")) for e in ("waveform", "mel"))
        lat = art.get("latency_ms") or {}
        status = "PASS" if art.get("passed") else ("ERROR" if art.get("error") else "FAIL")
        rows.append([art["name"], art.get("precision", "-"), _size(art.get("size_bytes")), diff, agree]
                    + [_ms(lat.get(str(t))) for t in threads] + [status])
    return "\n".join("| " + " | ".join(str(c) for c in row) + " |" for row in rows) + "\n"


def markdown(report: dict[str, Any]) -> str:
    ev = report.get("evaluation", {})
    lines = [f"# Export report: {report.get('model_name')} v{report.get('version')}", ""]
    lines.append(f"Status: **{report.get('status', '?').upper()}**; created {report.get('created')}; "
                 f"source `{report.get('source', {}).get('checkpoint')}` (fold {report.get('source', {}).get('fold')}).")
    lines.append("")
    if ev.get("source") == "generated":
        lines += ["**NO REAL CLIPS: verified on generated signals (not music); weak evidence.**", ""]
    lines.append(
        f"Compared with the Keras model (float32, float64 DFT) on {ev.get('n_whole', 0)} whole clips and "
        f"{ev.get('n_crops', 0)} crops of {ev.get('crop_samples')} samples from {ev.get('origin') or ev.get('source')}, "
        "through the waveform entry point and through the mel entry point (log-mels of the same audio). "
        f"Latency: one {report.get('latency', {}).get('clip_seconds', 30):g} s clip "
        f"({report.get('latency', {}).get('clip')}), median of {report.get('latency', {}).get('runs')} runs; "
        f"load average at the start {report.get('host', {}).get('loadavg')} on {report.get('host', {}).get('cpu_count')} CPUs."
    )
    lines += ["", table(report)]
    th = report.get("thresholds", {})
    lines.append("Thresholds: float32 artifacts max |dp| <= "
                 f"{th.get('max_abs_diff_float32')}; minimum top-1 agreement per precision "
                 + ", ".join(f"{k} {v:.0%}" for k, v in (th.get("min_top1_agreement") or {}).items()) + ".")
    skipped = ev.get("skipped", []) + report.get("representative", {}).get("skipped", [])
    if skipped:
        lines += ["", "Skipped inputs:", ""] + [f"- `{s['path']}`: {s['reason']}" for s in skipped]
    failures = report.get("failures") or []
    if failures:
        lines += ["", "Failures:", ""] + [f"- {f}" for f in failures]
    if report.get("serving", {}).get("docker_run"):
        lines += ["", "Serve the SavedModel:", "", "```sh", report["serving"]["docker_run"], "```"]
    lines += ["", f"Reproduce: `{report.get('command')}`", ""]
    return "\n".join(lines)
