"""The evaluated cases of the per-case 3D protocols: each case with its evaluation slice range."""
from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator

import numpy as np

from usam import data as D
from usam.errors import UsamError


def eval_cases(cases: Iterable[D.CaseData], desc: str, needs: str,
               progress: bool = False) -> Iterator[tuple[D.CaseData, np.ndarray]]:
    """(case, its slices zs) for every case with an evaluation range (usam.data.eval_z_range); npz slices,
    which have no 3D case or spacing, fail with '... : ' + needs. progress: a tqdm bar named desc."""
    if progress:
        from tqdm import tqdm

        cases = tqdm(cases, desc=desc, unit="case", file=sys.stderr)
    for case in cases:
        if case.prewindowed:
            raise UsamError(f"npz slices have no 3D cases or spacing: {needs}")
        region = D.eval_z_range(case.labels, case.info)
        if region is not None:  # no foreground and no annotated range: nothing to evaluate
            yield case, np.arange(*region)
