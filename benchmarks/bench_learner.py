"""Cost of adding a marketplace with the attention-distillation learner.

Prints, for one encoder on one machine, in one run (timings are ratios of runs made side by side):
  1. trainable parameters of stages 2 + 3 versus full fine-tuning of the same encoder (goal <= 5%);
  2. stage-3 wall time with L_AD + teacher cache versus the same fusion training without L_AD
     (goal <= 1.15x), and without the cache for contrast;
  3. peak memory of stage 3 versus stage 2 on the same data (goal <= 1.3x): RSS on CPU, max allocated on GPU,
     each stage in a fresh child process;
  4. examples/s of every stage.
The model is at step t = 3 (two old adapters with a fusion as teacher, one new marketplace), on the demo data.

    python benchmarks/bench_learner.py --encoder multilingual-e5-small --train_pairs 256 --out bench-learner.json
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import HfArgumentParser

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.config import LearnerConfig  # noqa: E402
from models.pairs import Pairs, TextFormat  # noqa: E402
from models.relevance import RelevanceModel  # noqa: E402
from models.stages import distill_fusion, train_language_adapter  # noqa: E402
from tasks.config import build  # noqa: E402
from tasks.data import generate_demo, load_data_root  # noqa: E402
from tasks.learner import marketplace_splits, resolve_settings_encoder, translated_source  # noqa: E402
from tasks.settings import get_settings  # noqa: E402


@dataclass
class Args:
    encoder: str = "multilingual-e5-small"
    data: str = ""  # demo data root; generated into a temp dir when empty
    order: str = "en,es,fr"
    train_pairs: int = 256
    translated_pairs: int = 77  # 30% of train_pairs per old language
    batch_size: int = 32
    max_length: int = 48
    device: str = "cpu"
    fusion_micro_batch: int = 16  # the learner's default for stage 3 (0: whole batches)
    out: str = ""
    probe: str = ""  # internal: run one stage in this process and print its peak memory


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _setup(args: Args):
    settings = get_settings()
    encoder = resolve_settings_encoder(settings, args.encoder)
    root = Path(args.data) if args.data else Path(tempfile.mkdtemp()) / "demo"
    ids = args.order.split(",")
    if not args.data:
        generate_demo(root, languages=tuple(ids), pairs_per_marketplace=max(1000, 3 * args.train_pairs), seed=13)
    splits = [marketplace_splits(m) for m in load_data_root(root, ids)]
    model = RelevanceModel.create(encoder, text=TextFormat.of(_learner(args)), device=args.device)
    for old in splits[:-1]:
        model.add_marketplace(old.spec)
    model.fusion = model.add_fusion(model.adapter_names)  # the teacher Ψ_{t-1}
    new = splits[-1]
    train = new.train.head(args.train_pairs)
    valid = new.valid.head(64)
    translated = [Pairs(new.train.queries[-args.translated_pairs:], new.train.titles[-args.translated_pairs:],
                        new.train.labels[-args.translated_pairs:], source=translated_source(o.spec.language))
                  for o in splits[:-1]]
    return model, new.spec, train, valid, translated


def _learner(args: Args, **distill: object) -> LearnerConfig:
    """One epoch per stage at the measured batch size; the learner's own rates and other defaults."""
    stage = {"epochs": 1, "batch_size": args.batch_size, "patience": 5}
    return build(LearnerConfig, overrides={
        "adapter": stage, "fusion": {**stage, "micro_batch_size": args.fusion_micro_batch or None},
        "distill": distill, "max_length": args.max_length, "device": args.device})


def _fusion_run(args: Args, distill: dict, translated: bool, translated_as_task: bool = False) -> dict:
    """A fresh t = 3 model each time, so every variant starts from the same state.

    ``translated_as_task``: the translated pairs join D_t as ordinary labelled batches (cross-entropy), so the run
    does the same forward and backward work as the distilling run, only without L_AD and the teacher.
    """
    model, spec, train, valid, trans = _setup(args)
    model.add_marketplace(spec)
    if translated_as_task:
        train = Pairs([*train.queries, *(q for t in trans for q in t.queries)],
                      [*train.titles, *(x for t in trans for x in t.titles)],
                      [*train.labels, *(y for t in trans for y in t.labels)])
        trans, translated = [], False
    t0 = time.perf_counter()
    report = distill_fusion(model, train, valid, trans if translated else [], _learner(args, **distill))
    return {"wall_s": time.perf_counter() - t0, "train_s": report.fit.train_seconds,
            "examples_per_s": report.fit.examples_per_second, "trainable": report.fit.trainable_parameters,
            "total": report.total_parameters}


def probe(args: Args) -> dict:
    """One stage in this process; memory figures for the parent."""
    model, spec, train, valid, trans = _setup(args)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    base_rss = _current_rss_mb()
    if args.probe == "adapter":
        report = train_language_adapter(model, spec, train, valid, _learner(args))
    else:
        model.add_marketplace(spec)
        report = distill_fusion(model, train, valid, trans, _learner(args))
    out = {"stage": args.probe, "rss_before_mb": base_rss, "peak_rss_mb": _peak_rss_mb(),
           "examples_per_s": report.fit.examples_per_second, "trainable": report.fit.trainable_parameters,
           "total": report.total_parameters, "hidden": model.net.config.hidden_size}
    if args.device.startswith("cuda"):
        out["max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _child(args: Args, stage: str) -> dict:
    cmd = [sys.executable, __file__, *sum(([f"--{k}", str(v)] for k, v in asdict(args).items() if v != "" and k != "probe"), []),
           "--probe", stage]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(args: Args) -> dict:
    print(f"encoder {args.encoder} on {args.device} ({torch.get_num_threads()} threads); t = 3 of {args.order}; "
          f"{args.train_pairs} train pairs, {args.translated_pairs} translated per old language, "
          f"batch {args.batch_size}, max length {args.max_length}", flush=True)
    adapter = _child(args, "adapter")
    fusion = _child(args, "fusion")
    full = adapter["total"] + 2 * adapter["hidden"] + 2  # full fine-tuning trains the whole encoder (+ a linear head)
    added = adapter["trainable"] + fusion["trainable"]
    results = {"args": asdict(args), "adapter_stage": adapter, "fusion_stage": fusion,
               "trainable_fraction": added / full}
    print(f"trainable parameters: adapter {adapter['trainable']:,} + fusion {fusion['trainable']:,} = {added:,} "
          f"of {full:,} for full fine-tuning -> {100 * added / full:.2f}% (goal <= 5%)")

    ad_cached = _fusion_run(args, {"cache_teacher": True}, translated=True)
    no_ad = _fusion_run(args, {"weight": 0.0}, translated=True, translated_as_task=True)
    ad_uncached = _fusion_run(args, {"cache_teacher": False}, translated=True)
    variant_cached = _fusion_run(args, {"cache_teacher": True}, translated=False)
    variant_plain = _fusion_run(args, {"weight": 0.0}, translated=False)
    results["stage3"] = {"ad_cached": ad_cached, "no_ad": no_ad, "ad_uncached": ad_uncached,
                         "no_translation_ad_cached": variant_cached, "no_translation_no_ad": variant_plain}
    ratio = ad_cached["wall_s"] / no_ad["wall_s"]
    results["ad_overhead"] = ratio
    print(f"stage 3 wall time (same examples; without AD the translated pairs train with CE): AD + cache {ad_cached['wall_s']:.1f}s, "
          f"no AD {no_ad['wall_s']:.1f}s -> {ratio:.3f}x (goal <= 1.15x); AD without cache "
          f"{ad_uncached['wall_s']:.1f}s -> {ad_uncached['wall_s'] / no_ad['wall_s']:.3f}x")
    print(f"stage 3 without translations (paper §4.2): CE + AD + cache {variant_cached['wall_s']:.1f}s vs CE only "
          f"{variant_plain['wall_s']:.1f}s -> {variant_cached['wall_s'] / variant_plain['wall_s']:.3f}x")
    key = "max_allocated_mb" if "max_allocated_mb" in fusion else "peak_rss_mb"
    mem_ratio = fusion[key] / adapter[key]
    results["memory_ratio"] = mem_ratio
    print(f"peak memory ({key}): stage 2 {adapter[key]:.0f} MB, stage 3 {fusion[key]:.0f} MB -> {mem_ratio:.3f}x "
          f"(goal <= 1.3x); above the loaded model: stage 2 {adapter['peak_rss_mb'] - adapter['rss_before_mb']:.0f} MB, "
          f"stage 3 {fusion['peak_rss_mb'] - fusion['rss_before_mb']:.0f} MB")
    print(f"examples/s: stage 2 {adapter['examples_per_s']:.1f}, stage 3 (AD + cache) {fusion['examples_per_s']:.1f}, "
          f"stage 3 no AD {no_ad['examples_per_s']:.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
        print(f"written to {args.out}")
    return results


if __name__ == "__main__":
    (parsed,) = HfArgumentParser(Args).parse_args_into_dataclasses()
    if parsed.probe:
        print(json.dumps(probe(parsed)))
    else:
        main(parsed)
