"""``benchmarks/RESULTS.md`` and its plots, written from the results of one run (``results.json``).

``python -m benchmarks.report benchmarks/out/results.json`` rewrites the report from saved results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after matplotlib.use: the backend must be chosen before pyplot loads

from alpr.spec import ENSEMBLE_NAME
from benchmarks.rounds import ENSEMBLE, SGEMM_SIZE, Rounds

DESIGN_LABELS = {
    "ensemble": "ensemble (product)",
    "bls": "BLS baseline (reference design)",
    "floor": "in-process floor (onnxruntime)",
}
DESIGN_STYLES = {"ensemble": "o-", "bls": "s--", "floor": "^:"}
PERCENTILES = ("p50", "p90", "p99")
STEP_PARTS = (
    ("queue_ms", "queue"),
    ("compute_input_ms", "compute input"),
    ("compute_infer_ms", "compute infer"),
    ("compute_output_ms", "compute output"),
)
# Acceptance targets of the serving design.
TARGET_CONCURRENCY_THROUGHPUT = 8
TARGET_ENSEMBLE_OVER_BLS = 1.5
TARGET_ENSEMBLE_OVER_FLOOR = 0.75
TARGET_CONCURRENCY_LATENCY = 1
TARGET_P50_OVER_FLOOR = 1.3
# Targets on the medians of the interleaved rounds (benchmarks/rounds.py), each also within ROUNDS_MAX_SPREAD.
ROUND_TARGETS = {
    "ensemble / floor": 0.9,
    "ensemble / BLS": 1.5,
    "ensemble / detector alone": 0.85,
    "image files / raw pixels": 0.9,
}
ROUNDS_MAX_SPREAD = 0.10
# The preprocess step's share of the server's busy time per image, and how much smaller an image file must be.
TARGET_PREPROCESS_SHARE = 0.05
TARGET_REQUEST_SHRINK = 10.0
PLOT_FILES = {
    "throughput": "throughput.png",
    "latency": "latency.png",
    "breakdown": "step_breakdown.png",
    "scaling": "scaling.png",
}


# ---------------------------------------------------------------------------------------------------------------------
# Looking things up in the results


def _by_concurrency(results: dict[str, Any], design: str) -> dict[int, dict[str, Any]]:
    """Completed measurements of ``design`` per concurrency (served designs nest them under ``measurement``)."""
    rows = {}
    for entry in results.get(design) or []:
        measurement = entry.get("measurement", entry)
        if measurement:
            rows[int(measurement["concurrency"])] = measurement
    return rows


def _failures(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, entry) of every served measurement that did not complete."""
    entries = [(DESIGN_LABELS[design], entry) for design in ("ensemble", "bls") for entry in results.get(design) or []]
    shm = results.get("shared_memory") or {}
    if shm.get("shm_error"):
        entries.append(("ensemble, system shared memory", {"concurrency": None, "error": shm["shm_error"]}))
    for sweep, points in (results.get("scaling") or {}).items():
        if isinstance(points, list):
            entries += [(f"scaling by {sweep}: {point['label']}", point) for point in points]
    return [(where, entry) for where, entry in entries if entry.get("error")]


def _steps(results: dict[str, Any], design: str, concurrency: int) -> list[dict[str, Any]]:
    for entry in results.get(design) or []:
        if int(entry["concurrency"]) == concurrency:
            return entry.get("steps", [])
    return []


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def _value(rows: dict[int, dict[str, Any]], concurrency: int, key: str) -> float | None:
    row = rows.get(concurrency)
    return None if row is None else float(row[key])


def _fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{suffix}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def reference_concurrency(results: dict[str, Any]) -> int:
    """The concurrency the breakdown is shown at: the throughput target's if measured, else the highest."""
    measured = sorted(_by_concurrency(results, "ensemble"))
    if not measured:
        return TARGET_CONCURRENCY_THROUGHPUT
    return TARGET_CONCURRENCY_THROUGHPUT if TARGET_CONCURRENCY_THROUGHPUT in measured else measured[-1]


# ---------------------------------------------------------------------------------------------------------------------
# Acceptance targets


def acceptance(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its measured ratio and whether it is met (None when not measured)."""
    ensemble, bls, floor = (_by_concurrency(results, design) for design in ("ensemble", "bls", "floor"))
    high, low = TARGET_CONCURRENCY_THROUGHPUT, TARGET_CONCURRENCY_LATENCY
    checks = [
        (
            "throughput_vs_bls",
            f"throughput at concurrency {high}: ensemble / BLS >= {TARGET_ENSEMBLE_OVER_BLS}",
            _ratio(_value(ensemble, high, "throughput"), _value(bls, high, "throughput")),
            TARGET_ENSEMBLE_OVER_BLS,
            True,
        ),
        (
            "throughput_vs_floor",
            f"throughput at concurrency {high}: ensemble / floor >= {TARGET_ENSEMBLE_OVER_FLOOR}",
            _ratio(_value(ensemble, high, "throughput"), _value(floor, high, "throughput")),
            TARGET_ENSEMBLE_OVER_FLOOR,
            True,
        ),
        (
            "p50_vs_floor",
            f"p50 latency at concurrency {low}: ensemble / floor <= {TARGET_P50_OVER_FLOOR}",
            _ratio(_value(ensemble, low, "p50_ms"), _value(floor, low, "p50_ms")),
            TARGET_P50_OVER_FLOOR,
            False,
        ),
    ]
    rounds = _rounds(results)
    if rounds is not None:
        for ratio in rounds.ratios():
            target = ROUND_TARGETS.get(ratio.name)
            if target is None:
                continue
            spread = f"{100 * ratio.spread:.0f} %" if ratio.spread is not None else "n/a"
            checks.append(
                (
                    f"rounds: {ratio.name}",
                    f"median of {len(ratio.values)} interleaved rounds at concurrency {rounds.concurrency}: "
                    f"{ratio.name} >= {target} (spread {spread}, target < {100 * ROUNDS_MAX_SPREAD:.0f} %)",
                    ratio.median,
                    target,
                    True,
                )
            )
    share = preprocess_share(results)
    if share is not None:
        checks.append(
            (
                "preprocess_share",
                f"preprocess share of the steps' busy time at concurrency {high}"
                f" <= {100 * TARGET_PREPROCESS_SHARE:.0f} %",
                share,
                TARGET_PREPROCESS_SHARE,
                False,
            )
        )
    sizes = results.get("request_bytes") or {}
    if sizes.get("encoded"):
        checks.append(
            (
                "request_shrink",
                f"request size: raw pixels / image file >= {TARGET_REQUEST_SHRINK:g}",
                sizes["raw"] / sizes["encoded"],
                TARGET_REQUEST_SHRINK,
                True,
            )
        )
    outcome = []
    for key, name, measured, target, at_least in checks:
        met = None if measured is None else (measured >= target if at_least else measured <= target)
        # How far off: the share by which the measured ratio falls short of (or exceeds) the target.
        shortfall = None
        if met is False and measured is not None:
            shortfall = (target - measured) / target if at_least else (measured - target) / target
        outcome.append({"key": key, "target": name, "measured": measured, "met": met, "shortfall": shortfall})
    return outcome


def _rounds(results: dict[str, Any]) -> Rounds | None:
    data = results.get("rounds")
    return Rounds.from_dict(data) if data else None


def plates_read_per_second(results: dict[str, Any]) -> float | None:
    """The figure of merit: the ensemble's images/s in the rounds times the plates it reads exactly per image."""
    rounds, read = _rounds(results), results.get("plates_read")
    throughput = rounds.median_throughput(ENSEMBLE) if rounds else None
    if throughput is None or not read or not read["images"]:
        return None
    return throughput * read["read"] / read["images"]


def preprocess_share(results: dict[str, Any]) -> float | None:
    """The preprocess step's share of the composing steps' busy time at the throughput target's concurrency."""
    steps = [
        step for step in _steps(results, "ensemble", TARGET_CONCURRENCY_THROUGHPUT) if step["model"] != ENSEMBLE_NAME
    ]
    total = sum(step["busy_ms"] for step in steps)
    preprocess = next((step["busy_ms"] for step in steps if step["model"] == "preprocess"), None)
    return None if preprocess is None or not total else preprocess / total


def _rounds_section(results: dict[str, Any]) -> list[str]:
    rounds = _rounds(results)
    if rounds is None:
        return []
    lines = [
        f"## Interleaved rounds at concurrency {rounds.concurrency}",
        "",
        "Each round measures every design once, back to back, so that a change in the machine's load between "
        "measurements hits all of them; the ratios are each round's, then their median and spread "
        "((max - min) / median). `detector alone` is the detector graph in process on the same letterboxed views: "
        "the compute limit of the views served. `image files` is `plate_recognition_encoded` fed each image as a "
        "JPEG (the real photos as their own files).",
        "",
    ]
    header = ["round", "load avg before / after", *(f"{name} img/s" for name in rounds.designs)]
    rows = []
    for index, one in enumerate(rounds.rounds, start=1):
        cells = []
        for name in rounds.designs:
            run = one.runs.get(name)
            cells.append(_fmt(run.throughput, 2) if run and run.throughput is not None else "failed")
        rows.append([str(index), f"{one.load_before:.2f} / {one.load_after:.2f}", *cells])
    lines += [*_table(header, rows), ""]
    ratio_rows = []
    for ratio in rounds.ratios():
        values = ", ".join(f"{value:.2f}" for value in ratio.values)
        spread = f"{100 * ratio.spread:.1f} %" if ratio.spread is not None else "n/a"
        ratio_rows.append([ratio.name, values, _fmt(ratio.median, 2, "x"), spread])
    lines += [*_table(["ratio", "per round", "median", "spread"], ratio_rows), ""]
    merit = plates_read_per_second(results)
    if merit is not None:
        read = results["plates_read"]
        lines.append(
            f"Plates read per second: {merit:.2f} (the ensemble's median {rounds.median_throughput(ENSEMBLE):.2f} "
            f"img/s x {read['read'] / read['images']:.2f} plates read exactly per image: {read['read']} of the "
            f"{read['labelled_plates']} labelled plates of the {read['images']} bench images, each read once "
            "through the ensemble)."
        )
    sizes = results.get("request_bytes") or {}
    if sizes.get("encoded"):
        lines.append(
            f"Mean request: {sizes['raw'] / 1e6:.2f} MB of raw pixels, {sizes['encoded'] / 1e6:.3f} MB as an image "
            f"file ({sizes['raw'] / sizes['encoded']:.0f}x smaller)."
        )
    if results.get("sgemm_gflops"):
        lines.append(
            f"The machine's float32 matrix-multiply peak (NumPy SGEMM, {SGEMM_SIZE}x{SGEMM_SIZE}, all cores): "
            f"{results['sgemm_gflops']:.0f} GFLOP/s."
        )
    lines.append("")
    return lines


def _explain_latency_gap(results: dict[str, Any]) -> str | None:
    """Where the ensemble's extra latency over the floor goes at the latency target's concurrency."""
    low = TARGET_CONCURRENCY_LATENCY
    ensemble = _by_concurrency(results, "ensemble").get(low)
    floor = _by_concurrency(results, "floor").get(low)
    if ensemble is None or floor is None:
        return None
    steps = [step for step in _steps(results, "ensemble", low) if step["model"] != results.get("ensemble_model")]
    copies = sum(step["compute_input_ms"] + step["compute_output_ms"] for step in steps)
    queued = sum(step["queue_ms"] for step in steps)
    inference = sum(step["compute_infer_ms"] for step in steps)
    gap = ensemble["p50_ms"] - floor["p50_ms"]
    text = (
        f"At concurrency {low} the ensemble's p50 is {gap:.1f} ms above the floor's ({ensemble['p50_ms']:.1f} vs "
        f"{floor['p50_ms']:.1f} ms). Sending the image over gRPC took {ensemble['client_send_ms']:.2f} ms per "
        "request; inside the server the steps spent "
        f"{inference:.1f} ms computing, {copies:.1f} ms moving tensors in and out of the Python-backend processes "
        f"(compute input + output) and {queued:.1f} ms queued."
    )
    shm = (results.get("shared_memory") or {}).get("shm")
    grpc = (results.get("shared_memory") or {}).get("grpc")
    if shm and grpc:
        text += (
            f" Passing the image through system shared memory instead of the gRPC message moved the p50 from "
            f"{grpc['p50_ms']:.1f} to {shm['p50_ms']:.1f} ms."
        )
    return text


def _explain_throughput_gap(results: dict[str, Any]) -> str | None:
    high = TARGET_CONCURRENCY_THROUGHPUT
    steps = {step["model"]: step for step in _steps(results, "ensemble", high)}
    if not steps:
        return None
    busiest = max(
        (step for name, step in steps.items() if name != results.get("ensemble_model")),
        key=lambda step: step["busy_ms"],
        default=None,
    )
    if busiest is None:
        return None
    copies = sum(
        step["compute_input_ms"] + step["compute_output_ms"]
        for name, step in steps.items()
        if name != results.get("ensemble_model")
    )
    return (
        f"At concurrency {high} the busiest step is `{busiest['model']}` (an instance busy {busiest['busy_ms']:.1f} ms "
        f"per image, batches of {busiest['average_batch']:.2f} on average); every request also pays "
        f"{copies:.1f} ms of tensor copies into and out of the Python-backend step processes, work the floor, which "
        "hands NumPy arrays between sessions in one process, never does. On a machine with "
        f"{results['machine'].get('usable_cores')} cores those copies and the server's own threads compete with "
        "the inference for the same cores."
    )


def _explain_bls_gap(results: dict[str, Any]) -> str | None:
    high = TARGET_CONCURRENCY_THROUGHPUT
    ensemble = {step["model"]: step for step in _steps(results, "ensemble", high)}
    bls = {step["model"]: step for step in _steps(results, "bls", high)}
    if not ensemble or not bls:
        return None
    ensemble_busy = sum(step["busy_ms"] for name, step in ensemble.items() if name != results.get("ensemble_model"))
    bls_busy = sum(step["busy_ms"] for name, step in bls.items() if name != results.get("bls_model"))
    return (
        f"At concurrency {high} the ensemble's steps keep instances busy {ensemble_busy:.1f} ms per image against "
        f"{bls_busy:.1f} ms for the baseline's steps. Batching and parallel instances only pay when there are idle "
        f"cores to run them on: the machine has {results['machine'].get('usable_cores')} usable cores, shared with "
        "the server's own threads and perf_analyzer."
    )


# ---------------------------------------------------------------------------------------------------------------------
# Where the cost goes


def cost_paragraph(results: dict[str, Any]) -> str:
    """One paragraph on where a request's time goes, from the ensemble's per-step breakdown."""
    concurrency = reference_concurrency(results)
    steps = _steps(results, "ensemble", concurrency)
    measurement = _by_concurrency(results, "ensemble").get(concurrency)
    ensemble_model = results.get("ensemble_model")
    if not steps or measurement is None:
        return "No per-step breakdown was measured."
    inside = next((step["request_ms"] for step in steps if step["model"] == ensemble_model), None)
    composing = [step for step in steps if step["model"] != ensemble_model]
    busy = sum(step["busy_ms"] for step in composing)
    by_cost = sorted(composing, key=lambda step: step["busy_ms"], reverse=True)
    shares = ", ".join(
        f"`{step['model']}` {step['busy_ms']:.1f} ms ({100 * step['busy_ms'] / busy:.0f} %)"
        for step in by_cost
        if busy > 0
    )
    queued = sum(step["queue_ms"] for step in composing)
    copies = sum(step["compute_input_ms"] + step["compute_output_ms"] for step in composing)
    text = (
        f"At concurrency {concurrency} a request takes {measurement['average_ms']:.1f} ms on average as the client "
        f"sees it ({measurement['client_send_ms']:.2f} ms of it sending the image over gRPC) and, by Triton's "
        f"statistics, {_fmt(inside)} ms inside the ensemble. There it waits {queued:.1f} ms in the steps' queues "
        f"and spends {copies:.1f} ms moving tensors into and out of the step processes. Counting every batch "
        f"execution once, the steps keep an instance busy for {busy:.1f} ms per image: {shares}."
    )
    recogniser = next((step for step in composing if step["model"] == "stn"), None)
    if recogniser is not None:
        text += (
            f" The recognisers see {recogniser['inferences_per_request']:.1f} crops per image and the dynamic "
            f"batcher runs them in batches of {recogniser['average_batch']:.1f} crops on average."
        )
    scaling = results.get("scaling") or {}
    sizes = [point for point in scaling.get("image_size") or [] if point["measurement"]]
    if len(sizes) >= 2:
        first, last = sizes[0], sizes[-1]
        busy_first = {step["model"]: step["busy_ms"] for step in first["steps"] if step["model"] != ensemble_model}
        busy_last = {step["model"]: step["busy_ms"] for step in last["steps"] if step["model"] != ensemble_model}
        growth = sorted(
            (name for name in busy_first if name in busy_last),
            key=lambda name: busy_last[name] - busy_first[name],
            reverse=True,
        )[:2]
        grown = " and ".join(f"`{name}` ({busy_first[name]:.1f} to {busy_last[name]:.1f} ms)" for name in growth)
        text += (
            f" From {first['label']} to {last['label']} images the throughput goes from "
            f"{first['measurement']['throughput']:.1f} to {last['measurement']['throughput']:.1f} images/s; the "
            f"busy time per image grows most in {grown}."
        )
    return text


# ---------------------------------------------------------------------------------------------------------------------
# Plots


def _plot_throughput(results: dict[str, Any], path: Path) -> None:
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for design, label in DESIGN_LABELS.items():
        rows = _by_concurrency(results, design)
        if rows:
            levels = sorted(rows)
            axes.plot(levels, [rows[c]["throughput"] for c in levels], DESIGN_STYLES[design], label=label)
    shm = (results.get("shared_memory") or {}).get("shm")
    if shm:
        axes.plot([shm["concurrency"]], [shm["throughput"]], "D", label="ensemble, system shared memory")
    axes.set_xscale("log", base=2)
    axes.set_ylim(bottom=0)
    axes.set_xlabel("concurrent requests")
    axes.set_ylabel("images / s")
    axes.set_title("Throughput vs concurrency")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_latency(results: dict[str, Any], path: Path) -> None:
    figure, all_axes = plt.subplots(1, len(PERCENTILES), figsize=(13, 4.2), sharey=True)
    for axes, percentile in zip(all_axes, PERCENTILES, strict=True):
        for design, label in DESIGN_LABELS.items():
            rows = _by_concurrency(results, design)
            if rows:
                levels = sorted(rows)
                axes.plot(levels, [rows[c][f"{percentile}_ms"] for c in levels], DESIGN_STYLES[design], label=label)
        axes.set_xscale("log", base=2)
        axes.set_yscale("log")
        axes.set_xlabel("concurrent requests")
        axes.set_title(f"{percentile} latency")
        axes.grid(True, which="both", alpha=0.3)
    all_axes[0].set_ylabel("ms")
    all_axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_breakdown(results: dict[str, Any], path: Path) -> None:
    concurrency = reference_concurrency(results)
    top_models = {results.get("ensemble_model"), results.get("bls_model")}
    bars = []
    for design in ("ensemble", "bls"):
        for step in _steps(results, design, concurrency):
            if step["model"] not in top_models:
                bars.append((f"{design}: {step['model']}", step))
    if not bars:
        return
    figure, axes = plt.subplots(figsize=(9, 0.45 * len(bars) + 1.5))
    labels = [label for label, _ in bars]
    left = [0.0] * len(bars)
    for key, part in STEP_PARTS:
        values = [step[key] for _, step in bars]
        axes.barh(labels, values, left=left, label=part)
        left = [a + b for a, b in zip(left, values, strict=True)]
    axes.invert_yaxis()
    axes.set_xlabel("ms per request (server statistics)")
    axes.set_title(f"Server time per step at concurrency {concurrency}")
    axes.legend(fontsize=8)
    axes.grid(True, axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_scaling(results: dict[str, Any], path: Path) -> bool:
    scaling = results.get("scaling") or {}
    sweeps = [(key, title) for key, title in (("image_size", "image size"), ("plates", "plates drawn per image"))]
    sweeps = [(key, title) for key, title in sweeps if any(point["measurement"] for point in scaling.get(key) or [])]
    if not sweeps:
        return False
    figure, all_axes = plt.subplots(2, len(sweeps), figsize=(6 * len(sweeps), 7), squeeze=False)
    for column, (key, title) in enumerate(sweeps):
        points = [point for point in scaling[key] if point["measurement"]]
        labels = [point["label"] for point in points]
        throughput_axes, latency_axes = all_axes[0][column], all_axes[1][column]
        throughput_axes.plot(labels, [point["measurement"]["throughput"] for point in points], "o-")
        throughput_axes.set_ylim(bottom=0)
        throughput_axes.set_ylabel("images / s")
        throughput_axes.set_title(f"Ensemble vs {title} (concurrency {scaling['concurrency']})")
        for percentile in PERCENTILES:
            latency_axes.plot(
                labels, [point["measurement"][f"{percentile}_ms"] for point in points], "o-", label=percentile
            )
        latency_axes.set_ylim(bottom=0)
        latency_axes.set_ylabel("latency, ms")
        latency_axes.set_xlabel(title)
        latency_axes.legend()
        for axes in (throughput_axes, latency_axes):
            axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def write_plots(results: dict[str, Any], plots_dir: Path) -> dict[str, Path]:
    """Write the PNG plots; returns the written files by kind."""
    plots_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for kind, draw in (("throughput", _plot_throughput), ("latency", _plot_latency), ("breakdown", _plot_breakdown)):
        path = plots_dir / PLOT_FILES[kind]
        draw(results, path)
        if path.is_file():
            written[kind] = path
    scaling_path = plots_dir / PLOT_FILES["scaling"]
    if _plot_scaling(results, scaling_path):
        written["scaling"] = scaling_path
    return written


# ---------------------------------------------------------------------------------------------------------------------
# The markdown report


def _machine_section(results: dict[str, Any]) -> list[str]:
    machine = results["machine"]
    versions = ", ".join(f"{name} {version}" for name, version in machine["versions"].items())
    gpus = "; ".join(machine["gpus"]) if machine["gpus"] else "none (CPU only)"
    return [
        "## Machine and software",
        "",
        f"- CPU: {machine['cpu']}, {machine['logical_cores']} logical cores ({machine['usable_cores']} usable)",
        f"- Memory: {machine['memory_gib']} GiB; GPU: {gpus}",
        f"- OS: {machine['os']}",
        f"- Triton server {results.get('triton_version', 'unknown')}; {versions}",
        f"- Commit: `{results['commit']}`",
        f"- Run: {results['profile']} profile, started {results['started']}, took {results['duration_s'] / 60:.1f} min",
        "",
    ]


def _inputs_section(results: dict[str, Any]) -> list[str]:
    inputs = results["inputs"]
    sizes: dict[str, int] = {}
    for item in inputs["mixed"]:
        sizes[item["size"]] = sizes.get(item["size"], 0) + 1
    size_text = ", ".join(f"{count} x {size}" for size, count in sizes.items())
    graphs = ", ".join(f"{step} `{digest}`" for step, digest in results["graphs"].items())
    agreement = results.get("agreement") or {}
    agreement_text = "; ".join(f"{pair}: {'identical' if same else 'DIFFERENT'}" for pair, same in agreement.items())
    return [
        "## Inputs",
        "",
        f"{len(inputs['mixed'])} images sent round-robin ({size_text}): synthetic scenes with "
        f"{inputs['plates_drawn']} plates drawn, plus the real photos {inputs['real'] or '(absent)'}. "
        "All three designs get the same images, decoded to BGR arrays before the clock starts.",
        "",
        f"Served graphs (sha256 prefix): {graphs}.",
        "",
        f"Answers on every input image, compared before measuring (boxes to 1e-3 px, texts exactly): "
        f"{agreement_text or 'not compared'}.",
        "",
    ]


def _designs_section(results: dict[str, Any]) -> list[str]:
    ensemble, bls, floor = (_by_concurrency(results, design) for design in ("ensemble", "bls", "floor"))
    levels = sorted(set(ensemble) | set(bls) | set(floor))
    lines = ["## Throughput and latency", ""]
    header = ["concurrency"]
    for design in ("ensemble", "bls", "floor"):
        header += [f"{design} img/s", f"{design} p50", f"{design} p90", f"{design} p99"]
    rows = []
    for level in levels:
        row = [str(level)]
        for design_rows in (ensemble, bls, floor):
            row.append(_fmt(_value(design_rows, level, "throughput")))
            row += [_fmt(_value(design_rows, level, f"{p}_ms")) for p in PERCENTILES]
        rows.append(row)
    lines += _table(header, rows)
    lines += ["", "Latencies in ms as the client sees them (perf_analyzer for the served designs).", ""]
    unstable = [
        f"{design} at {level}"
        for design, design_rows in (("ensemble", ensemble), ("bls", bls))
        for level, row in design_rows.items()
        if not row.get("stable", True)
    ]
    if unstable:
        lines += [
            f"Did not stabilise within the trial limit, measured once over a fixed request count: "
            f"{', '.join(unstable)}.",
            "",
        ]
    ratio_rows = []
    for level in levels:
        ratio_rows.append(
            [
                str(level),
                _fmt(_ratio(_value(ensemble, level, "throughput"), _value(bls, level, "throughput")), 2, "x"),
                _fmt(_ratio(_value(ensemble, level, "throughput"), _value(floor, level, "throughput")), 2, "x"),
                _fmt(_ratio(_value(ensemble, level, "p99_ms"), _value(bls, level, "p99_ms")), 2, "x"),
                _fmt(_ratio(_value(ensemble, level, "p99_ms"), _value(floor, level, "p99_ms")), 2, "x"),
            ]
        )
    lines += ["### Ratios", ""]
    header = ["concurrency", "throughput ensemble/BLS", "throughput ensemble/floor", "p99 ensemble/BLS"]
    lines += _table([*header, "p99 ensemble/floor"], ratio_rows)
    lines.append("")
    return lines


def _acceptance_section(results: dict[str, Any]) -> list[str]:
    lines = ["## Acceptance targets", ""]
    rows = []
    for check in acceptance(results):
        if check["met"] is None:
            verdict = "not measured"
        elif check["met"]:
            verdict = "met"
        else:
            verdict = f"missed by {100 * check['shortfall']:.0f} %"
        share = check["key"] == "preprocess_share" and check["measured"] is not None
        measured = f"{100 * check['measured']:.0f} %" if share else _fmt(check["measured"], 2, "x")
        rows.append([check["target"], measured, verdict])
    lines += _table(["target", "measured", "verdict"], rows)
    lines.append("")
    missed = [check for check in acceptance(results) if check["met"] is False]
    explanations = []
    missed_keys = {check["key"] for check in missed}
    if "p50_vs_floor" in missed_keys:
        explanations.append(_explain_latency_gap(results))
    if "throughput_vs_floor" in missed_keys:
        explanations.append(_explain_throughput_gap(results))
    if "throughput_vs_bls" in missed_keys:
        explanations.append(_explain_bls_gap(results))
    explanations = [text for text in explanations if text]
    if explanations:
        lines += ["Why:", ""] + [f"- {text}" for text in explanations] + [""]
    return lines


def _failures_section(results: dict[str, Any]) -> list[str]:
    failures = _failures(results)
    if not failures:
        return []
    rows = [[where, str(entry.get("concurrency") or ""), entry["error"]] for where, entry in failures]
    return [
        "## Measurements that did not complete",
        "",
        "perf_analyzer stops a level when the server refuses requests (the product's queues reject what waits "
        "longer than their timeout); the level is left out of the tables above.",
        "",
        *_table(["design", "concurrency", "server's answer"], rows),
        "",
    ]


def _shared_memory_section(results: dict[str, Any]) -> list[str]:
    comparison = results.get("shared_memory") or {}
    grpc, shm = comparison.get("grpc"), comparison.get("shm")
    if not (grpc and shm):
        return []
    rows = [
        [
            name,
            f"{row['throughput']:.1f}",
            f"{row['p50_ms']:.1f}",
            f"{row['p99_ms']:.1f}",
            f"{row['client_send_ms']:.2f}",
        ]
        for name, row in (("gRPC payload", grpc), ("system shared memory", shm))
    ]
    return [
        f"## gRPC payload vs system shared memory (ensemble, concurrency {shm['concurrency']})",
        "",
        *_table(["input/output transfer", "img/s", "p50 ms", "p99 ms", "client send ms"], rows),
        "",
    ]


def _breakdown_section(results: dict[str, Any]) -> list[str]:
    concurrency = reference_concurrency(results)
    lines = [f"## Server time per step at concurrency {concurrency}", ""]
    header = ["model", "requests", "items/request", "batch", "request ms", "queue", "input", "infer", "output", "busy"]
    for design in ("ensemble", "bls"):
        steps = _steps(results, design, concurrency)
        if not steps:
            continue
        rows = [
            [
                f"`{step['model']}`",
                str(step["requests"]),
                f"{step['inferences_per_request']:.2f}",
                f"{step['average_batch']:.2f}",
                f"{step['request_ms']:.2f}",
                *(f"{step[key]:.2f}" for key, _ in STEP_PARTS),
                f"{step['busy_ms']:.2f}",
            ]
            for step in steps
        ]
        lines += [f"**{DESIGN_LABELS[design]}**", "", *_table(header, rows), ""]
    lines += [
        "Averages per request in ms from Triton's statistics (deltas around the measurement). items/request: batch "
        "elements a request carried (crops per image for stn/lprnet); batch: items per execution, i.e. what the "
        "dynamic batcher merged; queue/input/infer/output: a request's share of each phase, where a batched "
        "request is charged the whole batch's compute; busy: compute of each execution counted once, per request. "
        "The top model's times span its whole pipeline.",
        "",
    ]
    return lines


def _scaling_section(results: dict[str, Any]) -> list[str]:
    scaling = results.get("scaling") or {}
    if not (scaling.get("image_size") or scaling.get("plates")):
        return []
    lines = [f"## Scaling (ensemble, concurrency {scaling['concurrency']})", ""]
    for key, title in (("image_size", "image size"), ("plates", "plates drawn per image")):
        points = scaling.get(key) or []
        if not points:
            continue
        step_names = [step["model"] for step in points[0]["steps"] if step["model"] != results.get("ensemble_model")]
        header = [title, "img/s", "p50", "p90", "p99", "crops/image", *(f"{name} ms" for name in step_names)]
        rows = []
        for point in points:
            steps = {step["model"]: step for step in point["steps"]}
            measurement = point["measurement"]
            if not measurement:
                rows.append([point["label"], "failed", *([""] * (len(header) - 2))])
                continue
            crops = steps.get("stn", {}).get("inferences_per_request")
            rows.append(
                [
                    point["label"],
                    f"{measurement['throughput']:.1f}",
                    *(f"{measurement[f'{p}_ms']:.1f}" for p in PERCENTILES),
                    _fmt(crops, 2),
                    *(_fmt(steps[name]["busy_ms"], 2) if name in steps else "n/a" for name in step_names),
                ]
            )
        lines += [f"**vs {title}**", "", *_table(header, rows), ""]
    lines += [
        "Step columns: how long each step keeps an instance busy per image (batch executions counted once). "
        "crops/image: what the crop step passed on, i.e. what the detector found (one padding row when nothing), "
        "which need not equal the plates drawn.",
        "",
    ]
    return lines


def _commands_section(results: dict[str, Any]) -> list[str]:
    return [
        "## How this was measured",
        "",
        "```",
        results["command"],
        *results["perf_commands"],
        "```",
        "",
        *[f"- {note}" for note in results.get("method", [])],
        "",
    ]


def render(results: dict[str, Any], plots: dict[str, Path], results_path: Path) -> str:
    """The markdown text of the report."""
    lines = [
        "# Serving benchmarks",
        "",
        "Generated by `python -m benchmarks.run`; do not edit by hand. Three designs on the same images and the same "
        "machine: the config-only Triton **ensemble** with dynamic batching (the product), the **BLS baseline** "
        "(the reference deployment's design: one Python model calling each step in turn, no dynamic batching, one "
        "instance per step), and the **in-process floor** (the same ONNX graphs chained with onnxruntime in one "
        "process, no server). The two served designs run the same graphs on the same backend with the same "
        "thread limits, so what differs between them is the serving design alone.",
        "",
    ]
    if results.get("notes"):
        lines += [*(f"> {note}" for note in results["notes"]), ""]
    lines += _acceptance_section(results)
    lines += _rounds_section(results)
    lines += _designs_section(results)
    lines += _failures_section(results)
    for kind in ("throughput", "latency"):
        if kind in plots:
            lines += [f"![{kind}]({Path(os.path.relpath(plots[kind], results_path.parent)).as_posix()})", ""]
    lines += _shared_memory_section(results)
    lines += _breakdown_section(results)
    if "breakdown" in plots:
        lines += [f"![per-step breakdown]({Path(os.path.relpath(plots['breakdown'], results_path.parent)).as_posix()})"]
        lines.append("")
    lines += ["## Where the cost goes", "", cost_paragraph(results), ""]
    lines += _scaling_section(results)
    if "scaling" in plots:
        lines += [f"![scaling]({Path(os.path.relpath(plots['scaling'], results_path.parent)).as_posix()})", ""]
    lines += _inputs_section(results)
    lines += _machine_section(results)
    lines += _commands_section(results)
    return "\n".join(lines).rstrip() + "\n"


def write_report(results: dict[str, Any], results_path: Path, plots_dir: Path) -> Path:
    """Write the plots into ``plots_dir`` and the markdown report to ``results_path``; returns the report path."""
    plots = write_plots(results, plots_dir)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(render(results, plots, results_path))
    return results_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    parser.add_argument("results_json", type=Path, help="results.json of a run")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/RESULTS.md"), help="markdown to write")
    parser.add_argument("--plots-dir", type=Path, default=Path("benchmarks"), help="where the PNG plots go")
    args = parser.parse_args(argv)
    results = json.loads(args.results_json.read_text())
    print(write_report(results, args.results, args.plots_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
