"""The shared loop: early stopping restores the best epoch; a checkpoint resumes after a crash."""

from __future__ import annotations

import pytest
import torch

from models.pairs import Batch
from models.training import TrainConfig, fit


def _toy():
    torch.manual_seed(0)
    module = torch.nn.Linear(1, 1)
    batch = Batch(torch.ones(4, 1, dtype=torch.long), torch.ones(4, 1, dtype=torch.long), None,
                  torch.zeros(4, dtype=torch.long), torch.arange(4), "task")

    def loss_fn(b):
        loss = (module.weight.sum() - 3.0) ** 2
        return loss, {}

    return module, batch, loss_fn


def test_early_stopping_restores_best_epoch():
    module, batch, loss_fn = _toy()
    metrics = iter([0.5, 0.9, 0.6, 0.7, 0.8, 0.95])
    weights = []

    def evaluate():
        weights.append(module.weight.item())
        return next(metrics)

    result = fit(module, list(module.parameters()), lambda e: [batch], loss_fn, evaluate,
                 TrainConfig(epochs=6, patience=2, learning_rate=0.1, warmup_ratio=0), steps_per_epoch=1, desc="toy")
    assert result.best_epoch == 2 and result.epochs_run == 4 and result.stopped_early
    assert module.weight.item() == pytest.approx(weights[1])


def test_resume_after_crash_skips_finished_epochs(tmp_path):
    module, batch, loss_fn = _toy()
    ckpt = tmp_path / "stage.pt"
    calls = {"n": 0}

    def crashing_eval():
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("node lost")
        return 0.1 * calls["n"]

    cfg = TrainConfig(epochs=4, patience=10, learning_rate=0.1, warmup_ratio=0)
    with pytest.raises(RuntimeError, match="node lost"):
        fit(module, list(module.parameters()), lambda e: [batch], loss_fn, crashing_eval, cfg,
            steps_per_epoch=1, desc="toy", checkpoint=ckpt)
    assert ckpt.is_file()
    epochs_seen = []

    def batches(epoch):
        epochs_seen.append(epoch)
        return [batch]

    result = fit(module, list(module.parameters()), batches, loss_fn, lambda: 0.05, cfg,
                 steps_per_epoch=1, desc="toy", checkpoint=ckpt)
    assert epochs_seen == [2, 3], "epochs 1-2 were finished before the crash and must not rerun"
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert result.best_epoch == 2 and result.best_metric == pytest.approx(0.2)
    with pytest.raises(RuntimeError, match="belongs to another stage"):
        fit(module, list(module.parameters()), batches, loss_fn, lambda: 0.0, cfg, steps_per_epoch=1,
            desc="other", checkpoint=ckpt)


def _embedding_batch():
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0], [3, 4, 5, 6], [7, 0, 0, 0], [2, 3, 0, 0]])
    mask = (ids != 0).long()
    return Batch(ids, mask, None, torch.tensor([1, 0, 1, 0, 1]), torch.arange(5), "task")


def test_split_trims_each_micro_batch_to_its_longest_row():
    parts = _embedding_batch().split(2)
    assert [len(p) for p in parts] == [2, 2, 1]
    assert [p.input_ids.shape[1] for p in parts] == [3, 4, 2]
    assert parts[2].index.tolist() == [4] and parts[0].source == "task"


@pytest.mark.parametrize("micro", [2, 3])
def test_micro_batches_give_the_same_update_as_the_whole_batch(micro):
    def trained(micro_batch_size):
        torch.manual_seed(0)
        emb, head = torch.nn.Embedding(10, 4), torch.nn.Linear(4, 2)
        module = torch.nn.ModuleList([emb, head])

        def loss_fn(b):
            pooled = (emb(b.input_ids) * b.attention_mask.unsqueeze(-1)).sum(1) / b.attention_mask.sum(1, keepdim=True)
            return torch.nn.functional.cross_entropy(head(pooled), b.labels), {}

        cfg = TrainConfig(epochs=1, learning_rate=0.1, warmup_ratio=0, max_grad_norm=0,
                          micro_batch_size=micro_batch_size)
        fit(module, list(module.parameters()), lambda e: [_embedding_batch()], loss_fn, lambda: 1.0, cfg,
            steps_per_epoch=1, desc="toy")
        return [p.detach().clone() for p in module.parameters()]

    for whole, split in zip(trained(None), trained(micro), strict=True):
        torch.testing.assert_close(whole, split, rtol=1e-5, atol=1e-6)
