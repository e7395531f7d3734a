"""The launched app driven through gradio_client: click, whole volume, export (API endpoints)."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from app.render import CLASS_COLORS, decode_data_url
from tests.app.conftest import DEMO_CKPT

needs_demo_weights = pytest.mark.skipif(not DEMO_CKPT.is_file(),
                                        reason="quality checks need checkpoints/usam_demo.safetensors")


@pytest.fixture(scope="module")
def client(live_app, tmp_path_factory):
    from gradio_client import Client

    url, _ = live_app
    return Client(url, verbose=False, analytics_enabled=False,
                  download_files=str(tmp_path_factory.mktemp("downloads")))


@pytest.fixture(scope="module")
def gt_case(live_app):
    from app.segment import demo_case

    # "Demo phantom 2", the case this test has always run on (its figure: see test_click_volume_export)
    return demo_case(1, live_app[1].config.demo_size)  # the app's own (cached) demo case


def _val(v):
    """A component value, also when the server sent a gr.update(...) dict."""
    return v.get("value") if isinstance(v, dict) and v.get("__type__") == "update" else v


def _overlay_label(payload: dict, x: int, y: int) -> int:
    """Label shown at slice pixel (x, y) of a viewer payload (0 when transparent)."""
    if not payload["overlay"]:
        return 0
    px = decode_data_url(payload["overlay"])[y, x]
    if px[3] == 0:
        return 0
    return next(c for c, rgb in CLASS_COLORS.items() if tuple(px[:3]) == rgb)


def test_every_endpoint_is_named(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    for n in ("/init_session", "/add_point", "/add_box", "/undo", "/redo", "/clear_slice", "/segment_slice",
              "/segment_volume", "/propagate_box", "/export_nifti", "/export_measurements", "/export_session",
              "/replay_session", "/load_volume", "/load_reference", "/set_window", "/go_to_slice"):
        assert n in names, n


def test_click_volume_export(client, gt_case, live_app):
    _, ctx = live_app
    client.predict(api_name="/init_session")
    out = client.predict("Demo phantom 2", api_name="/load_demo_case")
    payload, z = out[0], int(_val(out[1]))
    assert payload["nz"] == gt_case.labels.shape[0] and gt_case.labels[z].any()
    assert ("Demo" in out[7] or "Random" in out[7]) and "Not for clinical use" in out[7]
    ys, xs = np.nonzero(gt_case.labels[z] == 1)
    # a rectal-wall pixel whose neighbours are wall too (a robust target for one click)
    wall = gt_case.labels[z] == 1
    inner = [(x, y) for y, x in zip(ys, xs) if wall[y - 1:y + 2, x - 1:x + 2].all()] or list(zip(xs, ys))
    x, y = inner[len(inner) // 2]
    payload = client.predict(float(x), float(y), float(z), "Positive point", "Normal rectum", api_name="/add_point")[0]
    assert payload["points"] == [[float(x), float(y), 1, 1]] and payload["locked"]
    timing = client.predict(api_name="/undo")[3]
    assert "decoder" in timing
    payload = client.predict(api_name="/redo")[0]
    if DEMO_CKPT.is_file():
        assert _overlay_label(payload, x, y) == 1

    nz = gt_case.labels.shape[0]
    out = client.predict(0, nz - 1, api_name="/segment_volume")
    assert "corrected slices kept" in out[-1] and "1 corrected" in out[-1]

    files = client.predict(api_name="/export_nifti")
    path = files[0] if isinstance(files[0], str) else files[0]["path"]
    img = nib.load(path)
    assert np.allclose(img.affine, gt_case.volume.source.get("affine_on_disk", gt_case.volume.affine), atol=1e-4)
    from usam.volumes import read_labelmap

    labels = read_labelmap(path, reference=gt_case.volume)
    assert labels.shape == gt_case.labels.shape and set(np.unique(labels)) <= {0, 1, 2}
    if DEMO_CKPT.is_file():
        from usam.metrics import case_metrics

        m = case_metrics(labels, gt_case.labels, gt_case.volume.spacing)
        # the shipped demo model (retrained 2026-12-02 on the anatomy-based phantom) gives mean Dice 0.35
        # here (normal 0.37, tumour 0.33; README "The demo model"): a regression guard, not a target
        assert m["mean"]["dice"] >= 0.30, m["per_class"]


@needs_demo_weights
def test_demo_weights_are_announced(client):
    header = client.predict(api_name="/init_session")[7]
    assert "synthetic pelvic CT phantoms" in header and "Not for clinical use" in header


def test_bad_upload_shows_message_and_keeps_volume(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    before = client.predict(api_name="/init_session")[4]
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a volume" * 50)
    with pytest.raises(AppError) as err:
        client.predict(handle_file(str(bad)), api_name="/load_volume")
    assert "broken.nii.gz" in str(err.value) or "read" in str(err.value)
    assert client.predict(api_name="/init_session")[4] == before  # the previous volume stays
