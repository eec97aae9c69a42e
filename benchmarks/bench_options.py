"""Does the learner keep old marketplaces, and what do its options change? Measured on the demo data.

Every variant is the learner (``ad``) under another configuration, run through the same protocol as the
benchmark (``models.methods.run_method``) on the same data, seeds and encoder; the language adapters do not
depend on these options, so the in-process adapter bank trains each once and every variant reuses it.
Variants are learner presets or ``--set``-style overrides on top of ``--preset`` (``VARIANTS`` below): ω as
the raw slice, renormalised, or per batch source; L_AD summed or averaged over layers; λ; Ψ_t warm-started;
the fusion head random; distinct initialisation seeds per adapter/fusion; adapter capacity; the heads' pooling
and e5's prefixes; learning rates and epochs; early stopping on every kept validation set; plain fusion; the §4.2
variant; the paper's recipe.
Each variant reports validation ROC-AUC too, which is what a default is chosen on.
"No forgetting" is read off the matrix: R[T][k] against R[k][k], the score right after k was learned.

    python benchmarks/bench_options.py --variants default,renorm,warm --pairs 400 --out bench-options.json
    python benchmarks/bench_options.py --method adapter-only --variants default,e5-input   # the adapters alone
    python benchmarks/bench_options.py --merge seed13.json,seed14.json --out table.md   # mean ± std over seeds
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from transformers import HfArgumentParser

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.config import BaselinesConfig, LearnerConfig  # noqa: E402
from models.encoders import EncoderRef  # noqa: E402
from models.methods import run_method  # noqa: E402
from models.methods.adapter_bank import SHARED  # noqa: E402
from tasks.benchmark import (  # noqa: E402
    BenchmarkData, RunSpec, Translations, adapter_bank_folder, benchmark_config, method_learner, translating)
from tasks.config import BENCHMARK_PRESET, build, parse_overrides, read_preset  # noqa: E402
from tasks.data import generate_demo  # noqa: E402
from tasks.learner import resolve_settings_encoder  # noqa: E402
from tasks.settings import get_settings  # noqa: E402

#: variant -> (learner preset applied on top of the base, overrides)
VARIANTS: dict[str, tuple[str | None, list[str]]] = {
    "default": (None, []),
    "renorm": (None, ["distill.omega=renorm"]),
    "per-source": (None, ["distill.omega=per-source"]),
    "per-source-no-translation": ("ad-no-translation", ["distill.omega=per-source"]),
    "layer-mean": (None, ["distill.layer_reduction=mean"]),
    "new-share-0.1": (None, ["distill.new_share=0.1"]),
    "new-share-0.25": (None, ["distill.new_share=0.25"]),
    "translated-ce": (None, ["distill.translated_ce=true"]),
    "output-kd": (None, ["distill.output_weight=1"]),
    "output-kd-renorm": (None, ["distill.output_weight=1", "distill.omega=renorm"]),
    "lambda-0.3": (None, ["distill.weight=0.3"]),
    "lambda-3": (None, ["distill.weight=3"]),
    "warm": (None, ["distill.warm_start=true"]),
    "random-head": (None, ["distill.head_init=random"]),
    "seed-per-marketplace": (None, ["seed_per_marketplace=true"]),
    "reduction-8": (None, ["reduction_factor=8"]),
    "reduction-4": (None, ["reduction_factor=4"]),
    "adapter-lr-3e-4": (None, ["adapter.learning_rate=3e-4"]),
    "adapter-lr-3e-3": (None, ["adapter.learning_rate=3e-3"]),
    "adapter-epochs-8": (None, ["adapter.epochs=8"]),
    "fusion-lr-3e-4": (None, ["fusion.learning_rate=3e-4"]),
    "fusion-lr-1e-3": (None, ["fusion.learning_rate=1e-3"]),
    "fusion-epochs-4": (None, ["fusion.epochs=4"]),
    "stop-on-kept": (None, ["early_stopping=kept"]),
    "bf16": (None, ["adapter.precision=bf16", "fusion.precision=bf16"]),
    "mean-pool": (None, ["pooling=mean"]),
    "e5-input": ("e5-input", []),
    "e5-input-adapter-lr-3e-3": ("e5-input", ["adapter.learning_rate=3e-3"]),
    "no-ad": ("fusion-no-distill", []),
    "no-translation": ("ad-no-translation", []),
    "paper": ("paper", []),
}


@dataclass
class Args:
    data: str = ""  # a data root; empty: generate the demo data
    order: str = "en,es,fr"
    method: str = "ad"  # the method every variant runs (adapter-only measures the stage-2 knobs without fusion)
    variants: str = "default,renorm,warm"
    preset: str = ""  # the learner preset every variant starts from; empty: the benchmark's (benchmark/cpu)
    set: str = ""  # extra overrides for every variant, comma separated (fusion.epochs=3,max_length=32)
    pairs: int = 400  # train pairs per marketplace (0: all)
    eval_pairs: int = 400  # valid and test pairs per marketplace (0: all)
    out: str = ""
    bank: str = ""  # a folder for the adapter bank: later runs (other variants, seeds, processes) reuse its adapters
    merge: str = ""  # comma-separated JSON files of earlier runs: print (and --out) their mean ± std table instead


def variant_learner(preset: str, overrides: str, variant: str) -> LearnerConfig:
    """``variant`` on top of ``preset`` (empty: the benchmark's learner) and the comma-separated ``overrides``."""
    extra, variant_overrides = VARIANTS[variant]
    start = {} if preset else read_preset(BENCHMARK_PRESET, "benchmark").get("learner", {})
    base = build(LearnerConfig, base=start, preset=preset or None, overrides=[s for s in overrides.split(",") if s])
    return build(LearnerConfig, base=base.model_dump(), preset=extra, overrides=parse_overrides(variant_overrides))


@dataclass(frozen=True)
class Inputs:
    encoder: EncoderRef
    ids: list[str]
    data: BenchmarkData
    translations: Translations
    baselines: BaselinesConfig


def benchmark_inputs(args: Any) -> Inputs:
    """What every run of these scripts starts from, as ``mcl benchmark`` would: the encoder, the marketplace order,
    the data capped to ``args.pairs``/``args.eval_pairs`` (generated demo data without ``args.data``), its
    translations, and the adapter bank kept under ``args.bank``."""
    settings = get_settings()
    if args.bank:
        SHARED.persist_to(adapter_bank_folder(Path(args.bank)))
    ids = args.order.split(",")
    root = Path(args.data) if args.data else Path(tempfile.mkdtemp()) / "demo"
    if not args.data:
        generate_demo(root, languages=tuple(ids), seed=13)
    cfg = benchmark_config(ids, ["ad"], max_train_pairs=args.pairs, max_eval_pairs=args.eval_pairs)
    data = BenchmarkData.load(root, cfg)
    translations = Translations(data, cfg.learner.translation.backend, settings.cache_dir / "translations")
    return Inputs(resolve_settings_encoder(settings), ids, data, translations, cfg.baselines)


def main(args: Args) -> dict:
    inputs = benchmark_inputs(args)
    encoder, ids, data, translations = inputs.encoder, inputs.ids, inputs.data, inputs.translations
    results = {}
    for name in args.variants.split(","):
        # the method's own preset on top, as the benchmark does
        learner = method_learner(variant_learner(args.preset, args.set, name), args.method)
        fraction = learner.translation.fraction if translating(args.method) else 0
        translated_for, translate_seconds, rows = translations.for_run(
            RunSpec(args.method, learner.seed, tuple(ids), fraction if fraction > 0 else None))
        t0 = time.perf_counter()
        result = run_method(args.method, encoder, data.splits(ids), learner, inputs.baselines,
                            translated_for=translated_for)
        r = np.asarray(result.metrics.matrix)
        drift = [float(r[-1, k] - r[k, k]) for k in range(len(ids) - 1)]
        m = result.metrics
        results[name] = {**m.as_dict(), "valid_average": result.valid_metrics.average,
                         "valid_matrix": result.valid_metrics.as_dict()["matrix"], "seconds": time.perf_counter() - t0, "translate_seconds": translate_seconds,
                         "translated_rows": rows, "drift_from_learned": drift, "own_attention": result.own_attention,
                         "learner": learner.model_dump()}
        print(f"\n== {name} ({results[name]['seconds']:.0f}s)")
        for t, row in enumerate(r):
            print(f"  after {ids[t]:4s} " + "  ".join("  -   " if np.isnan(v) else f"{v:.4f}" for v in row))
        print(f"  average {m.average:.4f} (validation {result.valid_metrics.average:.4f})  BWT {m.bwt:+.4f}  forgetting {m.forgetting:.4f}  "
              f"old marketplaces vs right after learned: " + ", ".join(f"{ids[k]} {d:+.4f}" for k, d in enumerate(drift)),
              flush=True)
        v = np.asarray(result.valid_metrics.matrix)
        print("  validation, each arrival's largest old-marketplace drop against the model before it (what the gate "
              "reads): " + ", ".join(f"{ids[t]} {max(v[t - 1, k] - v[t, k] for k in range(t)):+.4f}"
                                     for t in range(1, len(ids))), flush=True)
    print("\n| variant | " + " | ".join(f"final {k}" for k in ids) + " | average | valid average | BWT | forgetting "
          "| time s |")
    print("|---|" + "---|" * (len(ids) + 5))
    for name, res in results.items():
        last = res["matrix"][-1]
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in last)
              + f" | {res['average']:.4f} | {res['valid_average']:.4f} | {res['bwt']:+.4f} | {res['forgetting']:.4f} | {res['seconds']:.0f} |")
    summary = {"args": asdict(args), "variants": results}
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))
        print(f"written to {args.out}")
    return summary


def _mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def merge(files: list[str]) -> str:
    """One table over runs made separately (one per seed or dataset, so each fits a session): mean ± std over
    seeds of every (data, base settings, variant). Validation comes first because defaults are chosen on it."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for file in files:
        run = json.loads(Path(file).read_text())
        base = ",".join(s for s in run["args"]["set"].split(",") if s and not s.startswith("seed="))
        data = Path(run["args"]["data"]).name or "demo (generated)"
        method = run["args"].get("method", "ad")
        for name, result in run["variants"].items():
            label = name if method == "ad" else f"{method}: {name}"
            groups.setdefault((data, base or "-", label), []).append(result)
    lines = ["| data | base settings | variant | seeds | average (validation) | average (test) | BWT "
             "| worst old marketplace vs just learned | own-adapter attention (lowest arrival) | time s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (data, base, name), results in sorted(groups.items()):
        own = [min(a for a in r["own_attention"] if a is not None) for r in results
               if any(a is not None for a in r.get("own_attention") or [])]
        lines.append(f"| {data} | `{base}` | {name} | {len(results)} "
                     f"| {_mean_std([r['valid_average'] for r in results])} "
                     f"| {_mean_std([r['average'] for r in results])} | {_mean_std([r['bwt'] for r in results])} "
                     f"| {_mean_std([min(r['drift_from_learned']) for r in results])} "
                     f"| {_mean_std(own) if own else '-'} | {np.mean([r['seconds'] for r in results]):.0f} |")
    return "\n".join(lines)


def run_or_merge(args_type: type, run: Callable[[Any], object], merge_runs: Callable[[list[str]], str]) -> None:
    """The command line of a benchmark that writes one JSON per run and merges runs into a table: ``--merge
    a.json,b.json`` prints (and ``--out`` writes) the table; otherwise the arguments go to ``run``."""
    (parsed,) = HfArgumentParser(args_type).parse_args_into_dataclasses()
    if parsed.merge:
        table = merge_runs(parsed.merge.split(","))
        print(table)
        if parsed.out:
            Path(parsed.out).write_text(table + "\n")
    else:
        run(parsed)


if __name__ == "__main__":
    run_or_merge(Args, main, merge)
