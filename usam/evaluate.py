"""`python -m usam evaluate`: Table-2/4-style evaluation of a checkpoint on a cohort split, per
prompt mode, in the per-case 3D protocol (default) and the public code's global slice protocol."""
from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from usam import data as D
from usam.errors import UsamError
from usam.evaluation.cases import eval_cases
from usam.evaluation.output import emit, parse_choices, pct, write_outputs

EVAL_PROMPTS = ("none", "points1", "points3", "points5", "box")
PROTOCOLS = ("case3d", "reference")
CLASS_NAMES = {1: "normal", 2: "tumor"}
DEFAULT_NSD_MM = 2.0

# predict_case(case, zs, {mode: [Prompts per slice]}) -> {mode: labels (n, h, w) at native size}
CasePredictor = Callable[[D.CaseData, np.ndarray, dict], dict]
# predict224(model images (n, 3, 224, 224), {mode: [Prompts]}) -> {mode: labels (n, 224, 224)}
SlicePredictor = Callable[[torch.Tensor, dict], dict]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `python -m usam evaluate`."""
    p.add_argument("--checkpoint", default=None, help="U-SAM checkpoint (default: flag > $USAM_CHECKPOINT > demo)")
    # $USAM_CHECKPOINT read here, at the CLI's edge, kept apart from the flag so errors name the origin
    p.set_defaults(checkpoint_env=os.environ.get("USAM_CHECKPOINT") or None)
    p.add_argument("--data", required=True, help="cohort folder (manifest) or the public code's npz root")
    p.add_argument("--format", default="auto", choices=["auto", "manifest", "npz"])
    p.add_argument("--split", default="test", choices=D.SPLITS)
    p.add_argument("--prompt", default="all", help="none, points1, points3, points5, box, a comma list, or all")
    p.add_argument("--protocol", default="case3d", choices=PROTOCOLS + ("both", "interactive", "clicks"),
                   help="case3d: per case in 3D at native resolution (logits upsampled); "
                        "reference: the public code's global slice-level Dice/IoU at 224; interactive: "
                        "corrective clicks per slice from a start (usam/evaluation/interactive.py); clicks: "
                        "what one click does, and how far (usam/evaluation/click_response.py)")
    p.add_argument("--start", default="all", help="interactive, clicks: box, none, a comma list, or all")
    p.add_argument("--clicks", type=int, default=5, help="interactive: corrective clicks per slice (default 5)")
    p.add_argument("--noc-clicks", type=int, default=20, help="interactive: NoC's click limit (default 20)")
    p.add_argument("--no-mask-prompt", action="store_true",
                   help="interactive, clicks: do not feed the previous logits back")
    p.add_argument("--prompt-rules", default="none",
                   help="constrain the output to what prompts state (usam/prompt_rules.py): box = foreground "
                        "inside the box, gate = only the classes clicked, select = only the regions clicked; "
                        "a comma list, all, or none (default %(default)s)")
    p.add_argument("--nsd-tolerance", type=float, default=DEFAULT_NSD_MM,
                   help="NSD tolerance in mm (default %(default)s)")
    p.add_argument("--window", nargs=2, type=float, default=None, metavar=("LO", "HI"),
                   help="HU window (default: the checkpoint's preprocessing.window)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="npz layout: share of train/ that is val")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default=None)
    p.add_argument("--limit", "--max-cases", type=int, default=None, help="evaluate only the first N cases")
    p.add_argument("--out", default=None, help="write NAME.md, NAME.csv, NAME_cases.csv and NAME.json here")
    p.add_argument("--name", default="eval", help="file name stem of the outputs (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object to stdout")
    p.add_argument("--no-progress", action="store_true")


def parse_prompt_modes(text: str) -> list[str]:
    """'all' or a comma list of evaluation prompt rows."""
    return parse_choices(text, EVAL_PROMPTS, "prompt mode")


# ----------------------------------------------------------------------------- protocols


def _nanmean(values: Iterable[float]) -> float:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(vals)) if vals else float("nan")


def summarize_cases(per_case: list[dict], keys=("dice", "iou", "nsd", "hd95")) -> dict:
    """Per class: mean over cases (undefined excluded); 'mean': mean of the two class means."""
    per_class = {}
    for c in (1, 2):
        per_class[c] = {k: _nanmean(pc["per_class"][c][k] for pc in per_case) for k in keys}
        per_class[c]["cases"] = sum(not math.isnan(pc["per_class"][c]["dice"]) for pc in per_case)
    mean = {k: _nanmean(per_class[c][k] for c in (1, 2)) for k in keys}
    return {"per_class": per_class, "mean": mean, "cases": len(per_case)}


def crop_to_union(pred: np.ndarray, gt: np.ndarray, margin: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Both label maps cropped to the box around their union's foreground plus a margin.

    Dice, IoU, volumes, NSD and HD95 do not change (every surface lies inside the crop and the
    margin keeps a background border), but surface distances on a 512 x 512 x 150 volume cost
    seconds where the cropped region costs milliseconds."""
    fg = (pred > 0) | (gt > 0)
    if not fg.any():
        return pred, gt
    sl = []
    for axis in range(fg.ndim):
        other = tuple(a for a in range(fg.ndim) if a != axis)
        idx = np.flatnonzero(fg.any(axis=other))
        sl.append(slice(max(0, idx[0] - margin), idx[-1] + 1 + margin))
    sl = tuple(sl)
    return pred[sl], gt[sl]


def evaluate_case3d(cases: Iterable[D.CaseData], predict_case: CasePredictor, modes: list[str],
                    nsd_tolerance_mm: float = DEFAULT_NSD_MM, progress: bool = False) -> dict:
    """Per-case 3D metrics at native resolution on each case's annotated slice range
    (manifest rectum_start..rectum_end, else the ground truth's z extent); prompts are
    derived deterministically from each ground-truth slice; outside the range = background."""
    from usam.metrics import case_metrics

    per_case: dict[str, list[dict]] = {m: [] for m in modes}
    for case, zs in eval_cases(cases, "case3d", "use --protocol reference", progress):
        prompts = {m: [D.eval_prompts(case.labels[z], m) for z in zs] for m in modes}
        preds = predict_case(case, zs, prompts)
        for m in modes:
            full = np.zeros_like(case.labels)
            full[zs] = preds[m]
            p_crop, g_crop = crop_to_union(full, case.labels)
            cm = case_metrics(p_crop, g_crop, case.spacing, nsd_tolerance_mm=nsd_tolerance_mm)
            per_case[m].append({"case_id": case.case_id, "z_range": [int(zs[0]), int(zs[-1]) + 1],
                                "per_class": cm["per_class"], "mean": cm["mean"]})
    rows = {m: summarize_cases(per_case[m]) for m in modes}
    return {"protocol": "case3d", "nsd_tolerance_mm": nsd_tolerance_mm,
            "region": "annotated slice range (rectum_start..rectum_end) or ground-truth z extent",
            "rows": rows, "per_case": per_case}


def evaluate_reference(cases: Iterable[D.CaseData], predict224: SlicePredictor, modes: list[str],
                       window: tuple[float, float], progress: bool = False) -> dict:
    """The public code's protocol: foreground slices at 224 (labels resized nearest), argmax at
    224, prompts from the 224 label slice, intersections and sizes summed over all slices."""
    from usam.metrics import global_slice_metrics

    pairs: dict[str, list] = {m: [] for m in modes}
    if progress:
        from tqdm import tqdm

        cases = tqdm(cases, desc="reference", unit="case", file=sys.stderr)
    for case in cases:
        lab = D.resize_labels(case.labels, D.MODEL_SIZE, "nearest")
        zs = np.flatnonzero(lab.reshape(len(lab), -1).any(axis=1))  # their loader skips empty slices
        if zs.size == 0:
            continue
        images = D.model_input(case.image[zs], window, case.prewindowed)
        prompts = {m: [D.eval_prompts(lab[z], m) for z in zs] for m in modes}
        preds = predict224(images, prompts)
        for m in modes:
            pairs[m] += list(zip(preds[m], lab[zs]))
    rows = {}
    for m in modes:
        if not pairs[m]:
            raise UsamError("no foreground slices to evaluate")
        g = global_slice_metrics(pairs[m])
        per_class = {c: {"dice": g["per_class"][c]["dice"], "iou": g["per_class"][c]["iou"], "nsd": float("nan")}
                     for c in (1, 2)}
        rows[m] = {"per_class": per_class, "mean": {"dice": g["mean"]["dice"], "iou": g["mean"]["iou"],
                                                     "nsd": float("nan")}, "slices": len(pairs[m])}
    return {"protocol": "reference", "rows": rows,
            "note": "global slice-level Dice/IoU at 224 over foreground slices; no NSD in the public code"}


# ----------------------------------------------------------------------------- model inference


def model_predictors(model: torch.nn.Module, window: tuple[float, float], device: torch.device | None = None,
                     batch_size: int = 8, prompt_rules: str = "none") -> tuple[CasePredictor, SlicePredictor]:
    """Predict functions of a model (a Usam in eval mode or its FastUsam; used as given): every
    slice is encoded once and decoded per prompt mode through usam.predictor's one inference
    path; case3d labels come from bilinearly upsampled logits (usam.preprocess.logits_to_labels);
    prompt_rules (usam.prompt_rules) constrain the logits to what the prompts state.
    `device` is the model's (kept for callers that pass it)."""
    from usam.predictor import encode_images, predict_logits
    from usam.preprocess import logits_to_labels
    from usam.prompt_rules import parse_rules

    rules = parse_rules(prompt_rules)

    def run_chunks(images: torch.Tensor, prompts: dict, out_hw: tuple[int, int] | None) -> dict:
        out: dict[str, list] = {m: [] for m in prompts}
        for i in range(0, images.shape[0], batch_size):
            feats = encode_images(model, images[i:i + batch_size])
            for m, plist in prompts.items():
                logits = predict_logits(model, feats, list(plist[i:i + batch_size]), rules)
                if out_hw is None:
                    out[m].append(logits.argmax(1).to(torch.uint8).cpu().numpy())
                else:
                    out[m].append(logits_to_labels(logits, out_hw)[0])
        return {m: np.concatenate(v) for m, v in out.items()}

    def predict_case(case: D.CaseData, zs: np.ndarray, prompts: dict) -> dict:
        images = D.model_input(case.image[zs], window, case.prewindowed)
        return run_chunks(images, prompts, case.labels.shape[1:])

    def predict224(images: torch.Tensor, prompts: dict) -> dict:
        return run_chunks(images, prompts, None)

    return predict_case, predict224


# ----------------------------------------------------------------------------- reports


def markdown_table(result: dict) -> str:
    """Paper-style table (percent): one row per protocol and prompt mode."""
    tol = result["nsd_tolerance_mm"]
    head = (f"| protocol | prompt | normal Dice | normal IoU | normal NSD@{tol:g}mm | tumor Dice | tumor IoU | "
            f"tumor NSD@{tol:g}mm | mean Dice | mean IoU | mean NSD@{tol:g}mm |")
    lines = [head, "|" + "---|" * 11]
    for proto, res in result["protocols"].items():
        for mode, row in res["rows"].items():
            cells = [proto, mode]
            for part in (row["per_class"][1], row["per_class"][2], row["mean"]):
                cells += [pct(part["dice"]), pct(part["iou"]), pct(part["nsd"])]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_rows(result: dict) -> list[dict]:
    """Summary rows: protocol, prompt, class, dice, iou, nsd (fractions, not percent)."""
    rows = []
    for proto, res in result["protocols"].items():
        for mode, row in res["rows"].items():
            for cls, part in ((CLASS_NAMES[1], row["per_class"][1]), (CLASS_NAMES[2], row["per_class"][2]),
                              ("mean", row["mean"])):
                rows.append({"protocol": proto, "prompt": mode, "class": cls, "dice": part["dice"],
                             "iou": part["iou"], "nsd": part["nsd"], "nsd_tolerance_mm": result["nsd_tolerance_mm"]})
    return rows


def case_csv_rows(result: dict) -> list[dict]:
    """Per-case rows of the case3d protocol (for box plots)."""
    rows = []
    res = result["protocols"].get("case3d")
    if not res:
        return rows
    for mode, cases in res["per_case"].items():
        for pc in cases:
            for c in (1, 2):
                m = pc["per_class"][c]
                rows.append({"prompt": mode, "case_id": pc["case_id"], "class": CLASS_NAMES[c],
                             **{k: m.get(k) for k in ("dice", "iou", "nsd", "hd95", "vol_pred_ml", "vol_gt_ml")}})
    return rows


def write_reports(result: dict, out_dir: str | Path, name: str = "eval") -> list[Path]:
    """NAME.md, NAME.csv, NAME_cases.csv and NAME.json in out_dir."""
    md = [f"# Evaluation: {result['checkpoint']}", "",
          f"Data `{result['data']}`, split `{result['split']}`, {result['cases']} cases; "
          f"NSD tolerance {result['nsd_tolerance_mm']:g} mm; HU window {result['window']}; "
          f"weights: {result.get('weights_kind')}; prompt rules: {result.get('prompt_rules', 'none')} "
          "(usam/prompt_rules.py; none = the network's own output).", "",
          "case3d: per-case 3D metrics at native resolution (logits upsampled bilinearly) on the annotated "
          "slice range, averaged over cases; reference: the public code's global slice-level Dice/IoU at 224 "
          "over foreground slices (no NSD). Test prompts are derived deterministically from each "
          "ground-truth slice (points evenly spaced per class, box with 2 px margin at 224).", "",
          markdown_table(result), ""]
    return write_outputs(out_dir, name, {".md": "\n".join(md), ".csv": csv_rows(result),
                                         "_cases.csv": case_csv_rows(result), ".json": result})


# ----------------------------------------------------------------------------- CLI


def run(args: argparse.Namespace) -> int:
    """Evaluate; prints the Markdown table (or one JSON object with --json)."""
    from usam.checkpoints import load_checkpoint, resolve_weights
    from usam.model.fast import optimize_for_inference
    from usam.prompt_rules import parse_rules

    modes = parse_prompt_modes(args.prompt)
    parse_rules(args.prompt_rules)  # a typo fails before the checkpoint loads
    if args.protocol in ("interactive", "clicks"):
        from usam.evaluation.interactive import parse_starts

        parse_starts(args.start)
    protocols = list(PROTOCOLS) if args.protocol == "both" else [args.protocol]
    fmt = D.detect_format(args.data) if args.format == "auto" else args.format
    if fmt == "npz" and {"case3d", "interactive", "clicks"} & set(protocols):
        raise UsamError("the npz layout holds single 224 slices without spacing: use --protocol reference")
    ckpt = resolve_weights(args.checkpoint, args.checkpoint_env)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, meta = load_checkpoint(ckpt, device=str(device))
    model = optimize_for_inference(model, device)  # once, where the model is loaded
    window = tuple(args.window) if args.window else tuple(
        (meta.get("preprocessing") or {}).get("window") or D.DEFAULT_WINDOW)
    predict_case, predict224 = model_predictors(model, window, device, args.batch_size, args.prompt_rules)
    progress = not args.no_progress
    ids = [c["case_id"] for c in D.list_cases(args.data, args.split)] if fmt == "manifest" else None
    n_cases = len(ids) if ids is not None else len(D.list_npz_slices(args.data, args.split, args.val_fraction))
    if args.limit:
        n_cases = min(n_cases, args.limit)

    def cases():
        for i, case in enumerate(D.iter_cases(args.data, args.split, fmt, args.val_fraction)):
            if args.limit and i >= args.limit:
                return
            yield case

    result = {"checkpoint": str(ckpt), "weights_kind": meta.get("weights_kind"), "data": str(args.data),
              "split": args.split, "cases": n_cases, "window": [float(w) for w in window],
              "nsd_tolerance_mm": float(args.nsd_tolerance), "prompts": modes, "prompt_rules": args.prompt_rules,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "protocols": {}}
    if args.protocol == "interactive":
        from usam.evaluation.interactive_report import run_interactive

        return run_interactive(args, model, window, cases(), result)
    if args.protocol == "clicks":
        from usam.evaluation.click_response_report import run_clicks

        return run_clicks(args, model, window, cases(), result)
    source = cases
    if len(protocols) > 1 and fmt == "manifest" and n_cases <= 16:
        loaded = list(cases())  # a few volumes: read them once for both protocols
        source = lambda: loaded  # noqa: E731
    if "case3d" in protocols:
        result["protocols"]["case3d"] = evaluate_case3d(source(), predict_case, modes, args.nsd_tolerance, progress)
    if "reference" in protocols:
        result["protocols"]["reference"] = evaluate_reference(source(), predict224, modes, window, progress)
    return emit(args, result, write_reports, f"NSD tolerance {args.nsd_tolerance:g} mm\n{markdown_table(result)}")
