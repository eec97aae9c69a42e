"""`bench_encoder.py --train-sequence` for an already distilled student: the paper's learner on the demo data
(en, es, fr; demo preset, 800 rows per split) over teacher and student, without distilling again.

    python benchmarks/reports/encoder-distill-2cpu/scripts/sequence_default.py /tmp/bench/e5-default-sim
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # benchmarks/

from bench_encoder import _sequences  # noqa: E402

from models.encoders import resolve_encoder  # noqa: E402
from tasks.learner import resolve_settings_encoder  # noqa: E402
from tasks.settings import get_settings  # noqa: E402

settings = get_settings()
args = argparse.Namespace(train_sequence="en,es,fr", sequence_preset="demo", sequence_set=[],
                          sequence_data=["/tmp/bench/demo"], data=["/tmp/bench/demo"], limit=800)
_sequences(args, resolve_settings_encoder(settings, None), resolve_encoder(sys.argv[1], settings.cache_dir))
