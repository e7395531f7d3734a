"""Reports of the click-response protocol (Markdown, CSV, JSON) and its CLI step."""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Iterable
from pathlib import Path

import torch

from usam import data as D
from usam.evaluate import CLASS_NAMES, _jsonable
from usam.evaluation.click_response import CLASSES, evaluate_click_response
from usam.evaluation.interactive import parse_starts

FIGURES = ("trials", "positive_trials", "positive_success", "filled", "negative_trials", "negative_success",
           "removal", "locality_mean", "locality_max", "locality_pass")


def _pct(v: float) -> str:
    return "-" if v is None or math.isnan(v) else f"{100.0 * v:.1f}"


def markdown_table(res: dict) -> str:
    """One line per row and class (normal, tumor, both): trials, success %, region shares, locality."""
    far, cap = res["far_mm"], 100.0 * res["locality_max"]
    lines = [f"| row | class | positive trials | positive success % | filled % | negative trials | "
             f"negative success % | removed % | locality mean % (>{far:g} mm) | locality max % | "
             f"locality pass % (<= {cap:g} %) | ms per click |", "|" + "---|" * 12]
    for name, row in res["rows"].items():
        parts = [(CLASS_NAMES[c], row["per_class"][c]) for c in CLASSES] + [("both", row)]
        for cls, p in parts:
            spc = row["seconds_per_click"]
            ms = "-" if cls != "both" or math.isnan(spc) else f"{1000 * spc:.1f}"
            cells = [name, cls, str(p["positive_trials"]), _pct(p["positive_success"]), _pct(p["filled"]),
                     str(p["negative_trials"]), _pct(p["negative_success"]), _pct(p["removal"]),
                     _pct(p["locality_mean"]), _pct(p["locality_max"]), _pct(p["locality_pass"]), ms]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets_lines(res: dict) -> list[str]:
    """Per row, whether issue 16's targets are met (network alone rows first)."""
    t = res["targets"]
    out = [f"Targets: positive success >= {100 * t['positive_success']:g} %, negative success >= "
           f"{100 * t['negative_success']:g} %, locality pass >= {100 * t['locality_pass']:g} % of trials.", ""]
    for name, row in res["rows"].items():
        met = ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in row["targets_met"].items())
        out.append(f"- `{name}`: {met}")
    return out


def summary_rows(res: dict) -> list[dict]:
    """Long format: row, class (normal, tumor, both) and the figures (fractions)."""
    rows = []
    for name, row in res["rows"].items():
        for cls, p in [(CLASS_NAMES[c], row["per_class"][c]) for c in CLASSES] + [("both", row)]:
            rows.append({"row": name, "class": cls, **{k: p[k] for k in FIGURES},
                         "seconds_per_click": row["seconds_per_click"], "far_mm": res["far_mm"]})
    return rows


def trial_rows(res: dict) -> list[dict]:
    """Every trial: row, case, slice, kind, class, click (x, y), region size, success, region share, locality."""
    return [{"row": name, **{k: v for k, v in t.items()}} for name, trials in res["trials"].items() for t in trials]


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        if rows:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


def public_result(result: dict) -> dict:
    """The result without the per-trial records (they go to NAME_trials.csv)."""
    out = dict(result, protocols=dict(result["protocols"]))
    out["protocols"]["clicks"] = {k: v for k, v in result["protocols"]["clicks"].items() if k != "trials"}
    return out


def write_click_reports(result: dict, out_dir: str | Path, name: str = "eval") -> list[Path]:
    """NAME.md, NAME.csv (per row and class), NAME_trials.csv (every trial), NAME.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = result["protocols"]["clicks"]
    paths = [out / f"{name}{s}" for s in (".md", ".csv", "_trials.csv", ".json")]
    md = [f"# Click response: {result['checkpoint']}", "",
          f"Data `{result['data']}`, split `{result['split']}`, {result['cases']} cases; HU window "
          f"{result['window']}; weights: {result.get('weights_kind')}; rows without '+ rules' are the network's "
          "own output.", "", "## Protocol", "", res["definition"], "", "## Results (percent of trials)", "",
          markdown_table(res), "", *targets_lines(res), ""]
    paths[0].write_text("\n".join(md))
    _write_csv(paths[1], summary_rows(res))
    _write_csv(paths[2], trial_rows(res))
    paths[3].write_text(json.dumps(_jsonable(public_result(result)), indent=1) + "\n")
    return paths


def run_clicks(args: argparse.Namespace, model: torch.nn.Module, window: tuple[float, float],
               cases: Iterable[D.CaseData], result: dict) -> int:
    """`usam evaluate --protocol clicks` after the checkpoint is loaded: evaluate, write, print."""
    starts = parse_starts(args.start)
    result.pop("prompts", None)  # the paper's prompt rows do not apply
    result["starts"] = starts
    feeds = (False,) if args.no_mask_prompt else (True, False)
    result["protocols"]["clicks"] = evaluate_click_response(
        cases, model, window, starts, feeds, args.batch_size, args.prompt_rules, progress=not args.no_progress)
    if args.out:
        for p in write_click_reports(result, args.out, args.name):
            print(f"wrote {p}", file=sys.stderr)
    if args.json:
        print(json.dumps(_jsonable(public_result(result))))
    else:
        print(markdown_table(result["protocols"]["clicks"]))
    return 0
