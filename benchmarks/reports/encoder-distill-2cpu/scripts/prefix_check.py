"""How much e5's input prefixes matter to the probes: teacher and the run-5 student, with and without them (3 seeds)."""
import numpy as np, torch
from pathlib import Path
torch.set_num_threads(1)
from tasks.domain_text import load_marketplaces
from tasks.settings import get_settings
from models.encoders import resolve_encoder
import models.encoder_probe as P
from tasks.learner import to_pairs
s = get_settings(); teacher = resolve_encoder(s.encoder, s.cache_dir).path
mk = load_marketplaces([Path("/tmp/bench/demo"), Path("/tmp/bench/tax")])
keys = [k for k in mk if k in ("demo/en", "tax/es", "tax/de")]
splits = {m: (to_pairs(mk[m].train), to_pairs(mk[m].test)) for m in keys}
for pre in (("query: ", "passage: "), ("", "")):
    P.E5_QUERY_PREFIX, P.E5_TITLE_PREFIX = pre  # the names probe_features reads
    for name, f in (("teacher", teacher), ("e5-780", "/tmp/bench/e5-780")):
        a = P.probe_aucs(Path(f), splits, seeds=3, fraction=0.8, seed=13, batch_size=64, max_length=64)
        print(repr(pre[0]), name, {k: round(float(np.mean(v)), 4) for k, v in a.items()}, flush=True)
