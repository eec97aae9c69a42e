"""Which part of the distillation costs the adapters? Distil e5-small with the `cpu` preset plus overrides on the
demo + taxonomy text, then train one adapter (learner preset `demo`, first 800 pairs) on tax/en and tax/es on the
result and print their test ROC-AUC (R[0][0] of a one-marketplace sequence).

    OMP_NUM_THREADS=1 python benchmarks/reports/encoder-distill-2cpu/scripts/adapter_ablation.py OUT [KEY=VALUE ...]

Environment switches for two variants the settings do not offer (diagnostics, not features):
  PAIRS_ONLY=1  distil on the cross-encoded (query, title) pairs only (with pairs=true; the single texts dropped);
  NO_DROPOUT=1  the student's hidden dropout off while distilling (its attention dropout already is).
ROOTS=root:marketplace,... picks the adapters (default tax/en and tax/es). Output: `adapter-ablation.txt`.
"""
import json
import os
import sys
import time
from pathlib import Path

from models.config import EncoderDistillConfig
from models.encoder_distill import distill_encoder, run_fingerprint
from models.encoders import resolve_encoder
from tasks.config import ENCODER_PRESETS, build, learner_config
from tasks.domain_text import distill_inputs, domain_texts, load_marketplaces
from tasks.learner import resolve_settings_encoder, run_sequence
from tasks.settings import get_settings

out, sets = Path(sys.argv[1]), sys.argv[2:]
if os.environ.get("NO_DROPOUT"):
    import models.encoder_distill as distill_module
    from transformers import AutoModel

    class _NoHiddenDropout:
        @staticmethod
        def from_pretrained(path, **kw):
            if "encoders/multilingual-e5-small" not in str(path):  # the student, not the teacher
                kw["hidden_dropout_prob"] = 0.0
            return AutoModel.from_pretrained(path, **kw)

    distill_module.AutoModel = _NoHiddenDropout
settings = get_settings()
cfg = build(EncoderDistillConfig, preset="cpu", kind=ENCODER_PRESETS, overrides=sets)
teacher = resolve_settings_encoder(settings, None)
mk = load_marketplaces(["/tmp/bench/demo", "/tmp/bench/tax"])
texts = distill_inputs(domain_texts(mk, cfg.splits, descriptions=cfg.descriptions, pairs=cfg.pairs),
                       prefixes=cfg.prefixes)
if os.environ.get("PAIRS_ONLY"):
    texts = [t for t in texts if isinstance(t, tuple)]
t = time.perf_counter()
res = distill_encoder(texts, teacher, out, cfg, work_dir=Path("/tmp/diag/work") / run_fingerprint(texts, teacher, cfg)[:20])
print(out.name, sets, "distil", round(time.perf_counter() - t), "s", res.steps, "steps", len(texts), "texts", flush=True)
student = resolve_encoder(str(out), settings.cache_dir)
for root, m in (x.split(":") for x in os.environ.get("ROOTS", "/tmp/bench/tax:en,/tmp/bench/tax:es").split(",")):
    r = run_sequence(Path(root), [m], learner_config("demo"), encoder=student, limit=800)
    print(out.name, sets, root, m, json.dumps(r.metrics.as_dict()["matrix"]), flush=True)
