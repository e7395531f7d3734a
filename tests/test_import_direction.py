"""Imports flow app -> study -> usam: usam imports neither study, app, gradio nor sqlalchemy; study imports
neither app nor gradio. Read from the source (every import statement, also those inside functions)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"usam": {"study", "app", "gradio", "sqlalchemy"}, "study": {"app", "gradio"}}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level package, line) of every absolute import in a file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out |= {(a.name.split(".")[0], node.lineno) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add((node.module.split(".")[0], node.lineno))
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_flow_app_study_usam(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no sources under {package}/"
    bad = [f"{f.relative_to(ROOT)}:{line} imports {name}" for f in files
           for name, line in sorted(imported_packages(f)) if name in FORBIDDEN[package]]
    assert not bad, "\n".join(bad)


def test_the_walker_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from app.handlers import x\n    import gradio as gr\nfrom . import y\n")
    assert {n for n, _ in imported_packages(f)} == {"app", "gradio"}
