"""What `mcl benchmark`'s worker processes buy: the same plan with 1 worker (2 torch threads) and with 2 workers
(1 thread each), each as its own `mcl benchmark` process into a fresh folder, alternating, wall time per variant.

The plan is a small copy of the cpu preset's (four methods that share adapters, 2 seeds, fewer pairs and epochs),
so a pair of variants takes minutes; the ratio is what carries over to the full benchmark, whose runs are the same
kind of work. Timings compare only within one invocation (the variants alternate, so drift on a shared machine hits
both); the R matrices of the two variants are compared too (they must agree: workers change speed, not results).

    python benchmarks/bench_workers.py --data DEMO --order en,es,fr --repeats 1 --out bench-workers.json
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from transformers import HfArgumentParser

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Args:
    data: str  # a data root (`mcl data demo --out DEMO --languages en,es,fr`)
    order: str = "en,es,fr"
    methods: str = "ad,adapter-only,fusion-no-distill,sm"
    workers: str = "1,2"
    seeds: int = 2
    pairs: int = 120  # max_train_pairs
    eval_pairs: int = 100
    adapter_epochs: int = 3
    fusion_epochs: int = 2
    repeats: int = 1
    out: str = ""
    keep: str = ""  # a folder to keep every variant's benchmark output in (default: a temporary one)


def _run(args: Args, workers: int, out: Path) -> float:
    sets = [f"workers={workers}", f"seeds={args.seeds}", "fractions=[]", f"max_train_pairs={args.pairs}",
            f"max_eval_pairs={args.eval_pairs}", f"adapter.epochs={args.adapter_epochs}",
            f"fusion.epochs={args.fusion_epochs}", "baselines.full.epochs=1"]
    command = [sys.executable, "-m", "flows.cli", "benchmark", "--data", args.data, "--order", args.order,
               "--methods", args.methods, "--out", str(out), "--no-mlflow"] + [x for s in sets for x in ("--set", s)]
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def _matrices(out: Path) -> dict[str, np.ndarray]:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    return {f"{r['method']} seed {r['seed']}": np.array(r["matrix"][-1], dtype=float) for r in rows}


def main() -> None:
    (args,) = HfArgumentParser(Args).parse_args_into_dataclasses()
    variants = [int(x) for x in args.workers.split(",")]
    seconds: dict[int, list[float]] = {w: [] for w in variants}
    finals: dict[int, dict[str, np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or scratch
        for repeat in range(args.repeats):
            for workers in variants:
                out = Path(tmp) / f"w{workers}-r{repeat}"
                seconds[workers].append(_run(args, workers, out))
                finals[workers] = _matrices(out)
                print(f"repeat {repeat + 1}: {workers} worker(s): {seconds[workers][-1]:.1f} s", flush=True)
    base = variants[0]
    for run, final in finals[base].items():
        print(f"{run:>28}: " + "  ".join(f"{w} worker(s) {np.round(finals[w][run], 4).tolist()}" for w in variants))
    print(f"{'workers':>8} {'median s':>9} {'speed-up':>9} {'largest |final ROC-AUC difference|':>36}")
    table = []
    for workers in variants:
        median = float(np.median(seconds[workers]))
        diff = max(float(np.nanmax(np.abs(finals[workers][k] - finals[base][k]))) for k in finals[base])
        speedup = float(np.median(seconds[base])) / median
        table.append({"workers": workers, "seconds": seconds[workers], "median_seconds": median, "speedup": speedup,
                      "max_final_difference": diff})
        print(f"{workers:>8} {median:>9.1f} {speedup:>8.2f}x {diff:>36.2e}")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": asdict(args), "variants": table}, indent=2))


if __name__ == "__main__":
    main()
