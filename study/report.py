"""Study results: Table 3 (per group and per model variant, bootstrap 95% CIs, n), the paper's
Table 3 beside it, a reader-level view, per-case values and Plotly figures."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations
from typing import Sequence

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from study import ops, stats, studies
from study.models import Assignment, Case, Clinician, Study, Submission
from study.scoring import decode_mask, pairwise_dice

CLASSES = ("normal", "tumor", "mean")
METRICS = ("dice", "iou", "nsd")
ARM_LABELS = {"manual": "manual", "usam_p": "U-SAM/P (reader prompts)", "usam_b": "U-SAM/B (reader boxes)",
              "ai_edit": "AI-assisted edit"}
MODEL_LABELS = {"usam": "U-SAM", "usam_p": "U-SAM/P (auto prompts)", "usam_b": "U-SAM/B (auto box)"}

PAPER_TABLE3 = [  # USAM_SPEC.md "Observer study": time, then Dice/IoU/NSD normal, tumor, mean (%)
    ("Group 1", "166 min", (54.67, 42.83, 53.88), (68.10, 48.50, 40.65), (61.38, 45.67, 47.27)),
    ("Group 2", "141 min", (51.51, 39.07, 52.01), (65.76, 45.94, 35.48), (58.63, 42.50, 43.74)),
    ("Group 3", "111 min", (61.48, 49.27, 58.62), (74.63, 54.32, 46.30), (68.06, 51.80, 52.46)),
    ("U-SAM", "3 s", (61.86, 46.29, 73.21), (64.62, 49.58, 45.14), (63.24, 47.94, 59.18)),
    ("U-SAM/P", "3 s (+3 min prompts)", (66.24, 51.19, 78.50), (70.35, 55.34, 51.14), (68.29, 53.26, 64.82)),
    ("U-SAM/B", "3 s (+5 min prompts)", (67.73, 52.23, 79.24), (69.72, 54.77, 50.90), (68.72, 53.50, 65.07)),
]


@dataclass
class Report:
    """Everything the admin tab and `python -m study report` show."""
    study: dict
    rows: list[dict]                       # Table 3 rows (ours)
    reader_rows: list[dict]                # reader-level view
    per_case: list[dict]                   # per case x row means
    progress: list[dict]                   # reads per case vs k
    records: list[dict]
    figures: dict = field(default_factory=dict)
    markdown: str = ""
    paper_markdown: str = ""
    reader_markdown: str = ""


def load_records(s: Session, study: Study) -> list[dict]:
    """One dict per scored annotation (newest revision): reader, case, group, arm, kind, scores, times."""
    cases = {c.id: c for c in studies.study_cases(s, study.id)}
    logins = {u.id: u.login for u in s.scalars(select(Clinician).where(Clinician.study_id == study.id))}
    out = []
    for sub in ops.latest_submissions(s, study.id):
        rec = {"submission": sub.id, "reader": logins.get(sub.clinician_id) if sub.clinician_id else None,
               "case": cases[sub.case_id].key, "group": sub.group, "arm": sub.arm,
               "kind": "reader" if sub.clinician_id else "model", "revision": sub.revision,
               "active_s": sub.active_s, "wall_s": sub.wall_s, "prompt_s": sub.prompt_s,
               "inference_s": sub.inference_s, "nsd_tolerance_mm": sub.scores.get("nsd_tolerance_mm")}
        for k, v in sub.scores.items():
            if isinstance(v, (int, float)) and k != "nsd_tolerance_mm":
                rec[k] = v
        out.append(rec)
    return out


def row_specs(records: Sequence[dict]) -> list[tuple[str, dict]]:
    """(label, filter) of every Table 3 row present in the data, in the paper's order."""
    specs = []
    for g in (1, 2, 3):
        specs.append((f"Group {g}", {"kind": "reader", "arm": "manual", "group": g}))
    arms = {r["arm"] for r in records if r["kind"] == "reader"} - {"manual"}
    for arm in ("usam_p", "usam_b", "ai_edit"):
        if arm in arms:
            specs.append((ARM_LABELS[arm], {"kind": "reader", "arm": arm}))
    marms = {r["arm"] for r in records if r["kind"] == "model"}
    for arm in ("usam", "usam_p", "usam_b"):
        if arm in marms:
            specs.append((MODEL_LABELS[arm], {"kind": "model", "arm": arm}))
    return specs


def select_records(records: Sequence[dict], flt: dict) -> list[dict]:
    """Records matching every key of a row filter."""
    return [r for r in records if all(r.get(k) == v for k, v in flt.items())]


def table3(records: Sequence[dict], n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """Table 3 rows: per-case averaging first, then the mean over cases, with two-way bootstrap CIs.

    Values are fractions (0..1); 'time_min' is the mean active minutes per case (readers) and
    'inference_s'/'prompt_s' the model's per-case inference and prompt times."""
    rows = []
    for label, flt in row_specs(records):
        recs = select_records(records, flt)
        row = {"row": label, **flt, "n": len(recs), "cases": len({r["case"] for r in recs}),
               "readers": len({r["reader"] for r in recs if r["reader"]})}
        for m in METRICS:
            for c in CLASSES:
                key = f"{m}_{c}"
                row[key] = stats.per_case_mean(recs, key)
                row[key + "_ci"] = stats.bootstrap_ci(recs, key, n_boot, seed)
        for tkey in ("active_s", "wall_s", "prompt_s", "inference_s"):
            row[tkey] = stats.per_case_mean(recs, tkey)
        row["time_min"] = row["active_s"] / 60.0 if recs else float("nan")
        row["time_min_ci"] = tuple(x / 60.0 for x in stats.bootstrap_ci(recs, "active_s", n_boot, seed))
        rows.append(row)
    return rows


def reader_view(records: Sequence[dict], n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """Per group: the mean over readers of each reader's mean Dice/IoU/NSD and time."""
    out = []
    for label, flt in row_specs(records):
        if flt["kind"] != "reader":
            continue
        recs = select_records(records, flt)
        row = {"row": label}
        for key in [f"{m}_{c}" for m in METRICS for c in CLASSES] + ["active_s"]:
            row[key] = stats.reader_level(recs, key, n_boot, seed)
        row["readers"] = row["dice_mean"]["readers"]
        out.append(row)
    return out


def per_case_table(records: Sequence[dict]) -> list[dict]:
    """Mean Dice/time per case and row (the basis of the per-case figures)."""
    out = []
    for label, flt in row_specs(records):
        recs = select_records(records, flt)
        dm = stats.case_means(recs, "dice_mean")
        tm = stats.case_means(recs, "active_s")
        for case in sorted({r["case"] for r in recs}):
            out.append({"row": label, "case": case, "dice_mean": dm.get(case, float("nan")),
                        "active_s": tm.get(case, float("nan")),
                        "n": sum(r["case"] == case for r in recs)})
    return out


def progress_table(s: Session, study: Study, records: Sequence[dict]) -> list[dict]:
    """Planned and submitted reads per case and group (manual arm) against k."""
    out = []
    for c in studies.study_cases(s, study.id):
        planned = list(s.scalars(select(Assignment).where(Assignment.case_id == c.id, Assignment.arm == "manual",
                                                          Assignment.status != "reassigned")))
        row = {"case": c.key, "planned": len(planned), "k": study.k}
        for g in (1, 2, 3):
            row[f"group{g}"] = sum(1 for r in records if r["case"] == c.key and r["kind"] == "reader"
                                   and r["arm"] == "manual" and r["group"] == g)
        row["done"] = row["group1"] + row["group2"] + row["group3"]
        out.append(row)
    return out


def interobserver(s: Session, study: Study) -> list[dict]:
    """Pairwise mean-class Dice between readers' manual annotations, per case."""
    cases = {c.id: c for c in studies.study_cases(s, study.id)}
    by_case: dict[int, list[np.ndarray]] = {}
    for sub in ops.latest_submissions(s, study.id):
        if sub.clinician_id and sub.arm == "manual":
            by_case.setdefault(sub.case_id, []).append(decode_mask(sub.data, sub.shape))
    out = []
    for cid, masks in by_case.items():
        # crop to the union's bounding box: pairwise Dice over the full volume would be ~100x slower
        union = np.any(np.stack([m > 0 for m in masks]), axis=0)
        if union.any():
            idx = [np.flatnonzero(union.any(axis=tuple(j for j in range(3) if j != i))) for i in range(3)]
            sl = tuple(slice(int(ix[0]), int(ix[-1]) + 1) for ix in idx)
            masks = [m[sl] for m in masks]
        for a, b in combinations(range(len(masks)), 2):
            out.append({"case": cases[cid].key, "dice": pairwise_dice(masks[a], masks[b])})
    return out


NOT_ENOUGH = "Not enough reads yet"


def _empty(fig, title: str, why: str):
    """A figure that says why it has nothing to show, instead of empty axes."""
    fig.update_layout(title=title, xaxis=dict(visible=False), yaxis=dict(visible=False), plot_bgcolor="rgba(0,0,0,0)",
                      annotations=[dict(text=f"<b>{NOT_ENOUGH}</b><br>{why}", x=0.5, y=0.5, xref="paper",
                                        yref="paper", showarrow=False, font=dict(size=14))])
    return fig


def figures(rows: list[dict], records: list[dict], progress: list[dict], pairs: list[dict]) -> dict:
    """Plotly figures: time by group, Dice per case by group/variant, inter-observer, progress.

    Agreement is in percent, as in Table 3; a figure without data says so."""
    import plotly.graph_objects as go

    figs = {}
    f = go.Figure()
    title = "Active time per case by group (cf. paper Suppl. Fig. 7)"
    manual = 0
    for g in (1, 2, 3):
        recs = [r for r in select_records(records, {"kind": "reader", "arm": "manual", "group": g})
                if r.get("active_s") is not None]
        manual += len(recs)
        f.add_trace(go.Box(y=[r["active_s"] / 60 for r in recs], name=f"Group {g}", boxpoints="all"))
    figs["time_by_group"] = (_empty(f, title, "no manual annotation submitted.") if not manual else
                             f.update_layout(title=title, yaxis_title="minutes"))
    f = go.Figure()
    title = "Mean Dice per case by group and model variant (cf. Suppl. Fig. 8)"
    shown = 0
    for label, flt in row_specs(records):
        recs = [r for r in select_records(records, flt) if _finite(r.get("dice_mean"))]
        if recs:
            shown += len(recs)
            f.add_trace(go.Box(x=[r["case"] for r in recs], y=[100 * r["dice_mean"] for r in recs], name=label))
    figs["dice_by_case"] = (_empty(f, title, "no scored annotation or model run.") if not shown else
                            f.update_layout(boxmode="group", title=title, xaxis_title="case",
                                            yaxis=dict(title="Dice (%), mean of normal and tumor", range=[0, 100])))
    f = go.Figure()
    title = "Inter-observer agreement: pairwise Dice per case"
    vals = [p for p in pairs if _finite(p.get("dice"))]
    if vals:
        f.add_trace(go.Box(x=[p["case"] for p in vals], y=[100 * p["dice"] for p in vals], name="reader pairs",
                           boxpoints="all"))
        f.update_layout(title=title, xaxis_title="case", yaxis=dict(title="Dice (%)", range=[0, 100]))
    else:
        _empty(f, title, "needs two readers' manual annotations of the same case.")
    figs["interobserver"] = f
    f = go.Figure()
    title = "Study progress: submitted reads per case"
    if not progress:
        _empty(f, title, "the study has no cases.")
    else:
        for g in (1, 2, 3):
            f.add_trace(go.Bar(x=[p["case"] for p in progress], y=[p[f"group{g}"] for p in progress],
                               name=f"Group {g}"))
        f.add_hline(y=progress[0]["k"], line_dash="dash", annotation_text=f"k = {progress[0]['k']}")
        f.update_layout(barmode="stack", title=title, yaxis=dict(title="reads", range=[0, max(
            progress[0]["k"], max(p["done"] for p in progress)) + 1]))
        if not any(p["done"] for p in progress):
            f.add_annotation(text=f"<b>{NOT_ENOUGH}</b>: no case read so far.", x=0.5, y=0.5, xref="paper",
                             yref="paper", showarrow=False, font=dict(size=14))
    figs["progress"] = f
    return figs


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(float(v))


def _pct(v: float) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{100 * v:.2f}"


def _cell(row: dict, key: str) -> str:
    lo, hi = row[key + "_ci"]
    if not math.isfinite(row[key]):
        return "–"
    return f"{_pct(row[key])} [{_pct(lo)}, {_pct(hi)}]"


def _time(row: dict) -> str:
    if row["kind"] == "model" or row["arm"] in ("usam_p", "usam_b"):
        extra = f" (+{row['prompt_s'] / 60:.1f} min prompts)" if row["prompt_s"] and math.isfinite(row["prompt_s"]) else ""
        base = f"{row['inference_s']:.1f} s" if math.isfinite(row["inference_s"]) else "–"
        if row["kind"] == "reader":
            return f"{row['time_min']:.1f} min active; inference {base}{extra}"
        return base + extra
    return "–" if not math.isfinite(row["time_min"]) else f"{row['time_min']:.1f} min"


def markdown_table(rows: list[dict], tol: float) -> str:
    """Our Table 3 as Markdown (percent, stated in every header; 95% CI in brackets; n annotations)."""
    head = ("| row | n (cases, readers) | time per case | " +
            " | ".join(f"{c} {m.upper() if m != 'dice' else 'Dice'} (%)" for c in CLASSES for m in METRICS) + " |")
    lines = [head, "|" + "---|" * (3 + len(CLASSES) * len(METRICS))]
    for r in rows:
        cells = [_cell(r, f"{m}_{c}") for c in CLASSES for m in METRICS]
        lines.append(f"| {r['row']} | {r['n']} ({r['cases']}, {r['readers']}) | {_time(r)} | " + " | ".join(cells) + " |")
    lines.append(f"\nDice, IoU and NSD in percent (%). NSD tolerance {tol:g} mm. Per-case averaging first, "
                 "then the mean over cases; "
                 "95% CI by bootstrap over cases and readers. Time: server-measured active time "
                 "(idle gaps excluded).")
    return "\n".join(lines)


def paper_markdown() -> str:
    """The paper's published Table 3 (percent), for reference beside ours."""
    lines = ["| row (paper) | time | normal D/I/N (%) | tumor D/I/N (%) | mean D/I/N (%) |", "|---|---|---|---|---|"]
    for name, t, n, tu, m in PAPER_TABLE3:
        lines.append(f"| {name} | {t} | " + " | ".join("/".join(f"{x:.2f}" for x in v) for v in (n, tu, m)) + " |")
    lines.append("\nPaper: Dice / IoU / NSD in percent (%); NSD tolerance not stated; time column as published.")
    return "\n".join(lines)


def reader_markdown(reader_rows: list[dict]) -> str:
    """The reader-level view as Markdown, in percent like Table 3 (rows without readers say so)."""
    lines = ["| group | readers | mean Dice (%, reader-level) | 95% CI (%) |", "|---|---|---|---|"]
    for r in reader_rows:
        d = r["dice_mean"]
        if d["readers"] and _finite(d["mean"]):
            lines.append(f"| {r['row']} | {d['readers']} | {_pct(d['mean'])} % | [{_pct(d['lo'])}, {_pct(d['hi'])}] |")
        else:
            lines.append(f"| {r['row']} | 0 | {NOT_ENOUGH.lower()} | – |")
    lines.append("\nEach reader's mean over their cases, then the mean over readers; 95% CI by bootstrap over "
                 "readers.")
    return "\n".join(lines)


def build_report(s: Session, study: Study, n_boot: int = 1000, seed: int = 0, with_figures: bool = True) -> Report:
    """Assemble the full report of a study from the database."""
    records = load_records(s, study)
    rows = table3(records, n_boot, seed)
    prog = progress_table(s, study, records)
    rep = Report(study={"id": study.id, "name": study.name, "k": study.k, "nsd_tolerance_mm": study.nsd_tolerance_mm,
                        "idle_threshold_s": study.idle_threshold_s},
                 rows=rows, reader_rows=reader_view(records, n_boot, seed), per_case=per_case_table(records),
                 progress=prog, records=records)
    if with_figures:
        rep.figures = figures(rows, records, prog, interobserver(s, study))
    rep.markdown = markdown_table(rows, study.nsd_tolerance_mm)
    rep.paper_markdown = paper_markdown()
    rep.reader_markdown = reader_markdown(rep.reader_rows)
    return rep
