"""End to end through the CLI: init, import-cases, add-admin, simulate (via the service), report,
export (CSV + NIfTI), backup; and the model-variant rows with a stand-in predictor."""
from __future__ import annotations

import csv
import io
import sqlite3
from contextlib import redirect_stdout
from types import SimpleNamespace

import numpy as np
import pytest
from sqlalchemy import func, select

from study.__main__ import main


def run(args, stdin=None, monkeypatch=None):
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(args)
    return rc, buf.getvalue()


def test_cli_end_to_end(tmp_path, tiny_cohort, monkeypatch):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert run(["--db", url, "init"])[0] == 0
    rc, out = run(["--db", url, "import-cases", str(tiny_cohort), "--k", "3", "--groups", "2,2,2",
                   "--code", "STUDYX", "--seed", "5"])
    assert rc == 0 and "6 cases imported" in out and "STUDYX" in out
    monkeypatch.setenv("USAM_STUDY_ADMIN_PASSWORD", "admin-password")
    assert run(["--db", url, "add-admin", "--login", "boss"])[0] == 0
    rc, out = run(["--db", url, "simulate", "--readers", "6", "--groups", "2,2,2", "--seed", "3", "--study", "1"])
    assert rc == 0 and "18 submissions" in out and "108 slices saved" in out
    rc, out = run(["--db", url, "report", "--boot", "200", "--out", str(tmp_path / "rep")])
    assert rc == 0 and "| Group 3 | 6 (6, 2) |" in out and "Paper's Table 3" in out
    assert (tmp_path / "rep" / "time_by_group.html").exists()
    rc, out = run(["--db", url, "export", str(tmp_path / "exp"), "--nifti"])
    assert rc == 0
    rows = list(csv.DictReader(open(tmp_path / "exp" / "annotations_long.csv")))
    assert set(rows[0]) == {"reader", "case", "group", "arm", "metric", "value"}
    assert len({(r["reader"], r["case"]) for r in rows}) == 18
    assert {r["metric"] for r in rows} >= {"dice_normal", "nsd_tumor", "hd95_mean", "active_s", "vol_gt_tumor_ml"}
    masks = sorted((tmp_path / "exp" / "masks").glob("*.nii.gz"))
    assert len(masks) == 18
    import nibabel as nib
    from usam.volumes import read_volume
    ref = nib.load(str(tiny_cohort / "c0.nii.gz"))
    img = nib.load(str(next(m for m in masks if m.name.startswith("case00"))))
    assert np.allclose(img.affine, ref.affine) and img.shape == ref.shape
    rc, out = run(["--db", url, "backup", str(tmp_path / "b.db")])
    assert rc == 0
    con = sqlite3.connect(tmp_path / "b.db")
    assert con.execute("select count(*) from submissions").fetchone()[0] == 18
    assert con.execute("select count(*) from slice_masks").fetchone()[0] == 108
    con.close()
    # a user error: message, exit 2, nothing changed
    rc = main(["--db", url, "backup", str(tmp_path / "b.db")])
    assert rc == 2
    rc = main(["--db", url, "import-cases", str(tmp_path / "nothing-here")])
    assert rc == 2


def test_simulated_groups_differ_like_the_paper(tmp_path, tiny_cohort):
    """Group 3 (experts) scores best and is fastest; realistic minutes per case."""
    from study.simulate import simulate
    from .conftest import make_study

    svc, admin, code, sid = make_study(tmp_path, tiny_cohort, group_sizes=(2, 2, 2), k=6)
    res = simulate(svc.db, sid, 6, (2, 2, 2), seed=11, cache=svc.cache)
    assert res["submitted"] == 36
    rows = {r["row"]: r for r in svc.report(admin).rows}
    assert rows["Group 3"]["dice_mean"] > rows["Group 1"]["dice_mean"]
    assert rows["Group 3"]["dice_mean"] > rows["Group 2"]["dice_mean"]
    assert rows["Group 3"]["time_min"] < rows["Group 1"]["time_min"]
    assert 1.0 < rows["Group 1"]["time_min"] < 10.0     # 6 slices x ~40 s


class _Pred:
    def __init__(self, volume):
        self.volume = volume

    def predict(self, z, prompts):
        lab = np.zeros(self.volume.array.shape[1:], np.uint8)
        lab[self.volume.array[z] > 20] = 1          # wall + tumor area called wall
        return SimpleNamespace(labels=lab)


def test_model_variant_rows(tmp_path, tiny_cohort):
    from study.model_runs import run_model_variants
    from tests.fakes import FakeSession
    from .conftest import END, START, make_study, tiny_labels

    svc, admin, code, sid = make_study(tmp_path, tiny_cohort)
    n = run_model_variants(svc.db, sid, lambda volume: FakeSession(_Pred(volume)), cache=svc.cache)
    assert n == 18
    rows = {r["row"]: r for r in svc.report(admin).rows}
    # independent: per case, Dice of the wall class of (foreground -> 1) vs the ground truth
    d = []
    for i in range(6):
        g = tiny_labels(i)[START:END + 1]
        p = (g > 0)
        d.append(2 * (p & (g == 1)).sum() / (p.sum() + (g == 1).sum()))
    assert rows["U-SAM"]["dice_normal"] == pytest.approx(np.mean(d))
    assert rows["U-SAM"]["dice_tumor"] == 0.0 and rows["U-SAM"]["n"] == 6
    assert rows["U-SAM/P (auto prompts)"]["n"] == 6 and rows["U-SAM/B (auto box)"]["n"] == 6


def test_run_models_weights_from_the_environment_passed_in(tmp_path, capsys):
    """The study CLI reads $USAM_CHECKPOINT at its edge and hands it to resolve_weights; the error names it,
    and the flag still wins over it."""
    url = f"sqlite:///{tmp_path / 'w.db'}"
    env = {"USAM_CHECKPOINT": str(tmp_path / "env-missing.safetensors")}
    assert main(["--db", url, "run-models"], environ=env) == 2
    err = capsys.readouterr().err
    assert "$USAM_CHECKPOINT points to" in err and "env-missing.safetensors" in err
    assert main(["--db", url, "run-models", "--checkpoint", str(tmp_path / "flag-missing.safetensors")],
                environ=env) == 2
    err = capsys.readouterr().err
    assert "--checkpoint points to" in err and "flag-missing.safetensors" in err
