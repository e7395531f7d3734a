"""Admin report: units stated (percent everywhere), figures that say "not enough reads yet" instead of
empty axes, the dashboard filled on login, and "n of N cases" progress for the model runs."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from study import report
from tests.fakes import FakeSession


def _rec(reader, case, group, dice, arm="manual", kind="reader"):
    return {"reader": reader, "case": case, "group": group, "arm": arm, "kind": kind, "dice_mean": dice,
            "dice_normal": dice, "dice_tumor": dice, "iou_mean": dice / 2, "nsd_mean": dice,
            "active_s": 600.0, "wall_s": 700.0, "prompt_s": 0.0, "inference_s": 0.0}


RECORDS = [_rec("A", "c1", 1, 0.6), _rec("B", "c1", 1, 0.8), _rec("A", "c2", 1, 0.5),
           _rec(None, "c1", None, 0.55, arm="usam", kind="model")]


def _note(fig) -> str:
    return " ".join(a.text for a in fig.layout.annotations)


def test_table3_and_paper_state_percent():
    md = report.markdown_table(report.table3(RECORDS, 100), 2.0)
    head = md.splitlines()[0]
    assert head.count("(%)") == 9  # Dice, IoU, NSD for normal, tumor, mean
    assert "in percent (%)" in md and "60.00 [" in md  # group 1: per-case mean 0.6 shown as 60.00
    assert report.paper_markdown().splitlines()[0].count("(%)") == 3


def test_reader_view_in_percent_with_sign_and_empty_rows_say_so():
    md = report.reader_markdown(report.reader_view(RECORDS, n_boot=200))
    # reader A (0.6 + 0.5) / 2 = 0.55, reader B 0.8 -> 0.675 = 67.50 %
    assert "| Group 1 | 2 | 67.50 % | [" in md
    assert "| Group 2 | 0 | not enough reads yet | – |" in md
    assert "(%, reader-level)" in md.splitlines()[0]


def test_figures_without_reads_say_not_enough_reads():
    figs = report.figures([], [], [], [])
    for key in ("time_by_group", "dice_by_case", "interobserver", "progress"):
        f = figs[key]
        assert report.NOT_ENOUGH in _note(f), key
        assert f.layout.xaxis.visible is False and f.layout.yaxis.visible is False, key
    # cases but no reads yet: the bars (all zero) and k stay, with the note
    prog = [{"case": "c1", "planned": 3, "k": 3, "group1": 0, "group2": 0, "group3": 0, "done": 0}]
    f = report.figures([], [], prog, [])["progress"]
    assert report.NOT_ENOUGH in _note(f) and len(f.data) == 3


def test_dice_figures_on_the_table_unit():
    pairs = [{"case": "c1", "dice": 0.7}, {"case": "c1", "dice": float("nan")}]
    figs = report.figures([], RECORDS, [], pairs)
    dice = figs["dice_by_case"]
    ys = sorted(y for tr in dice.data for y in tr.y)
    assert ys == pytest.approx([50.0, 55.0, 60.0, 80.0])  # percent, like Table 3
    assert tuple(dice.layout.yaxis.range) == (0, 100) and "(%)" in dice.layout.yaxis.title.text
    inter = figs["interobserver"]
    assert list(inter.data[0].y) == pytest.approx([70.0]) and "(%)" in inter.layout.yaxis.title.text
    assert report.NOT_ENOUGH not in _note(inter)
    assert report.NOT_ENOUGH not in _note(figs["time_by_group"])


class _Pred:
    def __init__(self, volume):
        self.volume = volume

    def predict(self, z, prompts):
        lab = np.zeros(self.volume.array.shape[1:], np.uint8)
        lab[self.volume.array[z] > 20] = 1
        return SimpleNamespace(labels=lab, probs=None, encoder_ms=0.0, decoder_ms=0.0, cached=True)


def test_admin_dashboard_fills_on_login_and_model_runs_report_cases(study_env):
    from app.study_tab import StudyTab

    svc, admin, code, _ = study_env
    tab = StudyTab(svc)
    out = tab.admin_on_login(admin)
    assert len(out) == tab.ADMIN_OUTPUTS
    head, table, paper, readers_md = out[:4]
    assert "in percent (%)" in head and "(%)" in table and "not enough reads yet" in readers_md
    assert report.NOT_ENOUGH in _note(out[6])  # inter-observer: no reads
    # no token (logged out): nothing changes
    skipped = tab.admin_on_login(None)
    assert len(skipped) == tab.ADMIN_OUTPUTS and all(isinstance(x, dict) and x.get("__type__") == "update"
                                                    for x in skipped)
    # a reader's login fills nothing
    svc.register(code, "reader1", "reader-password", "R", 1, 3, "surgery")
    tok = svc.login("reader1", "reader-password")
    assert all(isinstance(x, dict) and x.get("__type__") == "update" for x in tab.admin_on_login(tok))

    calls = []
    svc.session_factory = lambda volume: FakeSession(_Pred(volume))
    msg = tab.admin_run_models(admin, progress=lambda frac, desc="": calls.append((frac, desc)))
    assert msg.startswith("18 model runs scored (6 cases × 3 variants)")
    assert calls[0] == (0.0, "0 of 6 cases")
    assert calls[-1] == (1.0, "6 of 6 cases (18 of 18 runs)")
    assert calls[3][1] == "1 of 6 cases (3 of 18 runs)" and len(calls) == 19
