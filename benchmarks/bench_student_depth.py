"""How deep must the serving student be, and which of the base encoder's layers should it keep? (issue 13)

A student is a few layers copied from the base encoder and fine-tuned; what it can learn from a few hundred pairs
depends on which layers it keeps. For each ``LAYERS:CHOICE`` of ``--grid`` (``bottom``: the first LAYERS layers;
``evenly``: LAYERS evenly spaced from the first to the last), one marketplace's labels train a fresh student with one
head through the student's own loop (``distill_student`` with λ = 0, so no teacher is needed) for ``train.epochs``
epochs; the script prints its validation ROC-AUC after every epoch and its scoring throughput (pairs/s at batch 32
on 2 threads) beside the full encoder's, the cost side of the choice. Settings are ``StudentConfig``'s, with
``--set`` as ``mcl student distill`` reads them.

    python benchmarks/bench_student_depth.py --data DEMO --marketplace en --limit 400 --report depth.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_student import pairs_per_second  # noqa: E402

from models.config import StudentConfig  # noqa: E402
from models.pairs import TextFormat  # noqa: E402
from models.student import StudentModel  # noqa: E402
from models.student_distill import StudentData, distill_student  # noqa: E402
from tasks.config import build, learner_config  # noqa: E402
from tasks.data import load_data_root  # noqa: E402
from tasks.learner import marketplace_splits, resolve_settings_encoder  # noqa: E402
from tasks.settings import get_settings  # noqa: E402

DEFAULT_GRID = "4:evenly,4:bottom,6:evenly,6:bottom,8:evenly,8:bottom,10:bottom,12:bottom"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="data root (one folder per marketplace)")
    parser.add_argument("--marketplace", default="en", help="the marketplace whose labels train each student")
    parser.add_argument("--grid", default=DEFAULT_GRID, help="LAYERS:CHOICE entries, comma-separated")
    parser.add_argument("--set", dest="sets", action="append", default=["train.epochs=3"],
                        help="student setting key=value (default here: train.epochs=3)")
    parser.add_argument("--limit", type=int, default=None, help="rows per split (quick runs)")
    parser.add_argument("--report", type=Path, default=None, help="write every figure as JSON here")
    return parser.parse_args(argv)


def grid(text: str) -> list[list[str]]:
    """Each entry's overrides: ``layers=N`` and, when the entry names one, ``layer_choice=CHOICE`` (otherwise the
    configured choice applies)."""
    entries = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        layers, _, choice = item.partition(":")
        entries.append([f"layers={int(layers)}", *([f"layer_choice={choice}"] if choice else [])])
    return entries


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    settings = get_settings()
    encoder = resolve_settings_encoder(settings, None)
    text = TextFormat.of(learner_config("default"))
    (marketplace,) = load_data_root(args.data, [args.marketplace])
    split = marketplace_splits(marketplace)
    if args.limit:
        split = split.head(args.limit)
    # λ = 0: the labels alone; the "teacher" ROC-AUC of 1 keeps ε from ending a run early.
    data = [StudentData(split.spec, split.train, split.valid, np.asarray(split.train.labels, np.float32), 1.0)]
    rows = []
    for entry in grid(args.grid):
        cfg = build(StudentConfig, overrides=[*args.sets, *entry, "weight=0", "top_k=1", "device=cpu"])
        layers, choice = cfg.layers, cfg.layer_choice
        student = StudentModel.create(encoder.path, name=encoder.name, checksum=encoder.checksum, layers=layers,
                                      text=text, layer_choice=choice, device=cfg.device)
        student.add_marketplace(split.spec)
        started = time.perf_counter()
        report = distill_student(student, data, cfg)
        seconds = time.perf_counter() - started
        curve = [e["student_auc"][split.spec.id] for e in report.epochs[1:]]
        speed = pairs_per_second(lambda p: student.predict_proba(split.spec.id, p, batch_size=32), split.test)
        rows.append({"layers": layers, "choice": choice, "copied": student.base["copied"], "valid_auc": curve,
                     "best": max(curve), "pairs_per_second": speed, "train_seconds": seconds})
        print(f"{layers:2d} {choice:7} {str(student.base['copied']):34} valid " +
              " ".join(f"{a:.4f}" for a in curve) + f"  best {max(curve):.4f}  {speed:6.0f} pairs/s", flush=True)
    deepest = max(rows, key=lambda r: r["layers"])
    print(f"\nthroughput relative to the deepest student ({deepest['layers']} layers): " +
          ", ".join(f"{r['layers']}:{r['choice']} {r['pairs_per_second'] / deepest['pairs_per_second']:.2f}x"
                    for r in rows))
    if args.report:
        args.report.write_text(json.dumps({"marketplace": args.marketplace, "limit": args.limit, "sets": args.sets,
                                           "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
