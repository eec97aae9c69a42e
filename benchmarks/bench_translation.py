"""Stage 1 (translate-subset) throughput, and what the translated fraction costs in stages 1 + 3.

Prints, for this machine, in one run (timings are comparable only within a run):
  1. sentences/s of every backend on the same Spanish inputs (es -> en): Apertium, Opus-MT through
     transformers (fp32 on CPU, fp16 on GPU), CTranslate2 int8 and float32. The neural backends share
     one random Marian model of Opus-MT's size (d_model 512, 6 + 6 layers, 58,101-token vocabulary):
     no Opus-MT weights can be downloaded here, and speed does not depend on the weights' values except
     through output length, which is the same for every backend (each sentence decodes to its own
     length budget; a random model rarely stops earlier). Goal: CTranslate2 int8 >= 3x transformers fp32.
  2. the axis of the paper's Figure 4: translated fraction vs wall time of stage 1 (translate D_t's
     subset into every older language) + stage 3 (attention-distill fusion on D_t + T_1..T_{t-1}), at
     t = 3 of en, es, fr on the demo data, for fraction 0 (no translation, paper §4.2) up to 1.

    python benchmarks/bench_translation.py --sentences 128 --train_pairs 256 --out bench-translation.json
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from transformers import HfArgumentParser

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.config import LearnerConfig  # noqa: E402
from models.pairs import Pairs, TextFormat  # noqa: E402
from models.relevance import RelevanceModel  # noqa: E402
from models.stages import distill_fusion  # noqa: E402
from tasks.config import build  # noqa: E402
from tasks.data import generate_demo, load_data_root  # noqa: E402
from tasks.learner import marketplace_splits, resolve_settings_encoder, to_pairs, translated_source  # noqa: E402
from tasks.settings import get_settings  # noqa: E402
from tasks.translation import (  # noqa: E402
    ApertiumBackend,
    CTranslate2Backend,
    OpusMTBackend,
    Pair,
    TranslationBackend,
    convert_opus_mt,
    translate_subset,
)
from tasks.translation.tiny_marian import build_tiny_marian  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
ES_EN = Pair("es", "en")


@dataclass
class Args:
    sentences: int = 128  # inputs per neural backend (Apertium gets all of them too)
    batch_size: int = 32
    device: str = "cpu"
    threads: int = 0  # 0: the libraries' default; 1 is steadier on a machine shared with other jobs
    work: str = ""  # where the random Marian model and its conversion go; a temp dir when empty
    encoder: str = "multilingual-e5-small"
    train_pairs: int = 256
    max_length: int = 48
    fractions: str = "0,0.1,0.3,0.5,1.0"
    stage1_backend: str = "apertium"  # or ctranslate2 / opus-mt: the random Marian model serves fr-en and fr-es
    skip_throughput: bool = False
    skip_fraction: bool = False
    out: str = ""


def spanish_inputs(n: int) -> list[str]:
    """Real Spanish e-commerce text (ESCI sample) when beside the checkout, else the demo marketplace."""
    sample = SHARED / "esci-sample" / "esci_es_muestra_train.csv"
    if sample.is_file():
        table = pd.read_csv(sample)
    else:
        root = Path(tempfile.mkdtemp()) / "demo"
        generate_demo(root, languages=("es",), pairs_per_marketplace=max(200, n), seed=13)
        table = pd.read_parquet(root / "es" / "train.parquet")
    texts = list(dict.fromkeys([*table["query"].astype(str), *table["product_title"].astype(str)]))
    return texts[:n]


def realistic_marian(work: Path, corpus: list[str]) -> Path:
    folder = work / "opus-mt-size-random"
    if not (folder / "config.json").is_file():
        taxonomy = SHARED / "google-product-taxonomy" / "taxonomy-with-ids.es-ES.txt"
        extra = taxonomy.read_text(encoding="utf-8").splitlines() if taxonomy.is_file() else []
        build_tiny_marian(folder, corpus + extra, d_model=512, layers=6, heads=8, ffn_dim=2048, spm_vocab_size=8000,
                          vocab_size=58101, max_positions=512, init_std=0.02)
    return folder


def converted_marian(work: Path, marian: Path) -> Path:
    converted = work / "opus-mt-size-random-ct2"
    if not (converted / "model.bin").is_file():
        convert_opus_mt(marian, converted)
    return converted


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (Apertium runs in one): on a shared machine
    wall time measures the neighbours as much as the code, CPU time much less."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Stopwatch:
    def __enter__(self) -> Stopwatch:
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, cpu_seconds() - self.cpu


def _throughput(backend: TranslationBackend, texts: list[str]) -> dict:
    backend.prepare(ES_EN)
    backend.translate(texts[:2], ES_EN)  # warm-up: lazy kernels, thread pools
    with Stopwatch() as watch:
        out = backend.translate(texts, ES_EN)
    return {"sentences": len(texts), "seconds": watch.wall, "cpu_seconds": watch.cpu,
            "sentences_per_s": len(texts) / watch.wall, "sentences_per_cpu_s": len(texts) / watch.cpu,
            "truncated": sum(out.truncated)}


def throughput(args: Args, work: Path) -> dict:
    texts = spanish_inputs(args.sentences)
    model = realistic_marian(work, texts)
    converted = converted_marian(work, model)
    threads = args.threads or None
    results: dict[str, dict] = {}
    apertium = ApertiumBackend()
    if ES_EN in apertium.pairs():
        results["apertium"] = _throughput(apertium, texts)
    results["opus-mt (transformers fp32)" if args.device == "cpu" else "opus-mt (transformers fp16)"] = _throughput(
        OpusMTBackend({ES_EN: model}, device=args.device, batch_size=args.batch_size, use_hub_cache=False,
                      threads=threads), texts)
    for compute in ("int8", "float32") if args.device == "cpu" else ("float16", "int8_float16"):
        results[f"ctranslate2 {compute}"] = _throughput(
            CTranslate2Backend({ES_EN: converted}, device=args.device, compute_type=compute, batch_size=args.batch_size,
                               intra_threads=args.threads, scan_installed=False), texts)
    for name, r in results.items():
        print(f"  {name:30s} {r['sentences_per_s']:8.1f} sentences/s  {r['sentences_per_cpu_s']:8.1f} per CPU-second  "
              f"({r['sentences']} in {r['seconds']:.1f} s, {r['cpu_seconds']:.1f} CPU-s)")
    neural = [k for k in results if k.startswith("opus-mt")][0]
    fastest_ct2 = "ctranslate2 int8" if args.device == "cpu" else "ctranslate2 float16"
    ratio = results[fastest_ct2]["sentences_per_s"] / results[neural]["sentences_per_s"]
    cpu_ratio = results[fastest_ct2]["sentences_per_cpu_s"] / results[neural]["sentences_per_cpu_s"]
    print(f"  {fastest_ct2} vs {neural}: {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU time (goal >= 3x)")
    return {"inputs": len(texts), "backends": results, "ct2_speedup": ratio, "ct2_speedup_cpu": cpu_ratio}


def _t3_model(encoder, splits, cfg: LearnerConfig) -> RelevanceModel:
    """A t = 3 model: two old adapters under a fusion (the teacher), the new marketplace's adapter added."""
    model = RelevanceModel.create(encoder, text=TextFormat.of(cfg), device=cfg.device)
    for old in splits[:-1]:
        model.add_marketplace(old.spec)
    model.fusion = model.add_fusion(model.adapter_names)
    model.add_marketplace(splits[-1].spec)
    return model


def fraction_sweep(args: Args, work: Path) -> list[dict]:
    settings = get_settings()
    encoder = resolve_settings_encoder(settings, args.encoder)
    root = work / "demo"
    if not root.is_dir():
        generate_demo(root, languages=("en", "es", "fr"), pairs_per_marketplace=max(1000, 3 * args.train_pairs), seed=13)
    markets = load_data_root(root, ["en", "es", "fr"])
    splits = [marketplace_splits(m) for m in markets]
    new, old_languages = markets[-1], [m.language for m in markets[:-1]]
    train_table = new.train.head(args.train_pairs)
    train = to_pairs(train_table)
    valid = splits[-1].valid.head(64)
    models = {}
    if args.stage1_backend != "apertium":
        marian = realistic_marian(work, [])
        model = converted_marian(work, marian) if args.stage1_backend == "ctranslate2" else marian  # convert once
        models = {f"fr-{lang}": model for lang in old_languages}
    cfg = build(LearnerConfig, overrides={"fusion": {"epochs": 1, "batch_size": args.batch_size, "patience": 5},
                                          "max_length": args.max_length, "device": args.device})
    rows = []
    for fraction in (float(f) for f in args.fractions.split(",")):
        translated: list[Pairs] = []
        with Stopwatch() as stage1:
            if fraction > 0:
                with tempfile.TemporaryDirectory() as cache:  # a cold cache: stage 1 pays full price
                    tables = translate_subset(train_table, new.language, old_languages, fraction=fraction, seed=13,
                                              backend=args.stage1_backend, cache_dir=Path(cache), models=models,
                                              device=args.device, batch_size=args.batch_size,
                                              threads=args.threads or None)
                translated = [to_pairs(tables[lang], translated_source(lang)) for lang in old_languages]
        model = _t3_model(encoder, splits, cfg)
        with Stopwatch() as stage3:
            distill_fusion(model, train, valid, translated, cfg)
        row = {"fraction": fraction, "translated_pairs": sum(len(p) for p in translated),
               "stage1_s": stage1.wall, "stage3_s": stage3.wall, "total_s": stage1.wall + stage3.wall,
               "stage1_cpu_s": stage1.cpu, "stage3_cpu_s": stage3.cpu, "total_cpu_s": stage1.cpu + stage3.cpu}
        rows.append(row)
        print(f"  fraction {fraction:4.2f}: {row['translated_pairs']:5d} translated pairs   "
              f"stage 1 {stage1.wall:6.1f} s ({stage1.cpu:6.1f} CPU-s)   stage 3 {stage3.wall:6.1f} s "
              f"({stage3.cpu:6.1f} CPU-s)   total {row['total_s']:6.1f} s ({row['total_cpu_s']:6.1f} CPU-s)", flush=True)
    return rows


def main(args: Args) -> dict:
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-translation-"))
    if args.threads:
        torch.set_num_threads(args.threads)  # stage 3 too: one thread per process suffers least from busy neighbours
    load = os.getloadavg()[0]
    print(f"device {args.device}, torch threads {args.threads or torch.get_num_threads()}, {os.cpu_count()} CPUs, "
          f"load average {load:.1f}; work dir {work}", flush=True)
    results: dict = {"args": asdict(args), "load_average": load}
    if not args.skip_throughput:
        print(f"1. sentences/s, es -> en, batch {args.batch_size}:", flush=True)
        results["throughput"] = throughput(args, work)
    if not args.skip_fraction:
        print(f"2. translated fraction vs stages 1 + 3 ({args.encoder}, fr after en, es; {args.train_pairs} train "
              f"pairs, 1 fusion epoch, stage 1 by {args.stage1_backend}):", flush=True)
        results["fraction_sweep"] = fraction_sweep(args, work)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
        print(f"written to {args.out}")
    return results


if __name__ == "__main__":
    (parsed,) = HfArgumentParser(Args).parse_args_into_dataclasses()
    main(parsed)
