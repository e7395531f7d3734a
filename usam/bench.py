"""`python -m usam bench`: encoder, cached decode, whole-volume and end-to-end timings, memory.

For each configuration the same weights run twice: as built (the reference path, segment-anything's
own modules) and through the inference model usam.model.fast.FastUsam (the path the app and the
CLIs use); both through usam.predictor's one inference path (encode_images, predict_logits). The
naive path of the comparison is the reference model doing a full forward per click (no feature cache) and a per-slice loop at batch 1; the optimised path caches features and batches
slices. Warm-up first, then repetitions; figures are medians (p50/p95 for decodes). Peak RSS is
reset (Linux clear_refs) before each path. Writes bench.json and bench.md with --out DIR.

Default whole-volume batch sizes: 1, 2, 4, 8, 16 on CPU (larger batches only add memory on a
2-core machine; pass --batch-sizes 1,2,4,8,16,32,64 for the full sweep) and 1..64 on CUDA.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from usam.bench_machine import (PeakMemory, cpu_snapshot, load_avg, machine_info, matmul_gflops, others_cpu_share,
                                summary_ms, time_calls)
from usam.model import Usam, build_usam, get_config
from usam.model.fast import FastUsam, pick_device
from usam.predictor import InferenceModel, VolumePredictor, encode_images, predict_logits
from usam.preprocess import DEFAULT_WINDOW, SIZE, logits_to_labels, preprocess_slices
from usam.prompts import Prompts
from usam.volumes import Volume

CPU_BATCHES = (1, 2, 4, 8, 16)
GPU_BATCHES = (1, 2, 4, 8, 16, 32, 64)
# issue 7 targets for U-SAM-B, fp32 on the 2-core CPU
CPU_TARGETS = {"decode_p95_ms": 40.0, "volume_ms_per_slice": 250.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI flags of `python -m usam bench`."""
    parser.add_argument("--config", nargs="+", default=["vit_b", "demo"],
                        help="configurations to measure (default: vit_b demo)")
    parser.add_argument("--checkpoint", default=None,
                        help="weights for the demo config (default: checkpoints/usam_demo.safetensors if present, "
                             "else random init); other configs use random init")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    parser.add_argument("--batch-sizes", default=None,
                        help=f"comma-separated whole-volume batch sizes (default CPU {CPU_BATCHES}, GPU {GPU_BATCHES})")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per figure (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before each measurement")
    parser.add_argument("--prompts", type=int, default=40, help="cached decodes timed (p50/p95)")
    parser.add_argument("--case-slices", type=int, default=80, help="slices of the end-to-end case")
    parser.add_argument("--case-size", type=int, default=512, help="in-plane size of the end-to-end case")
    parser.add_argument("--case-repeats", type=int, default=1, help="end-to-end runs (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-naive", action="store_true", help="skip the reference/naive path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="folder for bench.json and bench.md")


# ---------------------------------------------------------------------------------------------
# machine and memory


def forward_gmacs(config: str) -> float:
    """Multiply-accumulates (G) of one 224^2 slice through the full model, counted on the meta device."""
    from usam.info import count_usam

    return round(count_usam(config).gflops, 2)


def counted_gmacs(model: InferenceModel, device: torch.device) -> float:
    """Multiply-adds (G) this model (reference or inference) runs for one prompt-free slice, counted (convs, matmuls, attention)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    x = _images(1, 0, device)
    # the math backend: attention as matrix products the counter sees (it skips fused CPU kernels)
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        predict_logits(model, encode_images(model, x))
    return round(counter.get_total_flops() / 2e9, 2)


def bench_prompts(n: int, seed: int) -> list[Prompts]:
    """n clicks as a user makes them: growing point sets (3 per class at most), a box, box + points."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = i % 4
        k = 1 + (i // 4) % 6
        pts = rng.uniform(40, 184, size=(k, 2)).astype(np.float32)
        cls = np.asarray([1 + j % 2 for j in range(k)])
        if kind == 3:
            out.append(Prompts(boxes=[[50, 60, 170, 180]], box_classes=[0]))
        elif kind == 2:
            out.append(Prompts(points=pts, point_labels=np.ones(k), point_classes=cls,
                               boxes=[[50, 60, 170, 180]], box_classes=[0]))
        else:
            out.append(Prompts(points=pts, point_labels=np.ones(k), point_classes=cls))
    return out


# ---------------------------------------------------------------------------------------------
# measurements


def load_model(config: str, checkpoint: str | None, device: torch.device, seed: int) -> tuple[Usam, str]:
    """(model in eval mode, description of its weights): the demo checkpoint for 'demo' when present."""
    from usam.checkpoints import demo_checkpoint_path, load_checkpoint

    path = Path(checkpoint) if checkpoint else demo_checkpoint_path()
    if config == "demo" and path.is_file():
        model, meta = load_checkpoint(path, device=device)
        return model, f"{path.name} ({meta.get('weights_kind', '?')})"
    torch.manual_seed(seed)
    return build_usam(get_config(config)).to(device).eval(), f"random init (seed {seed})"


def _images(n: int, seed: int, device: torch.device) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)).to(device)


def measure_encode_decode(model: InferenceModel, args: argparse.Namespace, device: torch.device,
                          prompts: list[Prompts]) -> dict[str, Any]:
    """Encoder time per slice (batch 1) and cached decode time per prompt (batch 1)."""
    x = _images(1, args.seed, device)
    enc = time_calls(lambda: encode_images(model, x), args.repeats, args.warmup, device)
    feats = encode_images(model, x)
    for p in prompts[:max(args.warmup, 1)]:
        predict_logits(model, feats, [p])
    dec = []
    for p in prompts:
        dec += time_calls(lambda: predict_logits(model, feats, [p]), 1, 0, device)
    return {"encoder_ms": summary_ms(enc), "cached_decode_ms": summary_ms(dec)}


def _full_forward(model: InferenceModel, x: torch.Tensor, prompts: list[Prompts | None] | None = None) -> torch.Tensor:
    """Encode then decode, no cache: the naive path's unit."""
    return predict_logits(model, encode_images(model, x), prompts)


def measure_click_no_cache(model: InferenceModel, args: argparse.Namespace, device: torch.device,
                           prompts: list[Prompts]) -> dict[str, float]:
    """Naive click: encoder + decoder for every prompt (no feature cache)."""
    x = _images(1, args.seed, device)
    _full_forward(model, x, [prompts[0]])
    times = []
    for p in prompts[:max(args.repeats, 1)]:
        times += time_calls(lambda: _full_forward(model, x, [p]), 1, 0, device)
    return summary_ms(times)


def measure_volume(model: InferenceModel, batch_sizes: list[int], args: argparse.Namespace,
                   device: torch.device, memory: PeakMemory) -> list[dict[str, float]]:
    """Whole-volume throughput without prompts (encode + decode) per batch size, with each batch's peak memory."""
    rows = []
    for bs in batch_sizes:
        x = _images(bs, args.seed + bs, device)
        memory.reset_row()
        secs = time_calls(lambda: _full_forward(model, x), args.repeats, args.warmup, device)
        per = float(np.median(secs)) / bs
        rows.append({"batch": bs, "ms_per_slice": round(per * 1000.0, 2), "slices_per_s": round(1.0 / per, 2),
                     **memory.row()})
    return rows


def case_volume(args: argparse.Namespace) -> Volume:
    """The end-to-end case: --case-slices slices of --case-size^2 random HU (timing does not depend on content)."""
    rng = np.random.default_rng(args.seed)
    hu = rng.normal(40.0, 120.0, size=(args.case_slices, args.case_size, args.case_size)).astype(np.float32)
    return Volume(hu, (2.5, 0.8, 0.8), np.eye(4), {"format": "bench", "name": "random"})


def run_case_naive(model: InferenceModel, volume: Volume, device: torch.device) -> np.ndarray:
    """The naive end to end: per slice, preprocess -> full forward at batch 1 -> logits resized -> labels."""
    hu = volume.array
    out = np.zeros(hu.shape, np.uint8)
    for z in range(len(hu)):
        x = preprocess_slices(hu[z], DEFAULT_WINDOW).to(device)
        out[z] = logits_to_labels(_full_forward(model, x), hu.shape[1:])[0][0]
    return out


def run_case_predictor(model: InferenceModel, volume: Volume, batch: int, device: torch.device) -> np.ndarray:
    """The app's end to end: a fresh VolumePredictor (empty cache) and predict_volume in batches."""
    meta = {"preprocessing": {"window": list(DEFAULT_WINDOW)}}
    return VolumePredictor(model, volume, meta, device=device).predict_volume(batch_size=batch)


def measure_case(fn: Callable[[], Any], volume: Volume, batch: int, args: argparse.Namespace,
                 device: torch.device) -> dict[str, Any]:
    """Seconds for one case end to end (HU slices to label maps at the slice size)."""
    secs = time_calls(fn, max(args.case_repeats, 1), 0, device)
    return {"slices": int(volume.array.shape[0]), "size": int(volume.array.shape[1]), "batch": batch,
            "seconds": round(float(np.median(secs)), 3), "runs": len(secs)}


def measure_cached_click(model: InferenceModel, volume: Volume, prompts: list[Prompts], device: torch.device) -> dict[str, float]:
    """A click as the app runs it on a cached slice: VolumePredictor.predict (decode + resize to the slice)."""
    meta = {"preprocessing": {"window": list(DEFAULT_WINDOW)}}
    pred = VolumePredictor(model, volume, meta, device=device)
    pred.predict(0, prompts[0])  # encodes slice 0
    return summary_ms([pred.predict(0, p).decoder_ms / 1000.0 for p in prompts])


def max_logit_difference(model: Usam, fast: FastUsam, device: torch.device, prompts: list[Prompts],
                         seed: int) -> tuple[float, float]:
    """(max |optimised - reference| logits, max |reference logit|) on two images with prompts."""
    x = _images(2, seed + 99, device)
    p = [prompts[1 % len(prompts)], None]
    ref = _full_forward(model, x, p)
    return float((_full_forward(fast, x, p) - ref).abs().max()), float(ref.abs().max())


def bench_config(config: str, args: argparse.Namespace, device: torch.device, batch_sizes: list[int]) -> dict[str, Any]:
    """Every figure for one configuration: reference/naive path and optimised path."""
    model, weights = load_model(config, args.checkpoint if config == "demo" else None, device, args.seed)
    prompts = bench_prompts(max(args.prompts, 2), args.seed)
    volume = case_volume(args)
    fast = FastUsam(model)
    res: dict[str, Any] = {"config": config, "weights": weights, "device": str(device)}
    res["gmacs_per_slice"] = forward_gmacs(config)
    res["matmul_gflops"] = matmul_gflops(device)
    memory = PeakMemory(device)
    with torch.inference_mode():  # the reference path gets it too: the comparison is about the model code
        if not args.no_naive:
            memory.start()
            ref = measure_encode_decode(model, args, device, prompts)
            ref["click_no_cache_ms"] = measure_click_no_cache(model, args, device, prompts)
            ref["volume"] = measure_volume(model, [1], args, device, memory)
            memory.reset_row()
            ref["case"] = measure_case(lambda: run_case_naive(model, volume, device), volume, 1, args, device)
            ref["case"].update(memory.row())
            ref.update(memory.total())
            res["reference"] = ref
        res["max_abs_logit_diff"], res["max_abs_logit"] = max_logit_difference(model, fast, device, prompts, args.seed)
        res["optimized_gmacs_per_slice"] = counted_gmacs(fast, device)
        # no fp32 implementation of these operations can do a slice faster than at the matmul rate
        res["floor_ms_per_slice"] = round(2 * res["optimized_gmacs_per_slice"] / res["matmul_gflops"] * 1000, 1)
        memory.start()
        opt = measure_encode_decode(fast, args, device, prompts)
        opt["click_cached_predictor_ms"] = measure_cached_click(fast, volume, prompts, device)
        opt["volume"] = measure_volume(fast, batch_sizes, args, device, memory)
        best = min(opt["volume"], key=lambda r: r["ms_per_slice"])
        opt["best_batch"] = best["batch"]
        memory.reset_row()
        opt["case"] = measure_case(lambda: run_case_predictor(fast, volume, best["batch"], device), volume,
                                   best["batch"], args, device)
        opt["case"].update(memory.row())
        opt.update(memory.total())
        res["optimized"] = opt
    for key in ("peak_rss_mb", "cuda_max_allocated_mb"):
        if key in opt:
            res[key] = max(res.get("reference", {}).get(key, 0.0), opt[key])
    res["ratios"] = ratios(res)
    return res


def ratios(res: dict[str, Any]) -> dict[str, float]:
    """Speed-ups of the optimised path over the reference (>1 = faster)."""
    ref, opt = res.get("reference"), res["optimized"]
    if not ref:
        return {}
    best = min(r["ms_per_slice"] for r in opt["volume"])
    ref_vol = ref["volume"][0]["ms_per_slice"]
    return {
        "click_naive_vs_cached_p50": round(ref["click_no_cache_ms"]["p50"] / opt["cached_decode_ms"]["p50"], 2),
        "decode_ref_vs_opt_p50": round(ref["cached_decode_ms"]["p50"] / opt["cached_decode_ms"]["p50"], 2),
        "decode_ref_vs_opt_p95": round(ref["cached_decode_ms"]["p95"] / opt["cached_decode_ms"]["p95"], 2),
        "encoder_ref_vs_opt": round(ref["encoder_ms"]["p50"] / opt["encoder_ms"]["p50"], 2),
        "volume_naive_b1_vs_best": round(ref_vol / best, 2),
        "volume_ref_b1_vs_opt_b1": round(ref_vol / opt["volume"][0]["ms_per_slice"], 2),
        "case_naive_vs_opt": round(ref["case"]["seconds"] / opt["case"]["seconds"], 2),
    }


# ---------------------------------------------------------------------------------------------
# report


def _mem(d: dict[str, Any]) -> str:
    out = f"{d['peak_rss_mb']} MiB RSS"
    if "cuda_max_allocated_mb" in d:
        out += f", {d['cuda_max_allocated_mb']} MiB CUDA"
    return out


def to_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables: one summary per configuration and its batch sweep."""
    m = report["machine"]
    a = report.get("args", {})
    lines = [f"Machine: {m['cpu']}, {m['nproc']} CPUs, torch {m['torch']}, {m['threads']} threads, "
             f"device {m['device']}{', ' + m['gpu'] if 'gpu' in m else ''}; load average before "
             f"{m['load_avg']}, after {report.get('load_avg_after')}; {m['date_utc']} UTC. "
             f"Warm-up {a.get('warmup')}, {a.get('repeats')} repetitions (medians), {a.get('prompts')} prompts.", ""]
    for r in report["results"]:
        ref, opt, rat = r.get("reference"), r["optimized"], r["ratios"]
        share = r.get("others_cpu_share")
        busy = "" if share is None else f"; other processes used {100 * share:.0f}% of the machine's CPU meanwhile"
        lines += [f"### {r['config']} ({r['weights']}, {r['device']}{busy})", "",
                  "| figure | reference / naive | optimised | ratio |", "|---|---|---|---|"]

        def row(name, a, b, ratio=""):
            lines.append(f"| {name} | {a} | {b} | {ratio} |")

        def refv(*keys):
            v = ref
            for k in keys:
                if v is None:
                    return "-"
                v = v[k]
            return v
        e, d = opt["encoder_ms"], opt["cached_decode_ms"]
        row("encoder ms / slice (batch 1, p50)", refv("encoder_ms", "p50"), e["p50"], rat.get("encoder_ref_vs_opt", ""))
        row("cached decode ms / prompt, p50", refv("cached_decode_ms", "p50"), d["p50"],
            rat.get("decode_ref_vs_opt_p50", ""))
        row("cached decode ms / prompt, p95", refv("cached_decode_ms", "p95"), d["p95"],
            rat.get("decode_ref_vs_opt_p95", ""))
        row("click ms, p50: full forward per click (naive) vs cached decode", refv("click_no_cache_ms", "p50"),
            d["p50"], rat.get("click_naive_vs_cached_p50", ""))
        c = opt["click_cached_predictor_ms"]
        row(f"cached click through VolumePredictor.predict (+ resize to {opt['case']['size']}^2), p50 / p95", "-",
            f"{c['p50']} / {c['p95']}", "")
        best = min(opt["volume"], key=lambda v: v["ms_per_slice"])
        row(f"whole volume ms / slice (naive batch 1 vs batch {best['batch']})", refv("volume", 0, "ms_per_slice"),
            best["ms_per_slice"], rat.get("volume_naive_b1_vs_best", ""))
        row("whole volume slices / s", refv("volume", 0, "slices_per_s"), best["slices_per_s"], "")
        oc = opt["case"]
        row(f"{oc['slices']}-slice case end to end, s ({oc['size']}^2; naive: batch-1 loop; "
            f"optimised: VolumePredictor, batch {oc['batch']})", refv("case", "seconds"), oc["seconds"],
            rat.get("case_naive_vs_opt", ""))
        scale = f" (max abs logit {r['max_abs_logit']:.3g})" if "max_abs_logit" in r else ""
        row("max abs logit difference (optimised vs reference)", "", f"{r['max_abs_logit_diff']:.2e}{scale}", "")
        row("peak memory", _mem(ref) if ref else "-", _mem(opt), "")
        if "floor_ms_per_slice" in r:
            row(f"lower bound, ms / slice: the optimised path's {r.get('optimized_gmacs_per_slice', '?')} GMAC "
                f"(the reference's {r['gmacs_per_slice']}) at this machine's fp32 matmul rate "
                f"({r['matmul_gflops']} GFLOP/s)", "", r["floor_ms_per_slice"], "")
        cuda = "cuda_max_allocated_mb" in opt["volume"][0]
        lines += ["", "| batch | ms / slice | slices / s | peak RSS MiB |" + (" CUDA max alloc MiB |" if cuda else ""),
                  "|---|---|---|---|" + ("---|" if cuda else "")]
        lines += [f"| {v['batch']} | {v['ms_per_slice']} | {v['slices_per_s']} | {v['peak_rss_mb']} |"
                  + (f" {v['cuda_max_allocated_mb']} |" if cuda else "") for v in opt["volume"]]
        lines.append("")
    return "\n".join(lines)


def target_lines(report: dict[str, Any]) -> list[str]:
    """Pass/fail against the issue's CPU targets for vit_b."""
    out = []
    for r in report["results"]:
        if r["config"] != "vit_b" or not r["device"].startswith("cpu"):
            continue
        p95 = r["optimized"]["cached_decode_ms"]["p95"]
        vol = min(v["ms_per_slice"] for v in r["optimized"]["volume"])
        for name, got in (("decode_p95_ms", p95), ("volume_ms_per_slice", vol)):
            lim = CPU_TARGETS[name]
            line = f"target {name} <= {lim}: {got} ({'met' if got <= lim else 'NOT met'})"
            floor = r.get("floor_ms_per_slice")
            if name == "volume_ms_per_slice" and floor and floor > lim:
                line += f"; below this machine's fp32 floor of {floor} ms / slice"
            out.append(line)
    return out


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print Markdown, write bench.json / bench.md under --out."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    default = GPU_BATCHES if device.type == "cuda" else CPU_BATCHES
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else list(default)
    plain = (int, float, str, list, type(None))
    report: dict[str, Any] = {"machine": machine_info(device),
                              "args": {k: v for k, v in vars(args).items() if isinstance(v, plain)}}
    results = []
    for config in args.config:
        print(f"benchmarking {config} on {device} ...", flush=True)
        start = cpu_snapshot()
        r = bench_config(config, args, device, batch_sizes)
        r["others_cpu_share"] = others_cpu_share(start, cpu_snapshot())
        r["load_avg_after"] = load_avg()
        results.append(r)
    report["results"] = results
    report["load_avg_after"] = load_avg()
    report["targets"] = target_lines(report)
    md = to_markdown(report)
    print(md)
    for line in report["targets"]:
        print(line)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(report, indent=2))
        (out / "bench.md").write_text(md + "\n" + "\n".join(report["targets"]) + "\n")
        print(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")
    return 0
