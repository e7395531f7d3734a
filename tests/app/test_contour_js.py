"""The contouring tool's page code (app/contour_js.py, its JS in app/static/contour.js)."""
from __future__ import annotations

from pathlib import Path

from app.contour_js import CONTOUR_CSS, CONTOUR_HTML, CONTOUR_JS, CONTOUR_UNBUSY_JS


def test_contour_js_is_read_from_its_file_and_is_safe_in_a_template():
    # Gradio evaluates these as JS template strings: a backtick or ${ would break the page
    for text in (CONTOUR_HTML, CONTOUR_CSS, CONTOUR_JS, CONTOUR_UNBUSY_JS):
        assert "`" not in text and "${" not in text
    path = Path(__file__).resolve().parents[2] / "app" / "static" / "contour.js"
    assert CONTOUR_JS == path.read_text(encoding="utf-8")
    # the tool's root, the value watcher and the events the server answers
    assert "element.querySelector('.uc-root')" in CONTOUR_JS and "watch('value', update)" in CONTOUR_JS
    assert "trigger(kind, d)" in CONTOUR_JS
    for name in ("next", "previous", "goto", "nothing", "copy", "interpolate", "submit"):
        assert f"'{name}'" in CONTOUR_JS, name
