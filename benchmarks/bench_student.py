"""The compact serving student (AMTSS, Chen et al.; issue 13): the figures the issue asks for.

On a data root in the contract format (``mcl data demo --out DIR``: <root>/<id>/{train,valid,test}.parquet and
marketplace.json) it runs the same plain functions the ``distill-student`` flow runs, without Prefect or MLflow:

  0. the relevance champion: ``mcl train-sequence``'s learner over ``--order`` then ``--new`` (the model after the
     order is the champion the first student learns from; the model after ``--new`` teaches the newcomer);
  1. the student's mean validation ROC-AUC against its teachers' mean (the paper: 83.62 vs 85.92 on XNLI);
  2. against a single-teacher baseline distilled from pooled data (X-LM-Tiny's role: one head, one teacher -- the
     champion's fusion --, every marketplace's training data pooled; the paper: 81.88), per marketplace;
  3. the change on every old marketplace when ``--new`` joins the student (head added, forced into A, training
     continued; the paper: old languages at 83.10 after Ko/Pl joined);
  4. scoring throughput in pairs/s at batch 32 on 2 threads, student against the fusion champion (goal >= 3x);
  5. model size in MB (weights as held, fp32).

The student keeps every marketplace's training data (†, like ``replay``). Settings: the student's are
``models.config.StudentConfig`` with ``--config``/``--set`` (as ``mcl student distill`` reads them); the champion's
are a learner preset with ``--learner-set``.

    python benchmarks/bench_student.py --data data/demo --order en,es,fr --new de --report student.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.config import StudentConfig  # noqa: E402
from models.encoders import resolve_encoder  # noqa: E402
from models.metrics import roc_auc  # noqa: E402
from models.pairs import Pairs  # noqa: E402
from models.relevance import MarketplaceSpec, RelevanceModel  # noqa: E402
from models.sequence import learn_sequence  # noqa: E402
from models.student import StudentModel, size_megabytes  # noqa: E402
from models.student_distill import StudentData, distill_student  # noqa: E402
from models.student_teachers import choose_teachers, relevance_candidates, soft_targets  # noqa: E402
from tasks.config import build, learner_config  # noqa: E402
from tasks.data import load_data_root  # noqa: E402
from tasks.learner import marketplace_splits, resolve_settings_encoder  # noqa: E402
from tasks.settings import get_settings  # noqa: E402

THROUGHPUT_GOAL, BATCH, THREADS, POOLED = 3.0, 32, 2, "pooled"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="data root (one folder per marketplace)")
    parser.add_argument("--order", default="en,es,fr", help="marketplaces the first student learns, in order")
    parser.add_argument("--new", default="de", help="marketplace that joins the student afterwards")
    parser.add_argument("--encoder", default=None, help="relevance models' encoder (default: the configured one)")
    parser.add_argument("--base-encoder", default=None, help="encoder the student copies layers from (default: "
                                                             "--encoder)")
    parser.add_argument("--config", default=None, help="TOML file of student settings")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="student setting key=value")
    parser.add_argument("--learner-preset", default="default", help="learner preset of the relevance champion")
    parser.add_argument("--learner-set", action="append", default=[], help="learner setting of the champion")
    parser.add_argument("--limit", type=int, default=None, help="rows per split and marketplace (quick runs)")
    parser.add_argument("--report", type=Path, default=None, help="write every figure as JSON here")
    return parser.parse_args(argv)


def teachers_for(model: RelevanceModel, splits: dict, ids: list[str], cfg: StudentConfig) -> list[StudentData]:
    """Each marketplace's best candidate of ``model`` (fusion or adapter-only) and its cached soft targets."""
    candidates = relevance_candidates(model, "champion")
    choice = choose_teachers(candidates, {m: splits[m].valid for m in ids})
    return [StudentData(splits[m].spec, splits[m].train, splits[m].valid,
                        soft_targets(candidates, choice.weights(m, cfg.teacher_weights, cfg.weight_temperature), m,
                                     splits[m].train), choice.teacher_auc(m)) for m in ids]


def pooled_baseline(model: RelevanceModel, splits: dict, ids: list[str], cfg: StudentConfig, base, text) -> dict:
    """One head, one teacher (the champion's fusion), every marketplace's data pooled: X-LM-Tiny's role."""
    def pool(split: str) -> Pairs:
        parts = [getattr(splits[m], split) for m in ids]
        return Pairs([q for p in parts for q in p.queries], [t for p in parts for t in p.titles],
                     [y for p in parts for y in p.labels])

    train, valid = pool("train"), pool("valid")
    fusion = relevance_candidates(model, "champion")[0]
    teacher_auc = roc_auc(valid.labels, fusion.score(POOLED, valid))
    student = new_student(base, cfg, text, [MarketplaceSpec(POOLED, "mul")])
    data = [StudentData(MarketplaceSpec(POOLED, "mul"), train, valid, soft_targets([fusion], {fusion.name: 1.0},
                                                                                    POOLED, train), teacher_auc)]
    distill_student(student, data, cfg.model_copy(update={"top_k": 1}))
    return {m: roc_auc(splits[m].valid.labels, student.predict_proba(POOLED, splits[m].valid)) for m in ids}


def new_student(base, cfg: StudentConfig, text, specs: list[MarketplaceSpec]) -> StudentModel:
    student = StudentModel.create(base.path, name=base.name, checksum=base.checksum, layers=cfg.layers, text=text,
                                  layer_choice=cfg.layer_choice, device=cfg.device)
    for spec in specs:
        student.add_marketplace(spec)
    return student


def valid_aucs(student: StudentModel, data: list[StudentData]) -> dict[str, float]:
    return {d.spec.id: roc_auc(d.valid.labels, student.predict_proba(d.spec.id, d.valid)) for d in data}


def pairs_per_second(score, pairs: Pairs, repeats: int = 2) -> float:
    """Median pairs/s of ``score(pairs)`` at batch 32 on 2 threads (the thread count is restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        score(pairs.head(BATCH))  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            score(pairs)
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return len(pairs) / float(np.median(times))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    settings = get_settings()
    order = [x.strip() for x in args.order.split(",") if x.strip()]
    cfg = build(StudentConfig, file=args.config, overrides=args.sets)
    learner = learner_config(args.learner_preset, overrides=args.learner_set)
    encoder = resolve_settings_encoder(settings, args.encoder)
    base = resolve_encoder(args.base_encoder, settings.cache_dir) if args.base_encoder else encoder
    splits = {m.id: marketplace_splits(m) for m in load_data_root(args.data, [*order, args.new])}
    if args.limit:
        splits = {k: v.head(args.limit) for k, v in splits.items()}
    work = Path(tempfile.mkdtemp(prefix="bench-student-"))

    started = time.perf_counter()
    saved = {}

    def keep(t: int, model: RelevanceModel, scores: dict[str, float]) -> None:
        if t == len(order) - 1:
            saved["before"] = model.save(work / "champion-before")

    sequence = learn_sequence(encoder, list(splits.values()), learner, on_step=keep)
    champion_after = sequence.model
    champion = RelevanceModel.load(saved["before"], encoder, device=learner.device)
    champion_seconds = time.perf_counter() - started
    text = champion.text

    started = time.perf_counter()
    data = teachers_for(champion, splits, order, cfg)
    student = new_student(base, cfg, text, [splits[m].spec for m in order])
    report = distill_student(student, data, cfg)
    student_seconds = time.perf_counter() - started
    student_aucs = valid_aucs(student, data)
    teacher_aucs = {d.spec.id: d.teacher_auc for d in data}
    baseline = pooled_baseline(champion, splits, order, cfg, base, text)

    student.save(work / "student-before")
    all_ids = [*order, args.new]
    grown = StudentModel.load(work / "student-before", device=cfg.device)
    grown.add_marketplace(splits[args.new].spec)
    grown_data = teachers_for(champion_after, splits, all_ids, cfg)
    grown_report = distill_student(grown, grown_data, cfg, forced=[args.new])
    grown_aucs = valid_aucs(grown, grown_data)

    tests = Pairs([q for m in order for q in splits[m].test.queries], [t for m in order for t in splits[m].test.titles],
                  [y for m in order for y in splits[m].test.labels])
    student_speed = pairs_per_second(lambda p: student.predict_proba(order[0], p, batch_size=BATCH), tests)
    champion_speed = pairs_per_second(lambda p: champion.predict_proba(p, batch_size=BATCH), tests)
    sizes = {"student_mb": size_megabytes(student), "champion_mb": size_megabytes(champion.net)}

    mean = lambda d: float(np.mean(list(d.values())))  # noqa: E731
    figures = {
        "student_valid_auc": student_aucs, "teacher_valid_auc": teacher_aucs, "pooled_baseline_valid_auc": baseline,
        "student_mean": mean(student_aucs), "teacher_mean": mean(teacher_aucs), "baseline_mean": mean(baseline),
        "stop_reason": report.stop_reason, "epochs_run": report.fit.epochs_run,
        "after_new": grown_aucs, "teacher_after_new": {d.spec.id: d.teacher_auc for d in grown_data},
        "old_change_after_new": {m: grown_aucs[m] - student_aucs[m] for m in order},
        "new_stop_reason": grown_report.stop_reason,
        "pairs_per_second": {"student": student_speed, "champion": champion_speed,
                             "ratio": student_speed / champion_speed, "goal": THROUGHPUT_GOAL},
        **sizes, "champion_seconds": champion_seconds, "student_seconds": student_seconds,
        "student_layers": student.base["copied"], "config": cfg.model_dump(), "keeps_old_data": True,
    }
    print_figures(figures, order, args.new)
    if args.report:
        args.report.write_text(json.dumps(figures, indent=2, default=float))
    return figures


def print_figures(f: dict, order: list[str], new: str) -> None:
    print(f"\nstudent († keeps old data), layers {f['student_layers']}: {f['stop_reason']} ({f['epochs_run']} epochs)")
    print(f"{'marketplace':12} {'teacher':>8} {'student':>8} {'pooled':>8} {'after ' + new:>10}")
    for m in order:
        print(f"{m:12} {f['teacher_valid_auc'][m]:8.4f} {f['student_valid_auc'][m]:8.4f} "
              f"{f['pooled_baseline_valid_auc'][m]:8.4f} {f['after_new'][m]:10.4f} "
              f"({f['old_change_after_new'][m]:+.4f})")
    print(f"{new:12} {f['teacher_after_new'][new]:8.4f} {'':8} {'':8} {f['after_new'][new]:10.4f}")
    print(f"{'mean':12} {f['teacher_mean']:8.4f} {f['student_mean']:8.4f} {f['baseline_mean']:8.4f}")
    speed = f["pairs_per_second"]
    verdict = "meets" if speed["ratio"] >= speed["goal"] else "misses"
    print(f"throughput, batch {BATCH}, {THREADS} threads: student {speed['student']:.0f} pairs/s, champion "
          f"{speed['champion']:.0f} pairs/s: {speed['ratio']:.2f}x ({verdict} the {speed['goal']:.0f}x goal)")
    print(f"size: student {f['student_mb']:.1f} MB, champion {f['champion_mb']:.1f} MB (fp32 weights)")


if __name__ == "__main__":
    main()
