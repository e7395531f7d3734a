"""The machine side of the benchmarks: what it is, its fp32 matmul rate, other processes' CPU share,
peak memory, and the timing helpers (warm-up, repetitions, p50 / p95)."""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on: CPU model, cores, torch, load average, GPU name."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "nproc": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "device": str(device), "load_avg": load_avg(),
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def matmul_gflops(device: torch.device, n: int = 2048, repeats: int = 10) -> float:
    """The device's fp32 matrix-multiply rate (GFLOP/s, best of `repeats` n x n products): the ceiling
    for a model that is mostly matrix products."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = float("inf")
    with torch.inference_mode():
        for i in range(repeats + 2):
            _sync(device)
            t0 = time.perf_counter()
            a @ b
            _sync(device)
            if i >= 2:  # two warm-up products
                best = min(best, time.perf_counter() - t0)
    return round(2 * n ** 3 / best / 1e9, 1)


def load_avg() -> list[float]:
    """1, 5 and 15 minute load averages ([] where unavailable)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def cpu_snapshot() -> tuple[float, float, float] | None:
    """(busy seconds of all CPUs, total seconds of all CPUs, this process's CPU seconds); None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [float(v) for v in fields]
    hz = os.sysconf("SC_CLK_TCK")
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0.0)  # idle + iowait
    own = os.times()
    return (sum(ticks[:8]) - idle) / hz, sum(ticks[:8]) / hz, own.user + own.system


def others_cpu_share(start: tuple | None, end: tuple | None) -> float | None:
    """Fraction of the machine's CPU time used by OTHER processes between two snapshots (0 = idle machine)."""
    if not start or not end or end[1] <= start[1]:
        return None
    busy, total, own = (e - s for s, e in zip(start, end))
    return round(max(0.0, busy - own) / total, 3)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux clear_refs 5); False if not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak RSS (and CUDA max allocated) of a path, across per-row resets.

    reset_row() starts a new row (the kernel's and CUDA's marks are reset); row() reads the row's
    peak; total() the maximum over all rows since start().
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start()

    def start(self) -> None:
        self._max = {"peak_rss_mb": 0.0}
        if self.device.type == "cuda":
            self._max["cuda_max_allocated_mb"] = 0.0
        self._reset_marks()

    def _reset_marks(self) -> None:
        reset_peak_rss()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def reset_row(self) -> None:
        self.row()  # whatever was reached since the last reset still counts for total()
        self._reset_marks()

    def row(self) -> dict[str, float]:
        now = {"peak_rss_mb": round(peak_rss_mb(), 1)}
        if self.device.type == "cuda":
            now["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        for k, v in now.items():
            self._max[k] = max(self._max[k], v)
        return now

    def total(self) -> dict[str, float]:
        self.row()
        return dict(self._max)


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (VmHWM from /proc; nan where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int, device: torch.device) -> list[float]:
    """Seconds per call of fn, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t)
    return out


def summary_ms(seconds: list[float]) -> dict[str, float]:
    """p50 / p95 / min in ms."""
    a = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {"p50": round(float(np.percentile(a, 50)), 2), "p95": round(float(np.percentile(a, 95)), 2),
            "min": round(float(a.min()), 2), "n": int(a.size)}
