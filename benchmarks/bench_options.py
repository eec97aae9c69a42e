"""Does the learner keep old marketplaces, and what do its options change? Measured on the demo data.

Runs the sequence (default en -> es -> fr) once per variant on the same data, seed and encoder, and prints
the ROC-AUC matrix of each plus a comparison table. The language adapters do not depend on these options, so
they are trained once and every variant replays the fusion stages on them:
  - default: L_AD with ω as the raw slice (eq. 9), Ψ_t random, translated subsets (fraction 0.3)
  - renorm:  ω renormalised over the old adapters
  - warm:    Ψ_t warm-started from Ψ_{t-1}
  - random-head: the new fusion's head starts random instead of from M_{t-1}'s head
  - no-ad:   the same fusion training without L_AD (λ = 0)
  - no-translation: the paper's §4.2 variant (D_t batches get CE + L_AD)
Translations come from the project's translation stage (`backend=auto`: Apertium here).
"No forgetting" is read off the matrix: R[T][k] against R[k][k], the score right after k was learned.

    python benchmarks/bench_options.py --variants default,renorm,warm --train_pairs 400 --out bench-options.json
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from transformers import HfArgumentParser

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.device import resolve_device  # noqa: E402
from models.metrics import continual_metrics, roc_auc  # noqa: E402
from models.pairs import Pairs  # noqa: E402
from models.relevance import RelevanceModel  # noqa: E402
from models.sequence import LearnerConfig, MarketplaceSplits, evaluate_marketplaces, fusion_attention_profile  # noqa: E402
from models.stages import DistillConfig, distill_fusion, train_language_adapter  # noqa: E402
from models.training import TrainConfig  # noqa: E402
from tasks.data import generate_demo, load_data_root  # noqa: E402
from tasks.learner import marketplace_splits, resolve_settings_encoder, to_pairs, translated_source  # noqa: E402
from tasks.settings import get_settings  # noqa: E402
from tasks.translation import translate_subset  # noqa: E402

VARIANTS = {
    "default": (DistillConfig(), True),
    "renorm": (DistillConfig(omega="renorm"), True),
    "warm": (DistillConfig(warm_start=True), True),
    "random-head": (DistillConfig(head_init="random"), True),
    "no-ad": (DistillConfig(weight=0.0), True),
    "no-translation": (DistillConfig(), False),
}


@dataclass
class Args:
    encoder: str = "multilingual-e5-small"
    data: str = ""
    order: str = "en,es,fr"
    variants: str = "default,renorm,warm"
    train_pairs: int = 400
    valid_pairs: int = 120
    test_pairs: int = 400
    fraction: float = 0.3
    adapter_epochs: int = 3
    fusion_epochs: int = 2
    batch_size: int = 16
    max_length: int = 48
    device: str = "auto"
    seed: int = 13
    out: str = ""


def _subset(m: MarketplaceSplits, args: Args) -> MarketplaceSplits:
    return MarketplaceSplits(m.spec, m.train.head(args.train_pairs), m.valid.head(args.valid_pairs),
                             m.test.head(args.test_pairs))


def main(args: Args) -> dict:
    settings = get_settings()
    encoder = resolve_settings_encoder(settings, args.encoder)
    ids = args.order.split(",")
    root = Path(args.data) if args.data else Path(tempfile.mkdtemp()) / "demo"
    if not args.data:
        generate_demo(root, languages=tuple(ids), seed=args.seed)
    loaded = load_data_root(root, ids)
    marketplaces = [_subset(marketplace_splits(m), args) for m in loaded]
    tables = {m.id: m.train.head(args.train_pairs) for m in loaded}

    translations: dict[str, list[Pairs]] = {}
    t0 = time.perf_counter()
    for t, m in enumerate(marketplaces[1:], start=1):
        targets = [o.spec.language for o in marketplaces[:t]]
        out = translate_subset(tables[m.spec.id], m.spec.language, targets, fraction=args.fraction, seed=args.seed,
                               cache_dir=settings.cache_dir / "translations")
        translations[m.spec.id] = [to_pairs(out[lang], translated_source(lang)) for lang in targets]
    translate_seconds = time.perf_counter() - t0
    print(f"translated subsets in {translate_seconds:.1f}s: "
          + ", ".join(f"{k}->{[len(p) for p in v]}" for k, v in translations.items()), flush=True)

    base = LearnerConfig(
        adapter=TrainConfig(epochs=args.adapter_epochs, batch_size=args.batch_size, learning_rate=1e-3, seed=args.seed),
        fusion=TrainConfig(epochs=args.fusion_epochs, batch_size=args.batch_size, learning_rate=1e-4, seed=args.seed),
        max_length=args.max_length, device=args.device,
    )
    # Stage 2 does not depend on the fusion options (old adapters are frozen and inactive), so every variant
    # shares the same trained adapters: train them once, then replay the fusion stages per variant.
    adapters_dir = Path(tempfile.mkdtemp()) / "adapters"
    t0 = time.perf_counter()
    adapter_model = RelevanceModel.create(encoder, max_length=args.max_length)
    adapter_model.net.to(resolve_device(args.device))
    adapter_reports = [train_language_adapter(adapter_model, m.spec, m.train, m.valid, base.adapter)
                       for m in marketplaces]
    adapter_model.save(adapters_dir)
    adapter_seconds = time.perf_counter() - t0
    first = adapter_model.predict_proba(marketplaces[0].test, setup=ids[0])
    r00 = roc_auc(marketplaces[0].test.labels, first)
    print(f"adapters trained in {adapter_seconds:.0f}s: " + ", ".join(
        f"{r.marketplace} valid {r.fit.best_metric:.4f} ({r.fit.examples_per_second:.1f} ex/s)" for r in adapter_reports),
        flush=True)

    results = {}
    for name in args.variants.split(","):
        distill, use_translations = VARIANTS[name]
        r = np.full((len(ids), len(ids)), np.nan)
        r[0, 0] = r00
        model = RelevanceModel.create(encoder, max_length=args.max_length)
        model.net.to(resolve_device(args.device))
        t0 = time.perf_counter()
        fusion_reports = []
        for t, m in enumerate(marketplaces):
            model.net.load_adapter(str(adapters_dir / "adapters" / m.spec.id), load_as=m.spec.id, with_head=True,
                                   use_safetensors=True)
            model.marketplaces.append(m.spec)
            if t == 0:
                continue
            trans = translations[m.spec.id] if use_translations else []
            fusion_reports.append(distill_fusion(model, m.train, m.valid, trans, base.fusion, distill))
            scores = evaluate_marketplaces(model, {x.spec.id: x.test for x in marketplaces[: t + 1]})
            r[t, : t + 1] = [scores[x.spec.id] for x in marketplaces[: t + 1]]
        m_ = continual_metrics(r, ids)
        drift = [float(r[-1, k] - r[k, k]) for k in range(len(ids) - 1)]
        attention = fusion_attention_profile(model, {x.spec.id: x.test for x in marketplaces})
        results[name] = {**m_.as_dict(), "fusion_seconds": time.perf_counter() - t0, "drift_from_learned": drift,
                         "attention": attention,
                         "fusion_examples_per_s": [f.fit.examples_per_second for f in fusion_reports]}
        print(f"\n== {name} (fusion stages {results[name]['fusion_seconds']:.0f}s)")
        for t, row in enumerate(r):
            print(f"  after {ids[t]:4s} " + "  ".join("  -   " if np.isnan(v) else f"{v:.4f}" for v in row))
        print(f"  average {m_.average:.4f}  BWT {m_.bwt:+.4f}  forgetting {m_.forgetting:.4f}  "
              f"old marketplaces vs right after learned: " + ", ".join(f"{ids[k]} {d:+.4f}" for k, d in enumerate(drift)))
        print("  mean fusion attention: " + "; ".join(
            f"{k}: " + " ".join(f"{a} {v:.2f}" for a, v in shares.items()) for k, shares in attention.items()), flush=True)
    print("\n| variant | " + " | ".join(f"final {k}" for k in ids) + " | average | BWT | forgetting | fusion time s |")
    print("|---|" + "---|" * (len(ids) + 4))
    for name, res in results.items():
        last = res["matrix"][-1]
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in last)
              + f" | {res['average']:.4f} | {res['bwt']:+.4f} | {res['forgetting']:.4f} | {res['fusion_seconds']:.0f} |")
    summary = {"args": asdict(args), "translate_seconds": translate_seconds, "adapter_seconds": adapter_seconds,
               "variants": results}
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))
        print(f"written to {args.out}")
    return summary


if __name__ == "__main__":
    (parsed,) = HfArgumentParser(Args).parse_args_into_dataclasses()
    main(parsed)
