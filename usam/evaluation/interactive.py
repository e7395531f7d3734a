"""`usam evaluate --protocol interactive`: U-SAM measured as interactive models are.

The protocol of the CVPR 2025 challenge "Foundation models for interactive 3D biomedical image
segmentation", adapted to a 2D model (clicks per slice, scores per case in 3D):
- Slices: every slice of each case's evaluation range (usam.data.eval_z_range), as the case3d
  protocol; each slice is encoded once and its features serve every step.
- Step 0, the start: 'box' = the union box of the slice's ground-truth foreground with the test
  margin (2 px at 224, usam.prompts.slice_box_from_mask: eval_prompts' box), no prompt on a slice
  without foreground; 'none' = no prompt at all.
- Steps k = 1..K (K = 5): on every slice whose prediction has an error, one click at the centre
  of the largest error component over both classes (usam.clicks.next_click: positive of the
  true class, negative of the drawn class) joins the slice's prompts (the start's box and all
  earlier clicks stay), and the slice's previous logits enter as the mask prompt. A slice
  without error gets no click and keeps its prediction. Clicks are counted per slice: one step
  is one click on each slice that still has an error.
- Scores per step: each case in 3D at native resolution (logits upsampled, as case3d), Dice and
  NSD per class, the case mean over its defined classes; the cohort's per class mean over cases
  (undefined excluded) and mean of the two class means, as the case3d rows.
- dsc_auc / nsd_auc: the trapezoid of the cohort's mean curve over steps 1..K at unit spacing
  (K = 5: at most 4.0; the start, step 0, is not integrated); per case the same of its curve.
- NoC@t: per case the fewest steps k in 0..N (N = 20) after which the case's mean Dice >= t,
  N when never (RITM); the cohort's is the mean over cases.
- seconds_per_click: model time (prompts to the model frame, decode of each clicked slice, logits
  to labels) per slice click.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from usam import data as D
from usam.clicks import next_clicks
from usam.errors import UsamError
from usam.evaluate import DEFAULT_NSD_MM, crop_to_union, summarize_cases
from usam.evaluation.cases import eval_cases
from usam.evaluation.output import parse_choices
from usam.evaluation.sessions import add_click, case_session, start_slice
from usam.interactive import InteractiveSession
from usam.metrics import case_metrics
from usam.prompt_rules import parse_rules
from usam.prompts import SlicePrompts, slice_box_from_mask

STARTS = ("box", "none")
CLICKS = 5
NOC_CLICKS = 20
NOC_THRESHOLDS = {"noc85": 0.85, "noc90": 0.90}
CLASSES = (1, 2)
Trace = Callable[[dict], None]


def parse_starts(text: str) -> list[str]:
    """'all' or a comma list of starts (box, none)."""
    return parse_choices(text, STARTS, "start")


def start_prompts(label2d: np.ndarray, start: str) -> SlicePrompts:
    """Step 0's prompts of one slice in slice pixels: the ground truth's union box (test margin) or nothing."""
    if start == "none":
        return SlicePrompts.empty()
    if start == "box":
        return slice_box_from_mask(label2d, margin=2)
    raise UsamError(f"unknown start {start!r}")


def trapezoid_auc(values: Sequence[float]) -> float:
    """Area under values at unit spacing (trapezoid rule); NaN if any value is undefined."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or np.isnan(v).any():
        return float("nan")
    return float(((v[1:] + v[:-1]) / 2).sum())


def number_of_clicks(dice_by_step: Sequence[float], threshold: float, max_clicks: int = NOC_CLICKS) -> int:
    """Fewest steps k (0 = the start) with Dice >= threshold among the first max_clicks + 1; max_clicks if never."""
    for k, d in enumerate(list(dice_by_step)[:max_clicks + 1]):
        if not math.isnan(d) and d >= threshold:
            return k
    return max_clicks


def _class_counts(labels: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per slice and class: |pred & gt| and |pred| (n, 2)."""
    inter = np.stack([((labels == c) & (gt == c)).sum(axis=(1, 2)) for c in CLASSES], axis=1)
    pred = np.stack([(labels == c).sum(axis=(1, 2)) for c in CLASSES], axis=1)
    return inter, pred


def _mean_dice(inter: np.ndarray, pred: np.ndarray, gt_total: np.ndarray) -> float:
    """The case's mean Dice over its defined classes from per-slice counts (NaN when none is defined)."""
    i, p = inter.sum(axis=0), pred.sum(axis=0)
    denom = p + gt_total
    vals = [2.0 * i[c] / denom[c] for c in range(len(CLASSES)) if denom[c] > 0]
    return float(np.mean(vals)) if vals else float("nan")


def run_case(session: InteractiveSession, case: D.CaseData, zs: np.ndarray, start: str, clicks: int = CLICKS,
             noc_clicks: int = NOC_CLICKS, nsd_tolerance_mm: float = DEFAULT_NSD_MM, feed_mask: bool = True,
             trace: Trace | None = None) -> dict:
    """One start of the interactive protocol on one case, driving its InteractiveSession slice by slice."""
    gt = case.labels[zs]
    labels = np.stack([start_slice(session, int(z), start_prompts(g, start)).labels for z, g in zip(zs, gt)])

    def scores() -> dict:
        full = np.zeros_like(case.labels)
        full[zs] = labels
        cm = case_metrics(*crop_to_union(full, case.labels), case.spacing, nsd_tolerance_mm=nsd_tolerance_mm)
        return {"per_class": {c: {k: cm["per_class"][c][k] for k in ("dice", "nsd")} for c in CLASSES},
                "mean": {k: cm["mean"][k] for k in ("dice", "nsd")}}

    gt_total = np.array([(case.labels == c).sum() for c in CLASSES])
    inter, pred = _class_counts(labels, gt)
    per_step, dice_noc, placed_by_step = [scores()], [_mean_dice(inter, pred, gt_total)], [0]
    model_s = 0.0
    for k in range(1, max(clicks, noc_clicks) + 1):
        new = []
        for b in range(0, len(zs), 16):  # bounded memory at 512 x 512
            new += next_clicks(labels[b:b + 16], gt[b:b + 16], CLASSES)
        active = [i for i, c in enumerate(new) if c is not None]
        if trace is not None:
            trace({"case_id": case.case_id, "start": start, "step": k, "before": labels.copy(), "gt": gt,
                   "clicks": new})
        if not active:
            break  # no error left on any slice: every later step equals this one
        t0 = time.perf_counter()
        for i in active:
            labels[i] = add_click(session, int(zs[i]), new[i], feed_mask).labels
        model_s += time.perf_counter() - t0
        placed_by_step.append(len(active))
        inter[active], pred[active] = _class_counts(labels[active], gt[active])
        dice_noc.append(_mean_dice(inter, pred, gt_total))
        if k <= clicks:
            per_step.append(scores())
        if k >= clicks and all(any(d >= t for d in dice_noc) for t in NOC_THRESHOLDS.values()):
            break  # the curve is complete and every NoC threshold was reached
    per_step += [per_step[-1]] * (clicks + 1 - len(per_step))
    curve = [s["mean"]["dice"] for s in per_step]
    n_placed = int(sum(placed_by_step))
    return {"case_id": case.case_id, "z_range": [int(zs[0]), int(zs[-1]) + 1], "per_step": per_step,
            "dice_mean_by_click": curve, "nsd_mean_by_click": [s["mean"]["nsd"] for s in per_step],
            "dsc_auc": trapezoid_auc(curve[1:]), "nsd_auc": trapezoid_auc([s["mean"]["nsd"] for s in per_step][1:]),
            "final_dice": curve[-1], "final_nsd": per_step[-1]["mean"]["nsd"],
            **{name: number_of_clicks(dice_noc, t, noc_clicks) for name, t in NOC_THRESHOLDS.items()},
            "dice_mean_noc": dice_noc, "clicks_by_step": placed_by_step, "clicks": n_placed,
            "model_seconds": model_s, "seconds_per_click": model_s / n_placed if n_placed else float("nan")}


def summarize_start(per_case: list[dict], clicks: int = CLICKS) -> dict:
    """The cohort's row of one start: curves per class and mean, AUCs, final scores, NoC, speed."""
    steps = [summarize_cases([{"per_class": pc["per_step"][k]["per_class"]} for pc in per_case], ("dice", "nsd"))
             for k in range(clicks + 1)]
    row: dict = {"cases": len(per_case), "clicks": clicks}
    for key in ("dice", "nsd"):
        row[f"{key}_mean_by_click"] = [s["mean"][key] for s in steps]
        row[f"{key}_by_click_per_class"] = {c: [s["per_class"][c][key] for s in steps] for c in CLASSES}
    auc = {"dsc": "dice", "nsd": "nsd"}
    for name, key in auc.items():
        row[f"{name}_auc"] = trapezoid_auc(row[f"{key}_mean_by_click"][1:])
        row[f"{name}_auc_per_class"] = {c: trapezoid_auc(v[1:]) for c, v in row[f"{key}_by_click_per_class"].items()}
    row["final_dice"], row["final_nsd"] = row["dice_mean_by_click"][-1], row["nsd_mean_by_click"][-1]
    for name in NOC_THRESHOLDS:
        row[name] = float(np.mean([pc[name] for pc in per_case])) if per_case else float("nan")
    total_s, total_clicks = sum(pc["model_seconds"] for pc in per_case), sum(pc["clicks"] for pc in per_case)
    row["seconds_per_click"] = total_s / total_clicks if total_clicks else float("nan")
    row["clicks_placed"] = total_clicks
    return row


def evaluate_interactive(cases: Iterable[D.CaseData], model: torch.nn.Module, window: tuple[float, float],
                         starts: Sequence[str] = STARTS, clicks: int = CLICKS, noc_clicks: int = NOC_CLICKS,
                         nsd_tolerance_mm: float = DEFAULT_NSD_MM, batch_size: int = 8, prompt_rules: str = "none",
                         feed_mask: bool = True, progress: bool = False, trace: Trace | None = None) -> dict:
    """The interactive protocol over a cohort: one row per start (and per start '+ rules' when rules are named)."""
    if clicks < 1 or noc_clicks < 1:
        raise UsamError("the interactive protocol needs at least one click (--clicks, --noc-clicks)")
    named = any(parse_rules(prompt_rules))
    variants = [(s, s, "none") for s in starts] + ([(f"{s} + rules", s, prompt_rules) for s in starts] if named else [])
    per_case: dict[str, list[dict]] = {name: [] for name, _, _ in variants}
    needs = "the interactive protocol needs volumes"
    for case, zs in eval_cases(cases, "interactive", needs, progress):
        session = case_session(model, case, zs, window, batch_size, noc_clicks + 2)
        for name, start, rules in variants:
            session.set_rules(rules)  # every start begins afresh on each slice: nothing of the last row carries over
            per_case[name].append(run_case(session, case, zs, start, clicks, noc_clicks, nsd_tolerance_mm, feed_mask,
                                           trace))
    return {"protocol": "interactive", "nsd_tolerance_mm": float(nsd_tolerance_mm), "clicks": clicks,
            "noc_max_clicks": noc_clicks, "noc_thresholds": dict(NOC_THRESHOLDS), "mask_prompt": feed_mask,
            "prompt_rules": prompt_rules,
            "definition": __doc__.split("\n\n", 1)[1].strip(),
            "rows": {name: summarize_start(per_case[name], clicks) for name in per_case},
            "per_case": per_case}
