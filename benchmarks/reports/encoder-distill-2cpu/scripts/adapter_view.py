"""The adapter view of the evaluation (models.encoder_probe.adapter_aucs) on encoders already distilled: one adapter
and head per marketplace of the demo and taxonomy data, first 800 training and validation pairs, learner preset ARGV[1].

    python adapter_view.py demo student=/tmp/bench/e5-default-sim undistilled=/tmp/bench/undistilled teacher=<e5-small>

Output: adapter-view.txt (and /tmp/diag/adapter_view.json).
"""
import json, sys, time
from pathlib import Path
from models.encoder_probe import adapter_aucs
from models.encoders import resolve_encoder
from tasks.config import learner_config
from tasks.domain_text import load_marketplaces
from tasks.learner import marketplace_splits
from tasks.settings import get_settings
s = get_settings()
learner = learner_config(sys.argv[1])
splits = {k: marketplace_splits(m) for k, m in load_marketplaces(["/tmp/bench/demo", "/tmp/bench/tax"]).items()}
out = {}
for name, folder in (a.split("=", 1) for a in sys.argv[2:]):
    t = time.perf_counter()
    out[name] = adapter_aucs(resolve_encoder(folder, s.cache_dir), splits, learner, rows=800)
    print(name, " ".join(f"{k} {v:.4f}" for k, v in out[name].items()), f"mean {sum(out[name].values())/len(out[name]):.4f}", round(time.perf_counter() - t), "s", flush=True)
json.dump(out, open("/tmp/diag/adapter_view.json", "w"), indent=1)
