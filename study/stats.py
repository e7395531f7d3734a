"""Statistics for the study report: per-case averaging and two-way bootstrap CIs. Pure functions."""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

import numpy as np


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def case_means(records: Sequence[dict], key: str) -> dict:
    """{case: mean of key over that case's annotations} (undefined values skipped)."""
    acc = defaultdict(list)
    for r in records:
        if _finite(r.get(key)):
            acc[r["case"]].append(float(r[key]))
    return {c: float(np.mean(v)) for c, v in acc.items()}


def per_case_mean(records: Sequence[dict], key: str) -> float:
    """Mean over cases of the per-case mean (every case weighs the same, as for a model)."""
    cm = case_means(records, key)
    return float(np.mean(list(cm.values()))) if cm else float("nan")


def reader_means(records: Sequence[dict], key: str) -> dict:
    """{reader: mean of key over that reader's annotations}."""
    acc = defaultdict(list)
    for r in records:
        if _finite(r.get(key)) and r.get("reader") is not None:
            acc[r["reader"]].append(float(r[key]))
    return {k: float(np.mean(v)) for k, v in acc.items()}


def bootstrap_ci(records: Sequence[dict], key: str, n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float]:
    """95% CI of per_case_mean by a two-way bootstrap: cases and readers resampled with
    replacement (readers only when there are several, e.g. not for a model row)."""
    recs = [r for r in records if _finite(r.get(key))]
    if not recs:
        return (float("nan"), float("nan"))
    cases = sorted({r["case"] for r in recs}, key=str)
    readers = sorted({r.get("reader") for r in recs}, key=str)
    ci = {c: i for i, c in enumerate(cases)}
    ri = {c: i for i, c in enumerate(readers)}
    # sums and counts in a (reader, case) grid make each replicate a few array operations
    S = np.zeros((len(readers), len(cases)))
    N = np.zeros_like(S)
    for r in recs:
        S[ri[r.get("reader")], ci[r["case"]]] += float(r[key])
        N[ri[r.get("reader")], ci[r["case"]]] += 1
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        wc = np.bincount(rng.integers(0, len(cases), len(cases)), minlength=len(cases))
        wr = (np.bincount(rng.integers(0, len(readers), len(readers)), minlength=len(readers))
              if len(readers) > 1 else np.ones(1))
        s = wr @ S
        n = wr @ N
        ok = n > 0
        if not ok.any():
            continue
        means = s[ok] / n[ok]
        w = wc[ok]
        if w.sum() == 0:
            continue
        stats.append(float((means * w).sum() / w.sum()))
    if not stats:
        return (float("nan"), float("nan"))
    return (float(np.quantile(stats, alpha / 2)), float(np.quantile(stats, 1 - alpha / 2)))


def reader_level(records: Sequence[dict], key: str, n_boot: int = 1000, seed: int = 0) -> dict:
    """Mean over readers of each reader's mean, with a bootstrap-over-readers 95% CI."""
    rm = np.array(list(reader_means(records, key).values()))
    if rm.size == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "readers": 0}
    rng = np.random.default_rng(seed)
    boots = [float(rng.choice(rm, rm.size).mean()) for _ in range(n_boot)]
    return {"mean": float(rm.mean()), "lo": float(np.quantile(boots, 0.025)),
            "hi": float(np.quantile(boots, 0.975)), "readers": int(rm.size)}
