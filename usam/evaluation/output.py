"""What every `usam evaluate` protocol shares at its edges: choice lists, percentages, JSON-safe values, CSV
files and the command's output (files written, then one JSON object or the Markdown table)."""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from usam.errors import UsamError


def parse_choices(text: str, choices: Sequence[str], what: str) -> list[str]:
    """'all' (every choice, in order) or a comma list of choices; a UsamError naming `what` otherwise."""
    picked = list(choices) if text == "all" else [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in picked if m not in choices]
    if bad or not picked:
        raise UsamError(f"unknown {what}(s) {bad or text!r}; choose from {', '.join(choices)} or all")
    return picked


def pct(v: float | None, digits: int = 2) -> str:
    """A fraction as percent with `digits` decimals; '-' when undefined."""
    return "-" if v is None or math.isnan(v) else f"{100.0 * v:.{digits}f}"


def jsonable(obj):
    """obj with string keys, numpy scalars as Python numbers, NaN as None and infinities as strings (JSON has none)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return None if math.isnan(f) else (str(f) if math.isinf(f) else f)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_json(path: Path, result: dict) -> None:
    """The result as indented JSON (jsonable) with a final newline."""
    path.write_text(json.dumps(jsonable(result), indent=1) + "\n")


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows as CSV with the first row's keys as header; an empty file when there is no row."""
    with open(path, "w", newline="") as fh:
        if rows:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


def write_outputs(out_dir: str | Path, name: str, parts: dict[str, str | list[dict] | dict]) -> list[Path]:
    """out_dir/NAME+suffix for each part, in order: rows to a '.csv', a result to a '.json', text otherwise."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix, content in parts.items():
        path = out / f"{name}{suffix}"
        if suffix.endswith(".csv"):
            write_csv(path, content)
        elif suffix.endswith(".json"):
            write_json(path, content)
        else:
            path.write_text(content)
        paths.append(path)
    return paths


def emit(args: argparse.Namespace, result: dict, write: Callable[[dict, str, str], list[Path]], text: str,
         printed: dict | None = None) -> int:
    """The command's output: with --out the files `write` makes (named on stderr); then one JSON object of
    `printed` (default: the result) with --json, else `text`. Returns the exit status 0."""
    if args.out:
        for p in write(result, args.out, args.name):
            print(f"wrote {p}", file=sys.stderr)
    print(json.dumps(jsonable(result if printed is None else printed)) if args.json else text)
    return 0
