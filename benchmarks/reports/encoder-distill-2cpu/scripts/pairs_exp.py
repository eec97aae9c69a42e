import json, time
from pathlib import Path
import pandas as pd
from models.config import EncoderDistillConfig
from models.encoder_distill import distill_encoder
from models.encoders import resolve_encoder
from tasks.config import learner_config
from tasks.domain_text import domain_texts, load_marketplaces
from tasks.learner import run_sequence
from tasks.settings import get_settings
s = get_settings()
teacher = resolve_encoder("multilingual-e5-small", s.cache_dir)
mk = load_marketplaces(["/tmp/bench/demo", "/tmp/bench/tax"])
singles = domain_texts(mk, ["train", "valid"], descriptions=True)["text"].tolist()
pairs = pd.concat([m.split(sp)[["query", "product_title"]] for m in mk.values() for sp in ("train", "valid")]).drop_duplicates()
texts = singles + list(map(tuple, pairs.to_numpy().tolist()))
print(len(singles), "singles", len(pairs), "pairs", flush=True)
cfg = EncoderDistillConfig(train_word_embeddings=False, max_steps=200, checkpoint_steps=1000)
t = time.perf_counter()
r = distill_encoder(texts, teacher, Path("/tmp/bench/e5-pairs"), cfg, work_dir=Path("/tmp/bench/e5-pairs-work"))
print("distilled", r.steps, "steps in", round(time.perf_counter() - t), "s", flush=True)
student = resolve_encoder("/tmp/bench/e5-pairs", s.cache_dir)
t = time.perf_counter()
res = run_sequence(Path("/tmp/bench/demo"), ["en"], learner_config("demo"), encoder=student, limit=None)
print("pairs student en, full train split, demo preset:", json.dumps(res.metrics.as_dict()["matrix"]), "seconds", round(time.perf_counter() - t))
