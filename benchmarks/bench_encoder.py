"""Domain-specific distillation of the base encoder (Howell et al.; issue 12): the figures the issue asks for.

Distils the teacher on the deduplicated text of every marketplace under the data roots (the same plain functions
the ``adapt-encoder`` flow runs, without Prefect or MLflow, so the wall time is the distillation's), then prints:
  1. distillation wall time (teacher and student loading, tokenising and training), steps and texts;
  2. per marketplace, the frozen-encoder probe ROC-AUC of the student, the teacher and the undistilled 6-layer copy
     (mean ± std over seeds) with the KS p-values of the student's seeds against each, and the goals: the student
     at or above the undistilled copy on every marketplace, within 0.01 of the teacher on average; then the
     adapter view (2b): one adapter and head per marketplace on each frozen encoder, trained as an arrival trains
     them (``--sequence-preset``/``--sequence-set``, ``adapter_rows`` pairs; ``--set adapter_rows=0`` skips it);
  3. latency per (query, title) pair on one CPU thread at batch 1 and 32, student over teacher (goal <= 0.65x;
     the paper: 189 / 305 ms = 0.62x);
  4. with ``--train-sequence en,es,fr``: ``mcl train-sequence``'s R matrix on every root holding those
     marketplaces (``--sequence-data`` narrows the roots), on the teacher and on the student side by side, with
     the seconds per arrival for each.

Settings are the distillation's defaults (``models.config.EncoderDistillConfig``) with ``--preset``/``--config``/
``--set`` on top, exactly as ``mcl encoder distill`` reads them; ``--out`` must be a new folder (a folder holding
this very distillation is reused, and its wall time would then be the load time).

    python benchmarks/bench_encoder.py --data /tmp/bench/demo --data /tmp/bench/tax --out /tmp/bench/e5-shop \\
        --preset cpu --report /tmp/bench/encoder.json --train-sequence en,es,fr --sequence-data /tmp/bench/demo \\
        --sequence-preset demo
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

from models.config import EncoderDistillConfig  # noqa: E402
from models.encoder_distill import distill_encoder, run_fingerprint  # noqa: E402
from models.encoders import resolve_encoder  # noqa: E402
from tasks.config import ENCODER_PRESETS, build, learner_config  # noqa: E402
from tasks.domain_text import distill_inputs, domain_texts, load_marketplaces  # noqa: E402
from tasks.encoder_evaluation import KINDS, evaluate_encoders  # noqa: E402
from tasks.learner import resolve_settings_encoder, run_sequence  # noqa: E402
from tasks.settings import get_settings  # noqa: E402

UNDISTILLED_MARGIN, TEACHER_MARGIN, LATENCY_GOAL = 0.0, 0.01, 0.65


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", required=True, help="data root (repeatable)")
    parser.add_argument("--out", required=True, type=Path, help="new folder for the distilled encoder")
    parser.add_argument("--teacher", default=None, help="encoder to distil (default: the configured encoder)")
    parser.add_argument("--preset", default=None, help="distillation preset (tasks/presets/encoder/; cpu: ~15 min on "
                                                       "2 cores)")
    parser.add_argument("--config", default=None, help="TOML file of distillation settings")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="distillation setting key=value")
    parser.add_argument("--report", type=Path, default=None, help="write every figure as JSON here")
    parser.add_argument("--train-sequence", default=None, metavar="ORDER",
                        help="also run train-sequence in this order (e.g. en,es,fr) on teacher and student")
    parser.add_argument("--sequence-data", action="append", default=None,
                        help="data root for --train-sequence (repeatable; default: every --data root)")
    parser.add_argument("--sequence-preset", default="default",
                        help="learner preset for --train-sequence and the adapter view")
    parser.add_argument("--sequence-set", action="append", default=[],
                        help="learner setting for --train-sequence and the adapter view")
    parser.add_argument("--limit", type=int, default=None, help="rows per split for --train-sequence")
    return parser.parse_args(argv)


def _sequences(args: argparse.Namespace, teacher, student) -> dict:
    """R[t][k] and seconds per arrival of the paper's learner on teacher and student, per root with the order."""
    order = [x.strip() for x in args.train_sequence.split(",") if x.strip()]
    learner = learner_config(args.sequence_preset, overrides=args.sequence_set)
    out = {}
    for root in args.sequence_data or args.data:
        if not all((Path(root) / m).is_dir() for m in order):
            print(f"train-sequence: {root} lacks one of {order}; skipped")
            continue
        runs = {}
        for kind, ref in (("teacher", teacher), ("student", student)):
            result = run_sequence(Path(root), order, learner, encoder=ref, limit=args.limit)
            runs[kind] = {"metrics": result.metrics.as_dict(), "arrival_seconds": result.arrival_seconds}
        out[root] = runs
        print(f"\ntrain-sequence on {root} ({','.join(order)}), R[t][k] teacher | student:")
        for t, mid in enumerate(order):
            cells = [" ".join("      " if v is None else f"{v:.4f}" for v in runs[k]["metrics"]["matrix"][t])
                     for k in ("teacher", "student")]
            print(f"  after {mid:6s} {cells[0]}  |  {cells[1]}")
        for kind in ("teacher", "student"):
            m = runs[kind]["metrics"]
            print(f"  {kind:8s} average {m['average']:.4f}  BWT {m['bwt']:+.4f}  forgetting {m['forgetting']:.4f}  "
                  "seconds per arrival " + " ".join(f"{s:.1f}" for s in runs[kind]["arrival_seconds"]))
    return out


def main(args: argparse.Namespace) -> dict:
    settings = get_settings()
    cfg = build(EncoderDistillConfig, preset=args.preset, kind=ENCODER_PRESETS, file=args.config, overrides=args.sets)
    teacher = resolve_settings_encoder(settings, args.teacher)
    marketplaces = load_marketplaces(args.data)
    texts = distill_inputs(domain_texts(marketplaces, cfg.splits, descriptions=cfg.descriptions, pairs=cfg.pairs),
                           prefixes=cfg.prefixes)
    key = run_fingerprint(texts, teacher, cfg)
    print(f"teacher {teacher.name}; {len(texts):,} distinct texts from {', '.join(marketplaces)}; "
          f"settings: {', '.join(([f'preset {args.preset}'] if args.preset else []) + args.sets) or 'defaults'}")

    started = time.perf_counter()
    result = distill_encoder(texts, teacher, args.out, cfg, work_dir=settings.cache_dir / "steps" / "bench-encoder" /
                             key[:20])
    wall = time.perf_counter() - started
    print(f"\n1. distillation: {wall:.0f} s wall ({wall / 60:.1f} min; training loop {result.seconds:.0f} s), "
          f"{result.steps} steps, {result.epochs:g} epochs, layers {result.layers} (trained: student layers "
          f"{result.trained}, matched to teacher layers {result.matched_layers}), losses "
          f"{', '.join(result.losses)}"
          + (" -- REUSED an existing output folder: use a new --out to time it" if result.reused else ""))

    student = resolve_encoder(str(args.out), settings.cache_dir)
    learner = learner_config(args.sequence_preset, overrides=args.sequence_set)
    ev = evaluate_encoders(student.path, teacher, result.layers, marketplaces, cfg, learner,
                           work_dir=settings.cache_dir / "steps" / "bench-encoder" / f"eval-{key[:20]}")
    table = ev.table()
    print(f"\n2. frozen-encoder probes, test ROC-AUC, mean ± std over {cfg.eval_seeds} seeds (KS p: student vs other)")
    print(f"  {'marketplace':12s} {'student':>15s} {'teacher':>15s} {'undistilled':>15s}  vs teacher  vs undist.  "
          "KS p t / u")
    for row in table.to_dict(orient="records"):
        ks = "" if np.isnan(row["ks_p_teacher"]) else f"{row['ks_p_teacher']:.3f} / {row['ks_p_undistilled']:.3f}"
        print(f"  {row['marketplace']:12s} " + " ".join(f"{row[f'{k}_mean']:.4f} ± {row[f'{k}_std']:.4f}"
                                                        for k in KINDS)
              + f"   {row['vs_teacher']:+.4f}     {row['vs_undistilled']:+.4f}   {ks}")
    mean = table.iloc[-1]
    above = all(ev.mean("student", m) >= ev.mean("undistilled", m) + UNDISTILLED_MARGIN for m in ev.marketplaces)
    close = mean["student_mean"] >= mean["teacher_mean"] - TEACHER_MARGIN
    print(f"  goal: at or above the undistilled copy on every marketplace: {'yes' if above else 'NO'}; within "
          f"{TEACHER_MARGIN} of the teacher on average: {'yes' if close else 'NO'} ({mean['vs_teacher']:+.4f})")
    if ev.adapter_aucs:
        print(f"\n2b. adapter view, test ROC-AUC: one adapter and head per marketplace on each frozen encoder "
              f"({cfg.adapter_rows} training pairs, learner preset {args.sequence_preset})")
        print(f"  {'marketplace':12s} {'student':>9s} {'teacher':>9s} {'undist.':>9s}  vs teacher  vs undist.")
        for row in table.to_dict(orient="records"):
            print(f"  {row['marketplace']:12s} " + " ".join(f"{row[f'{k}_adapter']:9.4f}"
                                                            for k in KINDS)
                  + f"   {row['adapter_vs_teacher']:+.4f}     {row['adapter_vs_undistilled']:+.4f}")

    print("\n3. latency per pair, one CPU thread:")
    for size in cfg.latency_batch_sizes:
        ratio = ev.latency_ratio(size)
        print(f"  batch {size:3d}: student {ev.latency_ms['student'][size]:.2f} ms, teacher "
              f"{ev.latency_ms['teacher'][size]:.2f} ms -> {ratio:.3f}x (goal <= {LATENCY_GOAL}x)")
    print(f"  parameters: student {ev.parameters['student']:,} vs teacher {ev.parameters['teacher']:,} "
          f"({ev.parameters['student'] / ev.parameters['teacher']:.2f}x)")

    report = {"teacher": teacher.name, "texts": len(texts), "settings": cfg.model_dump(), "wall_seconds": wall,
              "distill": {k: v for k, v in result.as_dict().items() if k != "history"},
              "loss_first_last": [result.history[0], result.history[-1]] if result.history else [],
              "evaluation": ev.as_dict(), "table": table.to_dict(orient="records"),
              "goals": {"above_undistilled_everywhere": above, "within_teacher_margin": bool(close),
                        **{f"latency_ratio_b{s}": ev.latency_ratio(s) for s in cfg.latency_batch_sizes}}}
    if args.train_sequence:
        report["train_sequence"] = _sequences(args, teacher, student)
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2, default=str))
        print(f"\nwritten to {args.report}")
    return report


if __name__ == "__main__":
    main(parse_args())
