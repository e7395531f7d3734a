"""The app's settings: read once, at start-up, by app.settings.parse_config (issue 14, Configuration)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from app.settings import parse_config

ROOT = Path(__file__).resolve().parents[2]


def test_spaces_listen_on_all_interfaces_unless_told_otherwise():
    assert parse_config([], {}).host == "127.0.0.1"
    assert parse_config([], {"SPACE_ID": "user/space"}).host == "0.0.0.0"
    assert parse_config([], {"SPACE_ID": "user/space", "USAM_HOST": "10.0.0.2"}).host == "10.0.0.2"
    assert parse_config(["--host", "127.0.0.1"], {"SPACE_ID": "user/space"}).host == "127.0.0.1"


def _environment_reads(path: Path) -> list[int]:
    """Lines of `path` that read the process environment (os.environ[...] / .get / `in`, os.getenv);
    os.environ.setdefault (a default written before gradio is imported) and os.environ[k] = v
    (FORWARDED_ALLOW_IPS for uvicorn) are not reads."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    lines = []
    for node in ast.walk(tree):
        is_environ = (isinstance(node, ast.Attribute) and node.attr == "environ"
                      and isinstance(node.value, ast.Name) and node.value.id == "os")
        is_getenv = isinstance(node, ast.Attribute) and node.attr == "getenv"
        if is_getenv:
            lines.append(node.lineno)
        elif is_environ:
            up = parents.get(node)
            if isinstance(up, ast.Attribute) and up.attr == "setdefault":
                continue
            if isinstance(up, ast.Subscript) and isinstance(up.ctx, ast.Store):
                continue                      # os.environ[k] = v: a value written for a library, not read
            lines.append(node.lineno)
    return lines


def test_only_parse_config_reads_the_environment():
    files = [ROOT / "app.py", *sorted((ROOT / "app").rglob("*.py"))]
    reads = {str(f.relative_to(ROOT)): _environment_reads(f) for f in files}
    reads = {k: v for k, v in reads.items() if v}
    assert set(reads) == {"app/settings.py"}, reads
    assert len(reads["app/settings.py"]) == 1   # parse_config: `os.environ if environ is None else environ`


def test_the_environment_walk_sees_reads_and_not_writes(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\nos.environ.setdefault('A', '1')\nos.environ['B'] = ''\nx = os.environ['C']\n"
                 "y = os.environ.get('D')\nz = 'E' in os.environ\nw = os.getenv('F')\n")
    assert sorted(_environment_reads(f)) == [4, 5, 6, 7]


def test_study_and_server_security_settings_are_read_with_the_rest():
    c = parse_config([], {})
    assert (c.trusted_proxies, c.cookie_samesite, c.export_keep_s) == ("", "Lax", 120.0)
    assert c.study.warmup == "auto" and c.study.demo_size == "full"
    spaces = parse_config([], {"SPACE_ID": "user/space"})
    assert spaces.cookie_samesite == "None" and "10.0.0.0/8" in spaces.trusted_proxies
    # an explicit empty list on Spaces trusts no proxy
    assert parse_config([], {"SPACE_ID": "user/space", "USAM_TRUSTED_PROXIES": ""}).trusted_proxies == ""
    c = parse_config([], {"USAM_TRUSTED_PROXIES": "10.1.0.0/16", "USAM_COOKIE_SAMESITE": "strict",
                          "USAM_EXPORT_KEEP_S": "5", "USAM_STUDY_WARMUP": "0", "USAM_STUDY_DATA": "/srv/study"})
    assert (c.trusted_proxies, c.cookie_samesite, c.export_keep_s) == ("10.1.0.0/16", "Strict", 5.0)
    assert c.study.warmup == "0" and str(c.study.data_dir) == "/srv/study"


@pytest.mark.parametrize("var, value, expected", [
    ("USAM_COOKIE_SAMESITE", "Lax; Domain=evil.example", "USAM_COOKIE_SAMESITE must be one of Strict, Lax, None"),
    ("USAM_EXPORT_KEEP_S", "soon", "USAM_EXPORT_KEEP_S must be a number of seconds"),
    ("USAM_EXPORT_KEEP_S", "-1", "USAM_EXPORT_KEEP_S must be a number of seconds"),
    ("USAM_EXPORT_KEEP_S", "nan", "USAM_EXPORT_KEEP_S must be a number of seconds"),
    ("USAM_STUDY_WARMUP", "yes", "USAM_STUDY_WARMUP must be one of auto, 0, 1"),
])
def test_a_bad_setting_stops_the_start_with_its_name(var, value, expected, capsys):
    with pytest.raises(SystemExit) as e:
        parse_config([], {var: value})
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and "SettingsError" not in err
