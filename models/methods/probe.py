"""``probe``: logistic regression on the frozen encoder's sentence embeddings, one per marketplace.

The floor every method on a frozen encoder must clear: if adapters and fusion cannot beat a linear model on
the same frozen features, they are not learning anything the encoder did not already know. Features are the
E5 recipe (mean-pooled, L2-normalised last hidden states of ``query: q`` and ``passage: p``) combined as
[q, p, q·p, |q − p|] (Conneau et al. 2017's pair features); the classifier is an L2-regularised logistic
regression fitted to convergence with L-BFGS (torch, so ``models/`` stays torch-only).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from models.config import E5_QUERY_PREFIX, E5_TITLE_PREFIX
from models.device import resolve_device
from models.encoders import sentence_embeddings
from models.methods.protocol import ContinualMethod, MarketplaceSplits
from models.metrics import roc_auc
from models.pairs import Pairs
from models.stages import StageReport
from models.training import FitResult

if TYPE_CHECKING:
    from models.config import BaselinesConfig, LearnerConfig
    from models.encoders import EncoderRef

L2 = 1e-3  # weight of ½‖w‖² per example: enough to keep 4·hidden weights finite on a few hundred pairs


def pair_features(queries: torch.Tensor, titles: torch.Tensor) -> torch.Tensor:
    return torch.cat([queries, titles, queries * titles, (queries - titles).abs()], dim=-1)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float = L2, max_iter: int = 200) -> torch.nn.Linear:
    """Binary logistic regression, full batch, to L-BFGS convergence (deterministic for given inputs)."""
    linear = torch.nn.Linear(x.shape[1], 1).to(x.device)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")
    target = y.float()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(linear(x).squeeze(-1), target)
        loss = loss + 0.5 * l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return linear


class LinearProbe(ContinualMethod):
    name = "probe"
    description = "logistic regression per marketplace on the frozen encoder's mean-pooled [q, p, q·p, |q−p|]"

    def __init__(self, encoder: EncoderRef, learner: LearnerConfig, baselines: BaselinesConfig | None = None) -> None:
        super().__init__(encoder, learner, baselines)
        self.device = resolve_device(learner.device)
        self.net = AutoModel.from_pretrained(str(encoder.path)).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(encoder.path))
        self.heads: dict[str, torch.nn.Linear] = {}
        self.last_trained = 0

    def _features(self, pairs: Pairs) -> torch.Tensor:
        embed = lambda texts, prefix: sentence_embeddings(  # noqa: E731
            self.net, self.tokenizer, list(texts), prefix, batch_size=self.learner.adapter.eval_batch_size,
            max_length=self.learner.max_length)
        return pair_features(embed(pairs.queries, E5_QUERY_PREFIX), embed(pairs.titles, E5_TITLE_PREFIX))

    def learn(self, data: MarketplaceSplits, translated: Sequence[Pairs]) -> list[StageReport]:
        start = time.perf_counter()
        x = self._features(data.train)
        head = fit_logistic(x, torch.as_tensor(np.asarray(data.train.labels), device=self.device))
        self.heads[data.spec.id] = head
        seconds = time.perf_counter() - start
        valid = roc_auc(data.valid.labels, self.predict_proba(data.spec.id, data.valid))
        trainable = sum(p.numel() for p in head.parameters())
        fit = FitResult(best_metric=valid, best_epoch=1, epochs_run=1, stopped_early=False,
                        trainable_parameters=trainable, train_examples=len(data.train), train_seconds=seconds,
                        examples_per_second=len(data.train) / max(seconds, 1e-9))
        self.last_trained = trainable
        return [StageReport("probe", data.spec.id, fit, self._encoder_parameters())]

    @torch.no_grad()
    def predict_proba(self, marketplace_id: str, pairs: Pairs) -> np.ndarray:
        if marketplace_id not in self.heads:
            raise RuntimeError(f"probe has no classifier for marketplace {marketplace_id!r}")
        return torch.sigmoid(self.heads[marketplace_id](self._features(pairs)).squeeze(-1)).cpu().numpy()

    def _encoder_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def trainable_parameters(self) -> int:
        return self.last_trained

    def total_parameters(self) -> int:
        return self._encoder_parameters() + sum(p.numel() for h in self.heads.values() for p in h.parameters())
