"""`python -m usam info`: the paper's Table-5 numbers from our model (thop-style counting)."""
import json

import pytest

from usam.__main__ import main
from usam.info import PAPER_TABLE5, count_usam


def _close(ours, paper, tol=0.005):
    return abs(ours - paper) / paper < tol


def test_usam_b_counts_match_paper():
    c = count_usam("vit_b")
    assert _close(c.params_m, 103.36) and _close(c.gflops, 25.07)
    assert round(c.params_m, 2) == 103.36 and round(c.gflops, 2) == 25.07
    # + our zero-init class embeddings, the click encoder and the class-aware mask branch (SAM's mask_downscaling, 2 inputs)
    branch = (2 * 4 * 4 + 4) + 8 + (4 * 16 * 4 + 16) + 32 + (16 * 256 + 256)
    clicks = (3 * 16 * 9 + 16) + (16 * 16 * 9 + 16) + (16 * 32 + 32) + (3 * 32 + 32)  # the click encoder
    assert c.state_dict_params == 104_155_791 + 3 * 256 + branch + clicks


def test_usam_b_lora_counts_match_paper():
    c = count_usam("vit_b", lora_rank=4)
    assert _close(c.params_m, 103.51) and _close(c.tunable_m, 17.68) and _close(c.gflops, 25.10)


@pytest.mark.parametrize("row,name", [("U-SAM-L+LoRA", "vit_l"), ("U-SAM-H+LoRA", "vit_h")])
def test_large_lora_rows_match_paper(row, name):
    c = count_usam(name, lora_rank=4)
    params, tunable, gflops = PAPER_TABLE5[row]
    assert _close(c.params_m, params) and _close(c.tunable_m, tunable) and _close(c.gflops, gflops)


def test_cli_json(capsys):
    assert main(["info", "--config", "demo", "--json", "--no-table"]) == 0
    out = json.loads(capsys.readouterr().out)
    m = out["model"]
    assert m["config"] == "demo" and m["fp32_mb"] <= 20 and 0.3 < m["gflops"] < 1.0
    assert out["table5"] == []
