"""`usam evaluate --protocol clicks`: does one click do what it says, and only near where it lands?

Definition (quoted by the report):
- Slices: every slice of each case's evaluation range (usam.data.eval_z_range), as the other
  protocols; each slice is encoded once and its features serve the start and every trial.
- Start: the model's prediction of the slice with no prompt ('none'), or with the ground
  truth's union box with the test margin ('box': 2 px at 224, as the interactive protocol's box
  start; no prompt on a slice without foreground). Labels are scored at the slice's own
  resolution (logits resized bilinearly, then argmax: usam.preprocess.logits_to_labels).
- Trials, independent of each other, each from the start: per slice and class c in (1, 2)
  (a) positive: the largest 8-connected region of pixels with gt == c and start != c (missed,
      or drawn as the other class); a positive click of class c at its centre;
  (b) negative: the largest 8-connected region with gt == 0 and start == c; a negative click of
      class c at its centre.
  A region smaller than 4 pixels of the 224 model frame (ceil(4 h w / 224^2) slice pixels:
  21 at 512 x 512, 2 at 128 x 128) gives no trial. The centre is the maximum of the region's
  Euclidean distance transform with the slice border counting as outside, first maximum in
  raster order, largest-region ties to the first in raster order (usam.clicks). The click is a
  point in slice pixels (usam.prompts converts it) added to the start's prompts (the box stays),
  and the start's logits enter as the mask prompt (rows 'no mask prompt': they do not).
- Success: (a) the clicked pixel's new label == c; (b) the clicked pixel's new label != c.
  Region share: the share of the region's pixels that now have c (filled, a) or not c (removed, b).
- Locality, every trial: among the slice's pixels farther than 30 mm from the click (distance
  in mm with the slice's pixel spacing), the share whose label differs from the start's (0 when
  no pixel is that far); a trial passes when this share is at most 1 %.
- Figures per class and over both, pooled over all trials of all cases: trials, success %,
  filled / removed %, mean locality share, % of trials passing locality. Targets (issue 16):
  positive and negative success at least 90 %, every trial passing locality.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from scipy import ndimage

from usam import data as D
from usam.clicks import Click, next_clicks
from usam.errors import UsamError
from usam.evaluation.cases import eval_cases
from usam.evaluation.interactive import start_prompts
from usam.evaluation.sessions import add_click, case_session, start_slice, undo_to
from usam.interactive import InteractiveSession
from usam.preprocess import SIZE
from usam.prompt_rules import parse_rules

STARTS = ("none", "box")
CLASSES = (1, 2)
KINDS = tuple((c, True) for c in CLASSES) + tuple((c, False) for c in CLASSES)  # (class, positive)
MIN_MODEL_PX = 4        # smallest region with a trial, in pixels of the 224 model frame
FAR_MM = 30.0           # locality: pixels farther than this from the click
LOCALITY_MAX = 0.01     # a trial passes when at most this share of the far pixels changed
TARGETS = {"positive_success": 0.90, "negative_success": 0.90, "locality_pass": 1.0}
_EIGHT = np.ones((3, 3), dtype=bool)


def min_region_px(shape_hw: tuple[int, int], model_px: int = MIN_MODEL_PX) -> int:
    """The smallest region with a trial in slice pixels: model_px pixels of the 224 frame, at least 1."""
    h, w = shape_hw
    return max(1, math.ceil(model_px * h * w / (SIZE * SIZE) - 1e-9))


def region_centres(masks: np.ndarray) -> list[tuple[Click, np.ndarray] | tuple[None, None]]:
    """Per slice of a (n, h, w) bool stack: the centre of its largest 8-connected region and the region.

    The centre is usam.clicks': a prediction equal to the mask against an empty ground truth has
    exactly the mask as its only error kind, so next_clicks' choice of region, distance-transform
    maximum and tie-breaks apply unchanged. The region is the component holding the centre."""
    masks = np.asarray(masks, dtype=bool)
    clicks = next_clicks(masks.astype(np.uint8), np.zeros(masks.shape, np.uint8), (1,))
    out: list = []
    for m, click in zip(masks, clicks):
        if click is None:
            out.append((None, None))
            continue
        lab, _ = ndimage.label(m, structure=_EIGHT)
        out.append((click, lab == lab[click.y, click.x]))
    return out


def far_mask(shape_hw: tuple[int, int], x: int, y: int, spacing_yx: tuple[float, float],
             far_mm: float = FAR_MM) -> np.ndarray:
    """Bool (h, w): pixels whose centre lies farther than far_mm from pixel (x, y), with the pixel spacing (sy, sx)."""
    h, w = shape_hw
    sy, sx = (float(s) for s in spacing_yx)
    dy = ((np.arange(h) - y) * sy) ** 2
    dx = ((np.arange(w) - x) * sx) ** 2
    return dy[:, None] + dx[None, :] > far_mm * far_mm


def locality_share(before: np.ndarray, after: np.ndarray, x: int, y: int, spacing_yx: tuple[float, float],
                   far_mm: float = FAR_MM) -> tuple[float, int]:
    """(share of the pixels farther than far_mm from (x, y) whose label changed, number of such pixels); 0 if none."""
    far = far_mask(before.shape, x, y, spacing_yx, far_mm)
    n_far = int(far.sum())
    if n_far == 0:
        return 0.0, 0
    return float((far & (before != after)).sum()) / n_far, n_far


def find_trials(start: np.ndarray, gt: np.ndarray, min_px: int) -> list[list[dict]]:
    """Per kind of KINDS: per slice of (n, h, w) stacks the trial (click, region) or None (no region of min_px)."""
    out = []
    for c, positive in KINDS:
        masks = (gt == c) & (start != c) if positive else (gt == 0) & (start == c)
        trials = []
        for click, region in region_centres(masks):
            size = 0 if region is None else int(region.sum())
            if click is None or size < min_px:
                trials.append(None)
                continue
            click = Click(x=click.x, y=click.y, cls=c, positive=positive)
            trials.append({"click": click, "region": region, "region_px": size})
        out.append(trials)
    return out


def _score(trial: dict, before: np.ndarray, after: np.ndarray, spacing_yx: tuple[float, float],
           far_mm: float) -> dict:
    """One trial's record: where, success, region share, locality."""
    click, region = trial["click"], trial["region"]
    now = after[click.y, click.x]
    success = bool(now == click.cls) if click.positive else bool(now != click.cls)
    fixed = (after[region] == click.cls) if click.positive else (after[region] != click.cls)
    share, n_far = locality_share(before, after, click.x, click.y, spacing_yx, far_mm)
    return {"kind": "positive" if click.positive else "negative", "cls": click.cls, "x": click.x, "y": click.y,
            "region_px": trial["region_px"], "success": success, "region_share": float(fixed.mean()),
            "far_px": n_far, "locality": share, "locality_pass": share <= LOCALITY_MAX}


def run_case(session: InteractiveSession, case: D.CaseData, zs: np.ndarray, start: str,
             feeds: Sequence[bool] = (True, False), min_model_px: int = MIN_MODEL_PX, far_mm: float = FAR_MM) -> dict:
    """Every trial of one start on one case, driving its InteractiveSession: {feed: [trial records]}.

    Each trial is one click from the slice's start; undo(z) then gives the start back exactly (checked)."""
    gt = case.labels[zs]
    hw = tuple(gt.shape[1:])
    spacing_yx = tuple(case.spacing[1:])
    begun = [start_slice(session, int(z), start_prompts(g, start)) for z, g in zip(zs, gt)]
    labels = np.stack([r.labels for r in begun])
    found: list[list[dict | None]] = []
    for b in range(0, len(zs), 16):  # bounded memory at 512 x 512
        part = find_trials(labels[b:b + 16], gt[b:b + 16], min_region_px(hw, min_model_px))
        found = part if not found else [f + p for f, p in zip(found, part)]
    result: dict = {}
    for feed in feeds:
        records, model_s = [], 0.0
        for trials in found:
            for i, trial in enumerate(trials):
                if trial is None:
                    continue
                z = int(zs[i])
                t0 = time.perf_counter()
                after = add_click(session, z, trial["click"], feed).labels
                model_s += time.perf_counter() - t0
                undo_to(session, z, labels[i], begun[i].logits)  # trials are independent: back to the start
                records.append({"case_id": case.case_id, "z": z, **_score(trial, labels[i], after, spacing_yx,
                                                                          far_mm)})
        result[feed] = {"trials": records, "model_seconds": model_s}
    return result


def _mean(values: Iterable[float]) -> float:
    vals = [float(v) for v in values]
    return float(np.mean(vals)) if vals else float("nan")


def summarize_trials(trials: Sequence[dict]) -> dict:
    """Pooled figures of these trials: counts, success and region shares per kind, locality mean and pass share."""
    pos = [t for t in trials if t["kind"] == "positive"]
    neg = [t for t in trials if t["kind"] == "negative"]
    return {"trials": len(trials), "positive_trials": len(pos), "negative_trials": len(neg),
            "positive_success": _mean(t["success"] for t in pos), "filled": _mean(t["region_share"] for t in pos),
            "negative_success": _mean(t["success"] for t in neg), "removal": _mean(t["region_share"] for t in neg),
            "locality_mean": _mean(t["locality"] for t in trials),
            "locality_max": max((t["locality"] for t in trials), default=float("nan")),
            "locality_pass": _mean(t["locality_pass"] for t in trials)}


def summarize_row(trials: Sequence[dict], model_seconds: float = 0.0, cases: int = 0) -> dict:
    """A row: the pooled figures over both classes, per class, the targets met and the model time per click."""
    row = summarize_trials(trials)
    row["per_class"] = {c: summarize_trials([t for t in trials if t["cls"] == c]) for c in CLASSES}
    row["targets_met"] = {k: (not math.isnan(row[k])) and row[k] >= v for k, v in TARGETS.items()}
    row["cases"] = cases
    row["seconds_per_click"] = model_seconds / len(trials) if trials else float("nan")
    return row


def variant_name(start: str, feed: bool, rules: bool) -> str:
    """'none', 'box, no mask prompt', 'none + rules', ..."""
    return start + ("" if feed else ", no mask prompt") + (" + rules" if rules else "")


def evaluate_click_response(cases: Iterable[D.CaseData], model: torch.nn.Module, window: tuple[float, float],
                            starts: Sequence[str] = STARTS, feeds: Sequence[bool] = (True, False),
                            batch_size: int = 8, prompt_rules: str = "none", min_model_px: int = MIN_MODEL_PX,
                            far_mm: float = FAR_MM, progress: bool = False) -> dict:
    """The click-response protocol over a cohort: a row per start and feed (and '+ rules' rows when rules are named)."""
    if not feeds:
        raise UsamError("the click protocol needs a mask-prompt choice (feeds)")
    rule_sets = [(False, "none")] + ([(True, prompt_rules)] if any(parse_rules(prompt_rules)) else [])
    names = [(variant_name(s, f, r), s, f, r) for r, _ in rule_sets for s in starts for f in feeds]
    trials: dict[str, list[dict]] = {n: [] for n, *_ in names}
    seconds = dict.fromkeys(trials, 0.0)
    per_case: dict[str, list[dict]] = {n: [] for n in trials}
    n_cases = 0
    for case, zs in eval_cases(cases, "clicks", "the click protocol needs volumes", progress):
        n_cases += 1
        session = case_session(model, case, zs, window, batch_size)
        for with_rules, rules in rule_sets:
            session.set_rules(rules)  # every start begins afresh on each slice: nothing of the last row carries over
            for s in starts:
                res = run_case(session, case, zs, s, feeds, min_model_px, far_mm)
                for f in feeds:
                    name = variant_name(s, f, with_rules)
                    trials[name] += res[f]["trials"]
                    seconds[name] += res[f]["model_seconds"]
                    per_case[name].append({"case_id": case.case_id, "z_range": [int(zs[0]), int(zs[-1]) + 1],
                                           **summarize_row(res[f]["trials"], res[f]["model_seconds"], 1)})
    return {"protocol": "clicks", "starts": list(starts), "mask_prompt": [bool(f) for f in feeds],
            "prompt_rules": prompt_rules, "min_region_model_px": min_model_px, "far_mm": far_mm,
            "locality_max": LOCALITY_MAX, "targets": dict(TARGETS),
            "definition": __doc__.split("\n\n", 1)[1].strip(),
            "rows": {n: summarize_row(trials[n], seconds[n], n_cases) for n in trials},
            "per_case": per_case, "trials": trials}
