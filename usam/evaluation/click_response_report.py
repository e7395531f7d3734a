"""Reports of the click-response protocol (Markdown, CSV, JSON) and its CLI step."""
from __future__ import annotations

import argparse
import math
from collections.abc import Iterable
from pathlib import Path

import torch

from usam import data as D
from usam.evaluate import CLASS_NAMES
from usam.evaluation.click_response import CLASSES, evaluate_click_response
from usam.evaluation.interactive import parse_starts
from usam.evaluation.output import emit, pct, write_outputs

FIGURES = ("trials", "positive_trials", "positive_success", "filled", "negative_trials", "negative_success",
           "removal", "locality_mean", "locality_max", "locality_pass")


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
            cells = [name, cls, str(p["positive_trials"]), pct(p["positive_success"], 1), pct(p["filled"], 1),
                     str(p["negative_trials"]), pct(p["negative_success"], 1), pct(p["removal"], 1),
                     pct(p["locality_mean"], 1), pct(p["locality_max"], 1), pct(p["locality_pass"], 1), ms]
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


def public_result(result: dict) -> dict:
    """The result without the per-trial records (they go to NAME_trials.csv)."""
    out = dict(result, protocols=dict(result["protocols"]))
    out["protocols"]["clicks"] = {k: v for k, v in result["protocols"]["clicks"].items() if k != "trials"}
    return out


def write_click_reports(result: dict, out_dir: str | Path, name: str = "eval") -> list[Path]:
    """NAME.md, NAME.csv (per row and class), NAME_trials.csv (every trial), NAME.json."""
    res = result["protocols"]["clicks"]
    md = [f"# Click response: {result['checkpoint']}", "",
          f"Data `{result['data']}`, split `{result['split']}`, {result['cases']} cases; HU window "
          f"{result['window']}; weights: {result.get('weights_kind')}; rows without '+ rules' are the network's "
          "own output.", "", "## Protocol", "", res["definition"], "", "## Results (percent of trials)", "",
          markdown_table(res), "", *targets_lines(res), ""]
    return write_outputs(out_dir, name, {".md": "\n".join(md), ".csv": summary_rows(res),
                                         "_trials.csv": trial_rows(res), ".json": public_result(result)})


def run_clicks(args: argparse.Namespace, model: torch.nn.Module, window: tuple[float, float],
               cases: Iterable[D.CaseData], result: dict) -> int:
    """`usam evaluate --protocol clicks` after the checkpoint is loaded: evaluate, write, print."""
    starts = parse_starts(args.start)
    result.pop("prompts", None)  # the paper's prompt rows do not apply
    result["starts"] = starts
    feeds = (False,) if args.no_mask_prompt else (True, False)
    result["protocols"]["clicks"] = evaluate_click_response(
        cases, model, window, starts, feeds, args.batch_size, args.prompt_rules, progress=not args.no_progress)
    return emit(args, result, write_click_reports, markdown_table(result["protocols"]["clicks"]), public_result(result))
