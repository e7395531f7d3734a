"""Model-variant rows of Table 3: U-SAM without prompts, U-SAM/P (3 points per class per slice)
and U-SAM/B (one box per slice) with prompts derived from the ground truth on slices that hold
foreground (the prompter leaves empty slices empty). Stored and scored like any submission."""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
from sqlalchemy import func, select

from study import studies
from study.audit import audit
from study.cases import CACHE, CaseCache
from study.db import Database
from study.errors import InvalidInput
from study.models import Submission, utcnow
from study.scoring import encode_mask, score_case

VARIANTS = ("usam", "usam_p", "usam_b")


def prompts_for(variant: str, gt2d: np.ndarray):
    """SlicePrompts of a variant for one slice, in its own pixels (None: no prompt; 'skip': nothing to segment).

    The predictor converts them to its frame; the box's margin of 2 is counted in 224-frame pixels."""
    from usam.prompts import slice_box_from_mask, slice_points_from_mask

    if variant == "usam":
        return None
    if not (gt2d > 0).any():
        return "skip"
    if variant == "usam_p":
        return slice_points_from_mask(gt2d, 3, rng=None)
    return slice_box_from_mask(gt2d, margin=2)


def run_case(session: Any, gt: np.ndarray, start: int, end: int, variant: str) -> tuple[np.ndarray, float]:
    """(labels over start..end, inference seconds) of one variant on one case, each slice from a fresh start
    (no previous mask: the paper's protocol) on the case's interactive session."""
    out = np.zeros((end - start + 1,) + gt.shape[1:], np.uint8)
    secs = 0.0
    for z in range(start, end + 1):
        pr = prompts_for(variant, gt[z])
        if isinstance(pr, str):
            continue
        t0 = time.perf_counter()
        if pr is None:
            res = session.segment(z)
        else:
            session.clear(z)
            res = session.add_prompts(z, pr, use_mask=False)
        secs += time.perf_counter() - t0
        out[z - start] = np.asarray(res.labels, np.uint8)
    return out, secs


def run_model_variants(db: Database, study_id: int | None, session_factory: Callable[[Any], Any],
                       variants: tuple[str, ...] = VARIANTS, cache: CaseCache | None = None,
                       progress: Callable[[str], None] | None = None) -> int:
    """Run and score every variant on every case of a study; returns the number of rows stored."""
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise InvalidInput(f"Unknown model variant(s) {bad}; choose from {list(VARIANTS)}.")
    cache = cache or CACHE
    with db.session() as s:
        st = studies.get_study(s, study_id)
        cases = [(c.id, c.key, c.volume_path, c.gt_path, c.gt_sha256, c.start_slice, c.end_slice, list(c.spacing))
                 for c in studies.study_cases(s, st.id)]
        sid, tol = st.id, st.nsd_tolerance_mm
    n = 0
    for cid, key, vp, gp, sha, start, end, spacing in cases:
        lc = cache.get(vp, gp, sha)
        session = session_factory(lc.volume)
        for v in variants:
            labels, secs = run_case(session, lc.labels, start, end, v)
            scores = score_case(labels, lc.labels[start:end + 1], spacing, tol)
            with db.session() as s:
                rev = (s.scalar(select(func.max(Submission.revision)).where(
                    Submission.study_id == sid, Submission.case_id == cid, Submission.arm == v,
                    Submission.clinician_id.is_(None))) or 0) + 1
                s.add(Submission(study_id=sid, case_id=cid, arm=v, revision=rev, data=encode_mask(labels),
                                 shape=list(labels.shape), inference_s=secs, scores=scores, gt_sha256=sha,
                                 submitted_at=utcnow()))
                audit(s, None, "model_run", f"case:{cid}", arm=v, revision=rev)
            n += 1
            if progress:
                progress(f"{key} {v}: mean Dice {scores['dice_mean']}")
    return n


def default_session_factory(checkpoint: str | None = None, device: str = "cpu",
                            env_checkpoint: str | None = None) -> Callable[[Any], Any]:
    """volume -> InteractiveSession with the resolved weights (flag > $USAM_CHECKPOINT > demo); the CLI
    passes the flag as `checkpoint` and the environment's value as `env_checkpoint`."""
    from usam.checkpoints import load_checkpoint, resolve_weights
    from usam.interactive import InteractiveSession
    from usam.model.fast import optimize_for_inference

    model, meta = load_checkpoint(resolve_weights(checkpoint, env_checkpoint), device=device)
    fast = optimize_for_inference(model, device)  # once, where the model is loaded
    return lambda volume: InteractiveSession(fast, volume, meta, device=device)
