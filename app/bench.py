"""Click-to-overlay server time through the app's own callbacks: `python -m app.bench`.

For each model (the demo weights and U-SAM-B with random weights by default) it opens the
first demo phantom, clicks points inside the rectum on several slices through
app.segment.prompts.PromptEvents.add_point (prompt -> predictor -> label map -> overlay PNG payload:
everything the server does for a click) and reports p50 / p95 of the first click on a slice
(encoder + decoder) and of the following clicks (cached slice features). Writes JSON + Markdown.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

TARGETS_MS = {"demo": 100.0, "vit_b": 250.0}  # p95 of cached clicks on a 2-core CPU (issue 5)


def _pct(values: list[float], q: float) -> float:
    """Percentile (linear) of a list, NaN when empty."""
    return float(np.percentile(values, q)) if values else float("nan")


def _context(model_name: str, device: str, demo_size: str):
    """An AppContext on the demo weights (or random demo) or on a random U-SAM of a preset config."""
    from app.context import AppContext, default_metadata
    from app.settings import AppConfig

    cfg = AppConfig(device=device, demo_size=demo_size)
    if model_name == "demo":
        return AppContext(cfg)
    import torch

    from usam.model import build_usam, get_config

    torch.manual_seed(0)
    conf = get_config(model_name)
    model = build_usam(conf).to(AppContext(cfg).device).eval()
    return AppContext(cfg, model=model, metadata=default_metadata(conf))


def bench_model(model_name: str, slices: int = 5, clicks_per_slice: int = 6, device: str = "auto",
                demo_size: str = "small", seed: int = 0) -> dict[str, Any]:
    """Time clicks through SegmentEvents.add_point on one model; returns the numbers and the raw samples."""
    from app import segment
    from app.segment.layout import SegmentEvents

    t_load = time.perf_counter()
    ctx = _context(model_name, device, demo_size)
    ctx.get_model()
    info = ctx.weights_info()
    load_s = time.perf_counter() - t_load
    cb = SegmentEvents(ctx)
    s = segment.load_demo(ctx, 0)
    gt = s.ground_truth
    zs = np.flatnonzero((gt > 0).any(axis=(1, 2)))
    pick = zs[np.linspace(0, len(zs) - 1, min(slices, len(zs))).round().astype(int)]
    rng = np.random.default_rng(seed)
    first, cached, decoder, decoder_cached = [], [], [], []
    for z in pick:
        ys, xs = np.nonzero(gt[z] > 0)
        for k in range(clicks_per_slice):
            i = int(rng.integers(len(ys)))
            mode = "Negative point" if k % 3 == 2 else "Positive point"
            cls = "Tumor" if gt[z, ys[i], xs[i]] == 2 else "Normal rectum"
            t0 = time.perf_counter()
            cb.add_point(s, float(xs[i]), float(ys[i]), float(z), mode, cls)
            ms = (time.perf_counter() - t0) * 1000.0
            t = s.last_timing
            (cached if t["cached"] else first).append(ms)
            (decoder_cached if t["cached"] else decoder).append(t["decoder_ms"])
        cb.clear_slice(s)
    s.close()
    import torch

    return {
        "model": model_name, "weights": info.label, "weights_kind": info.kind, "device": ctx.device,
        "torch_threads": torch.get_num_threads(), "slice_shape": list(s.slice_shape), "slices": len(pick),
        "clicks": len(first) + len(cached), "model_load_s": round(load_s, 2),
        "cached_click_ms": {"p50": _pct(cached, 50), "p95": _pct(cached, 95), "n": len(cached)},
        "first_click_ms": {"p50": _pct(first, 50), "p95": _pct(first, 95), "n": len(first)},
        "decoder_ms_cached": {"p50": _pct(decoder_cached, 50), "p95": _pct(decoder_cached, 95)},
        "target_p95_ms": TARGETS_MS.get(model_name),
        "meets_target": (_pct(cached, 95) <= TARGETS_MS[model_name]) if model_name in TARGETS_MS else None,
        "samples_ms": {"cached": [round(v, 2) for v in cached], "first": [round(v, 2) for v in first]},
    }


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The results as a Markdown table (for README / docs)."""
    lines = [
        "# Click-to-overlay server time (app.bench)",
        "",
        f"{meta['date_utc']} · {meta['cpu']} · {meta['cpus']} CPU cores · torch {meta['torch']} · "
        f"demo phantom `{meta['demo_size']}`. Time of `SegmentEvents.add_point` on the server: prompt -> "
        "decoder (cached slice features) -> label map -> overlay PNG payload; network and browser drawing excluded.",
        "",
        "| model | weights | device | slice | cached click p50 / p95 (ms) | decoder p50 (ms) | "
        "first click on a slice p50 / p95 (ms, with encoder) | target p95 | met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c, f, d = r["cached_click_ms"], r["first_click_ms"], r["decoder_ms_cached"]
        tgt = f"≤ {r['target_p95_ms']:.0f} ms" if r["target_p95_ms"] else "-"
        met = {True: "yes", False: "no", None: "-"}[r["meets_target"]]
        lines.append(f"| {r['model']} | {r['weights']} | {r['device']} ({r['torch_threads']} threads) | "
                     f"{r['slice_shape'][1]}×{r['slice_shape'][0]} | {c['p50']:.1f} / {c['p95']:.1f} (n={c['n']}) | "
                     f"{d['p50']:.1f} | {f['p50']:.1f} / {f['p95']:.1f} (n={f['n']}) | {tgt} | {met} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    from app.settings import parse_config

    p = argparse.ArgumentParser(prog="python -m app.bench", description=__doc__.splitlines()[0])
    p.add_argument("--models", default="demo,vit_b", help="comma list: demo (the app's weights) and/or "
                   "config names with random weights (vit_b, vit_l, ...)")
    p.add_argument("--slices", type=int, default=5, help="slices through the rectum to click on")
    p.add_argument("--clicks", type=int, default=8, help="clicks per slice (the first one runs the encoder)")
    start = parse_config([])  # the start-up settings (USAM_DEVICE; USAM_DEMO_SIZE, else small phantoms here)
    p.add_argument("--device", default=start.device)
    p.add_argument("--demo-size", default=start.env.get("USAM_DEMO_SIZE", "small"), choices=("small", "full"))
    p.add_argument("--out", default="bench-results", help="folder for app_bench.json and app_bench.md")
    a = p.parse_args(argv)
    import torch

    results = []
    for name in [m.strip() for m in a.models.split(",") if m.strip()]:
        print(f"benchmarking {name} ...", file=sys.stderr, flush=True)
        results.append(bench_model(name, a.slices, a.clicks, a.device, a.demo_size))
    meta = {"date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "demo_size": a.demo_size,
            "command": "python -m app.bench " + " ".join(argv if argv is not None else sys.argv[1:])}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "app_bench.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    md = markdown(results, meta)
    (out / "app_bench.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
