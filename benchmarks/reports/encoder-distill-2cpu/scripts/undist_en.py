import json, time
from pathlib import Path
from models.encoder_distill import build_student
from models.encoders import resolve_encoder
from tasks.config import learner_config
from tasks.learner import run_sequence
from tasks.settings import get_settings
s = get_settings()
teacher = resolve_encoder("multilingual-e5-small", s.cache_dir)
path = build_student(teacher.path, Path("/tmp/bench/e5-undistilled"), [0, 2, 4, 7, 9, 11])
student = resolve_encoder(str(path), s.cache_dir)
t = time.perf_counter()
res = run_sequence(Path("/tmp/bench/demo"), ["en"], learner_config("demo"), encoder=student, limit=None)
print("undistilled en, full train split, demo preset:", json.dumps(res.metrics.as_dict()["matrix"]), "seconds", round(time.perf_counter() - t))
