"""One side of the old-vs-new comparison: `worker.py old|new ROOT`; reads commands, prints JSON lines.

Measurement script (docs/BENCHMARKS.md); the demo weights are read from the new tree's checkpoints/."""
import json, sys, time
side, root = sys.argv[1], sys.argv[2]
sys.path.insert(0, root)
import os
import numpy as np
import torch
torch.set_num_threads(int(os.environ.get('H5_THREADS', '2')))
from usam.model import build_usam, get_config
from usam.checkpoints import demo_checkpoint_path, load_checkpoint
from usam.predictor import VolumePredictor
from usam.bench import bench_prompts
from usam.volumes import Volume

models = {}


def get(config):
    if config not in models:
        if config == "demo":
            model, _ = load_checkpoint(os.path.join(os.environ.get("NEW_ROOT", root), "checkpoints", "usam_demo.safetensors"), device="cpu")
        else:
            torch.manual_seed(0)
            model = build_usam(get_config(config)).eval()
        if side == "old":
            from usam.model.fast import optimize_for_inference
            optimize_for_inference(model, "cpu")
            enc = lambda x: model.encode(x)
            dec = lambda f, p: model.decode(f, p)
            m = model
        else:
            from usam.model.fast import optimize_for_inference
            from usam.predictor import encode_images, predict_logits
            m = optimize_for_inference(model, "cpu")
            enc = lambda x: encode_images(m, x)
            dec = lambda f, p: predict_logits(m, f, p)
        x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            feats = enc(x)
            for p in bench_prompts(4, 0):
                dec(feats, [p])
        rng = np.random.default_rng(0)
        hu = rng.normal(40.0, 120.0, size=(8, 512, 512)).astype(np.float32)
        vol = Volume(hu, (2.5, 0.8, 0.8), np.eye(4), {"format": "bench", "name": "random"})
        models[config] = (m, enc, dec, feats, vol)
    return models[config]


for line in sys.stdin:
    cmd, config, arg = line.split()
    m, enc, dec, feats, vol = get(config)
    out = []
    if cmd == "decode":
        prompts = [bench_prompts(40, 0)[int(arg) % 40]]  # one prompt per call (calls alternate between sides)
        with torch.inference_mode():
            for p in prompts:
                t = time.perf_counter()
                dec(feats, [p])
                out.append(time.perf_counter() - t)
    elif cmd == "volume":
        meta = {"preprocessing": {"window": [-160.0, 240.0]}}
        t = time.perf_counter()
        VolumePredictor(m, vol, meta, device="cpu").predict_volume(batch_size=int(arg))
        out.append((time.perf_counter() - t) / vol.array.shape[0])
    elif cmd in ("encode8", "decode8"):
        x8 = torch.randn(int(arg), 3, 224, 224, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            f8 = enc(x8)
            t = time.perf_counter()
            if cmd == "encode8":
                enc(x8)
            else:
                dec(f8, None)
            out.append((time.perf_counter() - t) / int(arg))
    elif cmd == "warm":
        pass
    print(json.dumps({"side": side, "cmd": cmd, "config": config, "s": out}), flush=True)
