"""The adapter view (models.encoder_probe.adapter_aucs) on a few marketplaces and learner settings, for a quick
check of one encoder: learner preset `demo`, first 800 training and validation pairs, one fit per marketplace.

    python adapter_view_subset.py FOLDER demo/de,demo/en [pooling=mean ...]

Output: one RESULT line (run 14's checks: pooling-dropout.txt).
"""
import sys
import time

from models.encoder_probe import adapter_aucs
from models.encoders import resolve_encoder
from tasks.config import learner_config
from tasks.domain_text import load_marketplaces
from tasks.learner import marketplace_splits
from tasks.settings import get_settings

folder, keys, sets = sys.argv[1], sys.argv[2].split(","), sys.argv[3:]
marketplaces = load_marketplaces(["/tmp/bench/demo", "/tmp/bench/tax"])
splits = {k: marketplace_splits(marketplaces[k]) for k in keys}
started = time.perf_counter()
aucs = adapter_aucs(resolve_encoder(folder, get_settings().cache_dir), splits, learner_config("demo", overrides=sets),
                    rows=800)
print("RESULT", folder, sets, {k: round(v, 4) for k, v in aucs.items()}, round(time.perf_counter() - started), "s")
