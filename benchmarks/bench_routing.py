"""Does the fusion route by language? And how much of an old marketplace's drop is the newer adapters' share?

Issue 15 asks every new adapter for >= 0.25 of the fusion attention on its own language's text, and the demo
data shows old marketplaces dropping at the second arrival. This runs the learner (``ad``, one
``bench_options.py`` variant) through the benchmark's protocol (``run_protocol``, measuring in its
``on_arrival`` hook) and prints, for every arrival after the first:

- the attention profile per layer: the mean attention each adapter gets on each marketplace's test text. If the
  rows are equal in every layer, the fusion mixes its adapters in one proportion whatever the language, and an
  adapter's share on its own language is its share on every language;
- every old marketplace k scored three ways, test and validation: by the fused model as the benchmark scores it,
  by the same model with the attention restricted to A_1..A_k (the adapters it had when it was learned; the
  newer ones' scores set to -inf before the softmax), and right after k was learned. The gap between the first
  two is what the newer adapters' share costs (or earns) k; what is left between the second and the third is the
  rest of the fusion (values, head) moving.

    python benchmarks/bench_routing.py --data DATA --order en,es,fr --pairs 300 --eval_pairs 200 --out routing.json
    python benchmarks/bench_routing.py --merge demo-s13.json,tax-s13.json --out table.md
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_options import benchmark_inputs, run_or_merge, variant_learner  # noqa: E402
from models.fusion_attention import attention_restricted, fusion_attention_by_layer  # noqa: E402
from models.methods import run_protocol  # noqa: E402
from models.methods.adapter_fusion import AttentionDistillation  # noqa: E402
from models.sequence import evaluate_marketplaces  # noqa: E402
from tasks.benchmark import RunSpec, method_learner  # noqa: E402


@dataclass
class Args:
    data: str = ""  # a data root (``mcl data demo`` or ``taxonomy_benchmark.py`` output); empty: generate the demo data
    order: str = "en,es,fr"
    variant: str = "default"  # a bench_options.py variant
    preset: str = ""  # the learner preset the variant starts from; empty: the benchmark's
    set: str = ""  # extra overrides, comma separated (seed=14)
    pairs: int = 300  # train pairs per marketplace (0: all)
    eval_pairs: int = 200  # valid and test pairs per marketplace (0: all)
    bank: str = ""  # a folder for the adapter bank (shared with bench_options.py --bank)
    out: str = ""
    merge: str = ""  # comma-separated JSON files of earlier runs: print (and --out) one table over them instead


def main(args: Args) -> dict:
    inputs = benchmark_inputs(args)
    ids, splits = inputs.ids, inputs.data.splits(inputs.ids)
    learner = method_learner(variant_learner(args.preset, args.set, args.variant), "ad")
    translated_for, _, _ = inputs.translations.for_run(
        RunSpec("ad", learner.seed, tuple(ids), learner.translation.fraction or None))
    method = AttentionDistillation(inputs.encoder, learner)
    measured: list[dict] = []

    def measure(t: int, _scores: dict[str, float]) -> None:
        """After arrival t (the protocol has scored it): attention by layer, and every old marketplace restricted."""
        if t == 0:
            return
        model = method.model
        layers = fusion_attention_by_layer(model, {m.spec.id: m.test for m in splits[: t + 1]})
        restricted = {}
        for k, kept in enumerate(splits[:t]):
            with attention_restricted(model, k + 1):
                scores = evaluate_marketplaces(model, {"test": kept.test, "valid": kept.valid})
                restricted[kept.spec.id] = (scores["test"], scores["valid"])
        measured.append({"adapters": model.adapter_names, "layers": {mid: p.tolist() for mid, p in layers.items()},
                         "restricted": restricted})

    result = run_protocol(method, splits, translated_for, on_arrival=measure)
    test, valid = result.metrics.matrix, result.valid_metrics.matrix
    arrivals = []
    for t, record in enumerate(measured, start=1):
        old = {mid: {"fused": (float(test[t][k]), float(valid[t][k])), "restricted": record["restricted"][mid],
                     "learned": (float(test[k][k]), float(valid[k][k]))}
               for k, mid in enumerate(ids[:t])}
        arrivals.append({"arrival": ids[t], "adapters": record["adapters"], "attention_by_layer": record["layers"],
                         "old": old})
        _print(arrivals[-1])
    summary = {"args": asdict(args), "learner": learner.model_dump(), "arrivals": arrivals}
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))
        print(f"written to {args.out}")
    return summary


def _largest_row_difference(record: dict) -> torch.Tensor:
    """Per layer, the largest difference between two marketplaces' attention on one adapter: 0 when the fusion
    weighs its adapters the same whatever the text's language."""
    stacked = torch.tensor(list(record["attention_by_layer"].values()))  # (texts, layers, adapters)
    return (stacked.max(dim=0).values - stacked.min(dim=0).values).max(dim=-1).values


def merge(files: list[str]) -> str:
    """One markdown table over runs (one per dataset and seed): every old marketplace after every arrival."""
    lines = ["| data | variant | seed | after | old marketplace | fused test (valid) | restricted test (valid) "
             "| just learned test (valid) | largest attention difference between languages: layer mean; any layer |",
             "|---|---|---|---|---|---|---|---|---|"]
    for file in files:
        run = json.loads(Path(file).read_text())
        data, variant, seed = Path(run["args"]["data"]).name, run["args"]["variant"], run["learner"]["seed"]
        for record in run["arrivals"]:
            mean = torch.tensor(list(record["attention_by_layer"].values())).mean(dim=1)  # (texts, adapters)
            mean_spread = float((mean.max(dim=0).values - mean.min(dim=0).values).max())
            spread = f"{mean_spread:.3f}; {float(_largest_row_difference(record).max()):.3f}"
            for mid, s in record["old"].items():
                cells = " | ".join(f"{s[key][0]:.4f} ({s[key][1]:.4f})" for key in ("fused", "restricted", "learned"))
                lines.append(f"| {data} | {variant} | {seed} | {record['arrival']} | {mid} | {cells} | {spread} |")
    return "\n".join(lines)


def _print(record: dict) -> None:
    names = record["adapters"]
    profiles = {mid: torch.tensor(p) for mid, p in record["attention_by_layer"].items()}
    print(f"\n== after {record['arrival']}: mean attention (rows: the text's marketplace; columns: adapters "
          f"{', '.join(names)})")
    for mid, p in profiles.items():
        print(f"  {mid:4s} " + "  ".join(f"{v:.3f}" for v in p.mean(dim=0)))
    print("  largest difference between two languages' rows, per layer: "
          + " ".join(f"{v:.3f}" for v in _largest_row_difference(record)))
    print("  old marketplaces, test (validation): fused | restricted to the adapters up to its own | just learned")
    for mid, s in record["old"].items():
        print(f"  {mid:4s} " + " | ".join(f"{s[key][0]:.4f} ({s[key][1]:.4f})"
                                          for key in ("fused", "restricted", "learned")), flush=True)


if __name__ == "__main__":
    run_or_merge(Args, main, merge)
