"""What the contiguous fusion inputs buy: a fused forward pass (scoring) and a fusion training step, with the
library's ``BertFusion`` against ``models.contiguous_fusion.ContiguousFusion``, on the real encoder.

Prints, in one run (timings compare only within a run; the two variants alternate, so drift on a shared machine
hits both): seconds per pass for each variant, their ratio, and the largest difference in output, on demo text
at the benchmark's length (32 tokens) and batch sizes (8 for training, 64 for scoring), for 2 and 3 adapters.

    python benchmarks/bench_fusion_forward.py --threads 2 --repeats 5 --out bench-fusion-forward.json
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from adapters.methods.modeling import BertFusion
from transformers import HfArgumentParser

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.contiguous_fusion import ContiguousFusion  # noqa: E402
from models.fusion_attention import fusion_modules  # noqa: E402
from models.pairs import TextFormat, batches  # noqa: E402
from models.relevance import MarketplaceSpec, RelevanceModel  # noqa: E402
from tasks.data import generate_demo, load_data_root  # noqa: E402
from tasks.learner import resolve_settings_encoder, to_pairs  # noqa: E402
from tasks.settings import get_settings  # noqa: E402


@dataclass
class Args:
    encoder: str = "multilingual-e5-small"
    threads: int = 2  # the benchmark machine's cores
    max_length: int = 32
    score_batch: int = 64
    train_batch: int = 8
    pairs: int = 192  # demo test pairs scored per pass
    repeats: int = 5
    adapters: str = "2,3"
    out: str = ""


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, thread pool
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def _set_class(blocks: list[BertFusion], cls: type) -> None:
    for block in blocks:
        block.__class__ = cls


def measure(args: Args, model: RelevanceModel, text, n_adapters: int) -> dict:
    names = ["en", "es", "fr", "de", "ja"][:n_adapters]
    for name in names:
        if name not in model.adapter_names:
            model.add_marketplace(MarketplaceSpec(name, name), 8)
    if model.fusion is not None:
        model.remove_fusion(model.fusion)
    model.fusion = model.add_fusion(names)
    blocks = fusion_modules(model.net, model.fusion)
    params = [p for b in blocks for p in b.parameters()]
    train_batch = next(iter(batches(model.encode(text), args.train_batch, model.tokenizer.pad_token_id,
                                    shuffle=False)))
    head = model.activate(None)

    def score() -> torch.Tensor:
        return torch.from_numpy(model.predict_proba(text, batch_size=args.score_batch))

    def step() -> None:
        model.net.train()
        for p in params:
            p.requires_grad_(True)
        loss = model.logits(train_batch, head).float().logsumexp(-1).sum()
        torch.autograd.grad(loss, params)

    row = {"adapters": n_adapters}
    outputs = {}
    for label, cls in (("library", BertFusion), ("contiguous", ContiguousFusion)):
        _set_class(blocks, cls)
        outputs[label] = score()
    row["max_abs_difference"] = float((outputs["library"] - outputs["contiguous"]).abs().max())
    times = {("library", "score"): 0.0, ("contiguous", "score"): 0.0, ("library", "step"): 0.0,
             ("contiguous", "step"): 0.0}
    for _ in range(args.repeats):  # alternate, so both variants see the same load
        for label, cls in (("library", BertFusion), ("contiguous", ContiguousFusion)):
            _set_class(blocks, cls)
            times[(label, "score")] += _timed(score, 1)
            times[(label, "step")] += _timed(step, 3)
    for (label, what), seconds in times.items():
        row[f"{label}_{what}_seconds"] = seconds / args.repeats
    row["score_speedup"] = row["library_score_seconds"] / row["contiguous_score_seconds"]
    row["step_speedup"] = row["library_step_seconds"] / row["contiguous_step_seconds"]
    return row


def main() -> None:
    (args,) = HfArgumentParser(Args).parse_args_into_dataclasses()
    torch.set_num_threads(args.threads)
    encoder = resolve_settings_encoder(get_settings(), args.encoder)
    with tempfile.TemporaryDirectory() as work:
        generate_demo(Path(work), languages=("en",), pairs_per_marketplace=max(1000, 5 * args.pairs), seed=13)
        (market,) = load_data_root(Path(work), ["en"])
    text = to_pairs(market.test).head(args.pairs)
    model = RelevanceModel.create(encoder, text=TextFormat.raw(args.max_length), device="cpu")
    rows = [measure(args, model, text, int(n)) for n in args.adapters.split(",")]
    print(f"{'adapters':>8} {'score library s':>16} {'contiguous s':>13} {'speed-up':>9} "
          f"{'train step library s':>21} {'contiguous s':>13} {'speed-up':>9} {'max |diff|':>11}")
    for r in rows:
        print(f"{r['adapters']:>8} {r['library_score_seconds']:>16.3f} {r['contiguous_score_seconds']:>13.3f} "
              f"{r['score_speedup']:>8.2f}x {r['library_step_seconds']:>21.3f} {r['contiguous_step_seconds']:>13.3f} "
              f"{r['step_speedup']:>8.2f}x {r['max_abs_difference']:>11.2e}")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": asdict(args), "torch_threads": torch.get_num_threads(),
                                              "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
