import json, time
from pathlib import Path
from models.encoders import resolve_encoder
from tasks.config import learner_config
from tasks.learner import run_sequence
from tasks.settings import get_settings
s = get_settings()
student = resolve_encoder("/tmp/bench/e5-shop", s.cache_dir)
t = time.perf_counter()
r = run_sequence(Path("/tmp/bench/demo"), ["en"], learner_config("demo"), encoder=student, limit=None)
print("student en, full train split, demo preset:", json.dumps(r.metrics.as_dict()["matrix"]), "seconds", round(time.perf_counter() - t))
