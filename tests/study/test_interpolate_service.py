"""StudyService.interpolate: fills only untouched (or unconfirmed) slices between saved ones,
never a slice the reader saved; interpolated slices block submit until each one is saved."""
from __future__ import annotations

import numpy as np
import pytest

from study.errors import Conflict, InvalidInput
from tests.study.conftest import END, START


def _disk(cx, cy, r, v=1, hw=(40, 40)):
    y, x = np.mgrid[:hw[0], :hw[1]]
    return np.where((x - cx) ** 2 + (y - cy) ** 2 <= r * r, v, 0).astype(np.uint8)


def test_interpolate_fills_gaps_keeps_saved_and_blocks_submit(study_env):
    svc, admin, code, sid = study_env
    svc.register(code, "interp.svc", "interp-pass-42", group=1)
    tok = svc.login("interp.svc", "interp-pass-42")
    aid = svc.open_case(tok, svc.next_case(tok).assignment_id).assignment_id
    a, b, mine = _disk(15, 15, 5), _disk(23, 19, 7), _disk(30, 30, 2, v=2)
    svc.save_slice(tok, aid, START, a)
    svc.save_slice(tok, aid, START + 2, mine)          # the reader's own slice inside the gap
    svc.save_slice(tok, aid, START + 4, b)
    res = svc.interpolate(tok, aid)
    assert res["interpolated"] == [START + 1, START + 3]
    st = svc.slice_states(tok, aid)
    assert st[START + 1][0] == "interpolated" and st[START + 3][0] == "interpolated"
    assert np.array_equal(svc.get_slice(tok, aid, START + 2).mask, mine)             # never changed
    assert svc.get_slice(tok, aid, START + 5).mask is None                            # outside: untouched
    m = svc.get_slice(tok, aid, START + 3).mask                                       # between mine and b
    assert m.any() and set(np.unique(m)) <= {0, 1, 2}
    with pytest.raises(Conflict, match="2 interpolated slices are not confirmed"):
        svc.submit(tok, aid)
    # a second run recomputes unconfirmed ones only; saving confirms
    svc.save_slice(tok, aid, START + 1, svc.get_slice(tok, aid, START + 1).mask)
    assert svc.interpolate(tok, aid)["interpolated"] == [START + 3]
    svc.save_slice(tok, aid, START + 3, svc.get_slice(tok, aid, START + 3).mask)
    assert svc.interpolate(tok, aid)["interpolated"] == []
    assert svc.submit(tok, aid)["slices_saved"] == 5


def test_save_slice_refuses_an_absent_mask(study_env):
    svc, admin, code, sid = study_env
    svc.register(code, "absent.svc", "absent-pass-42", group=1)
    tok = svc.login("absent.svc", "absent-pass-42")
    aid = svc.open_case(tok, svc.next_case(tok).assignment_id).assignment_id
    svc.save_slice(tok, aid, END, _disk(20, 20, 4))
    with pytest.raises(InvalidInput, match="No mask"):
        svc.save_slice(tok, aid, END, None)
    assert svc.get_slice(tok, aid, END).mask.sum() == _disk(20, 20, 4).sum()
