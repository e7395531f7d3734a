"""Reports of the interactive protocol: Markdown, CSV, JSON and a Dice-versus-clicks SVG; its CLI step."""
from __future__ import annotations

import argparse
import math
from collections.abc import Iterable
from pathlib import Path
from xml.sax.saxutils import escape

import torch

from usam import data as D
from usam.evaluate import CLASS_NAMES
from usam.evaluation.interactive import CLASSES, evaluate_interactive, parse_starts
from usam.evaluation.output import emit, pct, write_outputs

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _num(v: float, digits: int = 2) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.{digits}f}"


def markdown_tables(res: dict) -> str:
    """Mean Dice after each click, AUCs, final scores, NoC and speed per start; then the curve per class."""
    k, tol, n = res["clicks"], res["nsd_tolerance_mm"], res["noc_max_clicks"]
    steps = " | ".join(f"Dice {i}" for i in range(k + 1))
    head = (f"| start | {steps} | DSC AUC | NSD@{tol:g}mm AUC | final Dice | final NSD@{tol:g}mm | "
            f"NoC@85 (of {n}) | NoC@90 (of {n}) | ms per click |")
    lines = [head, "|" + "---|" * (k + 9)]
    for name, row in res["rows"].items():
        cells = [name] + [pct(v) for v in row["dice_mean_by_click"]]
        cells += [_num(row["dsc_auc"], 3), _num(row["nsd_auc"], 3), pct(row["final_dice"]), pct(row["final_nsd"]),
                  _num(row["noc85"]), _num(row["noc90"]), _num(1000.0 * row["seconds_per_click"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| start | class | " + " | ".join(f"Dice {i}" for i in range(k + 1)) + " | DSC AUC |",
              "|" + "---|" * (k + 4)]
    for name, row in res["rows"].items():
        for c in CLASSES:
            curve = row["dice_by_click_per_class"][c]
            lines.append("| " + " | ".join([name, CLASS_NAMES[c]] + [pct(v) for v in curve]
                                           + [_num(row["dsc_auc_per_class"][c], 3)]) + " |")
    return "\n".join(lines)


def summary_rows(res: dict) -> list[dict]:
    """One row per start: the scalar results and the mean Dice / NSD after each click (fractions)."""
    rows = []
    for name, row in res["rows"].items():
        out = {"start": name, "cases": row["cases"]}
        out.update({k: row[k] for k in ("dsc_auc", "nsd_auc", "final_dice", "final_nsd", "noc85", "noc90",
                                         "seconds_per_click", "clicks_placed")})
        out.update({f"dice_{i}": v for i, v in enumerate(row["dice_mean_by_click"])})
        out.update({f"nsd_{i}": v for i, v in enumerate(row["nsd_mean_by_click"])})
        out["nsd_tolerance_mm"] = res["nsd_tolerance_mm"]
        rows.append(out)
    return rows


def curve_rows(res: dict) -> list[dict]:
    """Long format: start, clicks, class (normal, tumor, mean), dice, nsd."""
    rows = []
    for name, row in res["rows"].items():
        for i in range(res["clicks"] + 1):
            per_class = [(CLASS_NAMES[c], row["dice_by_click_per_class"][c][i], row["nsd_by_click_per_class"][c][i])
                         for c in CLASSES]
            for cls, d, s in per_class + [("mean", row["dice_mean_by_click"][i], row["nsd_mean_by_click"][i])]:
                rows.append({"start": name, "clicks": i, "class": cls, "dice": d, "nsd": s})
    return rows


def case_rows(res: dict) -> list[dict]:
    """Per start and case: AUCs, final scores, NoC, clicks placed and the case's mean Dice after each click."""
    rows = []
    for name, cases in res["per_case"].items():
        for pc in cases:
            out = {"start": name, "case_id": pc["case_id"]}
            out.update({k: pc[k] for k in ("dsc_auc", "nsd_auc", "final_dice", "final_nsd", "noc85", "noc90", "clicks",
                                            "seconds_per_click")})
            out.update({f"dice_{i}": v for i, v in enumerate(pc["dice_mean_by_click"])})
            rows.append(out)
    return rows


def dice_svg(res: dict, title: str = "Mean Dice versus corrective clicks") -> str:
    """A hand-written SVG line plot: the cohort's mean Dice after 0..K clicks, one line per start."""
    w, h, left, right, top, bottom = 640, 400, 60, 170, 40, 50
    k = res["clicks"]
    pw, ph = w - left - right, h - top - bottom

    def xy(i: int, v: float) -> tuple[float, float]:
        return left + pw * i / k, top + ph * (1.0 - v)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
             'font-family="sans-serif" font-size="12">', f'<rect width="{w}" height="{h}" fill="white"/>',
             f'<text x="{left}" y="22" font-size="14">{escape(title)}</text>']
    for j in range(6):
        x0, y = xy(0, j / 5)
        parts.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{j / 5:.1f}</text>')
    for i in range(k + 1):
        x, y = xy(i, 0.0)
        parts.append(f'<text x="{x:.1f}" y="{y + 18:.1f}" text-anchor="middle">{i}</text>')
    parts += [f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="black"/>',
              f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="black"/>',
              f'<text x="{left + pw / 2}" y="{h - 10}" text-anchor="middle">clicks per slice (0 = start)</text>',
              f'<text x="16" y="{top + ph / 2}" transform="rotate(-90 16 {top + ph / 2})" '
              'text-anchor="middle">mean Dice (3D, per case)</text>']
    for n, (name, row) in enumerate(res["rows"].items()):
        colour = COLOURS[n % len(COLOURS)]
        pts = [xy(i, v) for i, v in enumerate(row["dice_mean_by_click"]) if v is not None and not math.isnan(v)]
        if pts:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
            parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>' for x, y in pts]
        ly = top + 16 * n + 8
        parts.append(f'<line x1="{left + pw + 15}" y1="{ly}" x2="{left + pw + 35}" y2="{ly}" stroke="{colour}" '
                     'stroke-width="2"/>')
        parts.append(f'<text x="{left + pw + 40}" y="{ly + 4}">{escape(name)} (AUC {_num(row["dsc_auc"], 2)})</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def write_interactive_reports(result: dict, out_dir: str | Path, name: str = "eval") -> list[Path]:
    """NAME.md, NAME.csv (per start), NAME_curve.csv, NAME_cases.csv, NAME.json, NAME_dice_by_click.svg."""
    res = result["protocols"]["interactive"]
    md = [f"# Interactive evaluation: {result['checkpoint']}", "",
          f"Data `{result['data']}`, split `{result['split']}`, {result['cases']} cases; NSD tolerance "
          f"{res['nsd_tolerance_mm']:g} mm; HU window {result['window']}; weights: {result.get('weights_kind')}; "
          f"previous logits fed back as mask prompt: {'yes' if res['mask_prompt'] else 'no'}; rows without "
          "'+ rules' are the network's own output.", "", "## Protocol", "", res["definition"], "",
          "## Results (percent; AUC in Dice x clicks, at most "
          f"{res['clicks'] - 1:.1f})", "", markdown_tables(res), "",
          f"![Dice versus clicks]({name}_dice_by_click.svg)", ""]
    return write_outputs(out_dir, name, {".md": "\n".join(md), ".csv": summary_rows(res), "_curve.csv": curve_rows(res),
                                         "_cases.csv": case_rows(res), ".json": result,
                                         "_dice_by_click.svg": dice_svg(res)})


def run_interactive(args: argparse.Namespace, model: torch.nn.Module, window: tuple[float, float],
                    cases: Iterable[D.CaseData], result: dict) -> int:
    """`usam evaluate --protocol interactive` after the checkpoint is loaded: evaluate, write, print."""
    starts = parse_starts(args.start)
    result.pop("prompts", None)  # the paper's prompt rows do not apply
    result["starts"] = starts
    result["protocols"]["interactive"] = evaluate_interactive(
        cases, model, window, starts, args.clicks, args.noc_clicks, args.nsd_tolerance, args.batch_size,
        args.prompt_rules, feed_mask=not args.no_mask_prompt, progress=not args.no_progress)
    table = markdown_tables(result["protocols"]["interactive"])
    return emit(args, result, write_interactive_reports, f"NSD tolerance {args.nsd_tolerance:g} mm\n{table}")
