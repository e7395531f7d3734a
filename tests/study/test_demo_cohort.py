"""The study's demo cohort on disk: the anatomy-based phantom in its own cache folder, read like any cohort."""
from __future__ import annotations

import json

import numpy as np

from study import cases
from study.settings import StudySettings


def test_demo_cohort_is_cached_in_a_new_folder_and_old_cases_are_left_alone(tmp_path, monkeypatch):
    settings = StudySettings(data_dir=tmp_path)
    old = tmp_path / "demo_cohort_small"               # the first generator's cached cases
    (old / "images").mkdir(parents=True)
    (old / "manifest.json").write_text(json.dumps({"cases": [{"case_id": "case_000"}]}))
    (old / "images" / "case_000.nii.gz").write_bytes(b"old")
    calls = []

    def fake_generate(folder, cases, seed, size):
        calls.append((folder, cases, seed, size))
        folder.mkdir(parents=True)
        (folder / "manifest.json").write_text(json.dumps({"generator": "usam.phantom (anatomy v2)", "cases": []}))

    monkeypatch.setattr("usam.phantom.generate_cohort", fake_generate)
    got = cases.demo_cohort("small", settings=settings)
    assert got == tmp_path / "demo_cohort_small_v2"
    assert calls == [(got, cases.DEMO_CASES, cases.DEMO_SEED, "small")]
    assert (old / "images" / "case_000.nii.gz").read_bytes() == b"old"      # a study may still read them
    assert cases.demo_cohort("small", settings=settings) == got and len(calls) == 1   # cached: generated once


def test_a_phantom_cohort_imports_with_its_manifest_slice_range(tmp_path):
    from usam.phantom import generate_cohort, load_cohort

    generate_cohort(tmp_path / "c", cases=1, seed=3, size="small")
    row = load_cohort(tmp_path / "c")[0]
    (spec,) = cases.read_specs(tmp_path / "c")
    assert (spec.key, spec.start, spec.end) == ("case_000", row["rectum_start"], row["rectum_end"])
    rec = cases.case_record(spec)
    assert (rec["start_slice"], rec["end_slice"]) == (row["rectum_start"], row["rectum_end"])
    assert rec["shape"] == row["shape"] and np.allclose(rec["spacing"], row["spacing"])
