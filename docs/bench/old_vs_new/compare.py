"""Old (4734927) vs new, alternating call by call: paired ratios (new / old) of adjacent calls.

    git archive 4734927 usam | tar -x -C /tmp/old      # the old tree, no git state changed
    H5_THREADS=1 python docs/bench/old_vs_new/compare.py 120 vit_b decode > out.json
    (what: decode | volume | encode8 | decode8; a 4th argument sets the batch, default 8)
"""
import json, os, subprocess, sys, time
from pathlib import Path

import numpy as np

OLD_ROOT = os.environ.get("OLD_ROOT", "/tmp/old")
NEW_ROOT = os.environ.setdefault("NEW_ROOT", str(Path(__file__).resolve().parents[3]))  # the workers read it too
pairs, config, what = int(sys.argv[1]), sys.argv[2], sys.argv[3]   # what: decode | volume
vbatch = sys.argv[4] if len(sys.argv) > 4 else "8"
py = sys.executable
w = {s: subprocess.Popen([py, str(Path(__file__).with_name("worker.py")), s, r], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, cwd=str(Path(__file__).parent)) for s, r in (("old", OLD_ROOT), ("new", NEW_ROOT))}
def ask(side, cmd):
    w[side].stdin.write(cmd + "\n"); w[side].stdin.flush()
    return json.loads(w[side].stdout.readline())["s"]
for s in w:
    ask(s, f"warm {config} 0")
    if what == "volume":
        ask(s, f"volume {config} {vbatch}")
res = {"old": [], "new": []}
t0 = time.time()
for i in range(pairs):
    order = ("old", "new") if i % 2 == 0 else ("new", "old")
    for s in order:
        res[s] += ask(s, f"decode {config} {i}" if what == "decode" else f"{what} {config} {vbatch}")
    if (i + 1) % 10 == 0:
        print(f"{i + 1}/{pairs} {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
o, n = np.asarray(res["old"]) * 1000, np.asarray(res["new"]) * 1000
r = n / o
rng = np.random.default_rng(0)
boot = [np.median(rng.choice(r, r.size)) for _ in range(2000)]
print(json.dumps({"config": config, "what": what, "pairs": pairs, "threads": __import__("os").environ.get("H5_THREADS", "2"),
                  "old_ms": {"p50": round(float(np.median(o)), 2), "p25": round(float(np.percentile(o, 25)), 2),
                             "p75": round(float(np.percentile(o, 75)), 2), "p95": round(float(np.percentile(o, 95)), 2), "min": round(float(o.min()), 2)},
                  "new_ms": {"p50": round(float(np.median(n)), 2), "p25": round(float(np.percentile(n, 25)), 2),
                             "p75": round(float(np.percentile(n, 75)), 2), "p95": round(float(np.percentile(n, 95)), 2), "min": round(float(n.min()), 2)},
                  "paired_ratio_median": round(float(np.median(r)), 3),
                  "paired_ratio_ci95": [round(float(np.percentile(boot, 2.5)), 3), round(float(np.percentile(boot, 97.5)), 3)],
                  "paired_ratio_p25_p75": [round(float(np.percentile(r, 25)), 3), round(float(np.percentile(r, 75)), 3)],
                  "raw_old": [round(v, 2) for v in o], "raw_new": [round(v, 2) for v in n]}))
for s in w.values():
    s.stdin.close(); s.wait()
