"""The benchmark's probes (test split, 5 seeds) on encoders already distilled, one row each."""
import sys
from pathlib import Path
import numpy as np
from models.config import EncoderDistillConfig
from models.encoder_probe import probe_aucs
from tasks.domain_text import load_marketplaces
from tasks.learner import to_pairs
cfg = EncoderDistillConfig()
mk = load_marketplaces(["/tmp/bench/demo", "/tmp/bench/tax"])
splits = {m: (to_pairs(k.train), to_pairs(k.test)) for m, k in mk.items()}
print("encoder".ljust(16) + "".join(m.rjust(9) for m in splits) + "mean".rjust(9))
for name, folder in (a.split("=", 1) for a in sys.argv[1:]):
    aucs = probe_aucs(Path(folder), splits, seeds=cfg.eval_seeds, fraction=cfg.probe_fraction, seed=cfg.seed,
                      batch_size=cfg.eval_batch_size, max_length=cfg.max_length)
    means = [float(np.mean(v)) for v in aucs.values()]
    print(name.ljust(16) + "".join(f"{v:9.4f}" for v in means) + f"{np.mean(means):9.4f}", flush=True)
