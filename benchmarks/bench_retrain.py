"""Asynchronous convergence against the joint baselines (issue 14): the figures the issue asks for.

The same plain functions ``mcl benchmark --retraining`` runs (``tasks.benchmark.retraining``), without MLflow: per
seed a champion on old rows of every marketplace, then uniform weighting, DWA, GradNorm and async-kd retrain its
fusion and head on fresh rows of different sizes. Prints the paper-shaped table (change in test ROC-AUC over
uniform weighting's final checkpoint, per marketplace and on average, with steps) and, for async-kd, how far each
marketplace's final validation ROC-AUC ends below its best (the issue's goal: within 0.005), then writes the report.

    python benchmarks/bench_retrain.py --data data/demo --order en,es,fr --sizes 1200,400,200 --out retrain-demo \\
        --set learner.retrain.eval_every=50
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.benchmark import BenchmarkData, benchmark_config, retraining  # noqa: E402
from tasks.config import BENCHMARK_PRESET  # noqa: E402
from tasks.learner import resolve_settings_encoder  # noqa: E402
from tasks.settings import get_settings  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="data root (one folder per marketplace)")
    parser.add_argument("--order", default="en,es,fr", help="the marketplaces refreshed together")
    parser.add_argument("--sizes", default="1200,400,200", help="fresh training rows per marketplace of --order")
    parser.add_argument("--methods", default=",".join(retraining.RETRAIN_METHODS), help="retraining methods to compare")
    parser.add_argument("--out", type=Path, required=True, help="report folder (retraining.jsonl is resumable)")
    parser.add_argument("--preset", default=None, help="benchmark preset for the learner (default: cpu)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="a benchmark setting, repeatable")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    order = args.order.split(",")
    sizes = dict(zip(order, (int(n) for n in args.sizes.split(",")), strict=True))
    settings = get_settings()
    cfg = benchmark_config(order, (), preset=args.preset or BENCHMARK_PRESET, overrides=args.sets,
                           encoder=settings.encoder)
    data = BenchmarkData.load(args.data, cfg.model_copy(update={"max_train_pairs": 0}))
    records = retraining.run_retraining(cfg, data, sizes, args.methods.split(","), args.out,
                             encoder=resolve_settings_encoder(settings, None))
    print(retraining.retraining_table(records).to_string())
    for r in records:
        gaps = {m: round(r["best_valid"][m] - r["final_valid"][m], 4) for m in r["final_valid"]}
        print(f"seed {r['seed']} {r['method']}: {r['steps']} steps ({r['stopped']}), {r['seconds']:.0f} s; "
              f"best - final validation ROC-AUC {gaps}; switch steps {r['switch_step']}")
    print(f"report: {retraining.write_retraining_report(args.out, records, cfg, sizes)}")


if __name__ == "__main__":
    main()
