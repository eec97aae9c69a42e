"""Choosing among distilled students on validation, not test: the benchmark's probes (fitted on each marketplace's
train split, same seeds and sample as `bench_encoder.py`) scored on the valid split instead of test.

    python benchmarks/reports/encoder-distill-2cpu/scripts/valid_probes.py NAME=FOLDER ...
    python benchmarks/reports/encoder-distill-2cpu/scripts/valid_probes.py --split test NAME=FOLDER ...

``--split test`` scores the benchmark's own test split instead (its probe figures for encoders already built, e.g.
an undistilled copy of other layers: `test-probes.txt`).

The students were distilled on train and valid text (never on labels), so their validation scores are not comparable
to the teacher's; they rank students distilled on the same text. Prints one row per student and writes nothing.
"""

import sys
from pathlib import Path

import numpy as np

from models.config import EncoderDistillConfig
from models.encoder_probe import probe_aucs
from tasks.domain_text import load_marketplaces
from tasks.learner import to_pairs

args = sys.argv[1:]
split = "valid"
if args[:1] == ["--split"]:
    split, args = args[1], args[2:]
cfg = EncoderDistillConfig()
marketplaces = load_marketplaces(["/tmp/bench/demo", "/tmp/bench/tax"])
splits = {m: (to_pairs(mk.train), to_pairs(mk.split(split))) for m, mk in marketplaces.items()}
print("student".ljust(16) + "".join(m.rjust(9) for m in splits) + "mean".rjust(9))
for name, folder in (arg.split("=", 1) for arg in args):
    aucs = probe_aucs(Path(folder), splits, seeds=cfg.eval_seeds, fraction=cfg.probe_fraction, seed=cfg.seed,
                      batch_size=cfg.eval_batch_size, max_length=cfg.max_length)
    means = [float(np.mean(v)) for v in aucs.values()]
    print(name.ljust(16) + "".join(f"{v:9.4f}" for v in means) + f"{np.mean(means):9.4f}", flush=True)
