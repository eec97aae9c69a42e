"""The losses of encoder distillation (:mod:`models.encoder_distill`), each over real tokens only.

Written out rather than taken from a distillation package: the maintained ones on PyPI (torchdistill, a
configuration-driven framework; TextBrewer, last released in 2020) would bring their own trainers and configuration
formats for what is a handful of short functions over ``torch.nn.functional``, and none of them knows this project's token
masks. Every function takes a boolean/0-1 ``mask`` of shape (batch, tokens) -- the attention mask -- and averages
over the positions it marks, so padding never counts and batches of different padding give the same loss. The last
two compare sentence vectors (the mean-pooled last layer that multilingual-e5 and the frozen probes read); their
counterpart on PyPI, sentence-transformers' ``MSELoss``, takes its own model classes, not this project's
``BertModel`` outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.pairs import mean_pool

IGNORE_INDEX = -100  # labels of the tokens the MLM loss skips (transformers' convention)


def _real(mask: torch.Tensor) -> torch.Tensor:
    return mask.to(torch.bool)


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)), summed over the vocabulary and averaged over real tokens.

    The T² keeps the gradient's scale independent of T (Hinton et al. 2015), as DistilBERT does."""
    real = _real(mask)
    s = F.log_softmax(student_logits[real].float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits[real].float() / temperature, dim=-1)
    kl = F.kl_div(s, t, log_target=True, reduction="sum") / max(int(real.sum()), 1)
    return kl * temperature**2


def mlm_loss(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the student's MLM logits on the masked tokens (labels ``-100`` elsewhere); zero when a batch
    happens to have no masked token (a short text at 15 %), instead of cross-entropy's NaN."""
    if not bool((labels != IGNORE_INDEX).any()):
        return student_logits.sum() * 0.0
    return F.cross_entropy(student_logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)


def cosine_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens of 1 − cos(h_s, h_t): the direction of each token's hidden state, not its length."""
    real = _real(mask)
    return (1.0 - F.cosine_similarity(student[real].float(), teacher[real].float(), dim=-1)).mean()


def hidden_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of hidden states over real tokens and hidden units (TinyBERT's hidden loss)."""
    real = _real(mask)
    return F.mse_loss(student[real].float(), teacher[real].float())


def attention_kl(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """KL(A_t ‖ A_s) of self-attention distributions (batch, heads, queries, keys), summed over keys and averaged
    over heads and real query tokens (MiniLM). Padded keys carry zero probability in both, so they add nothing."""
    t, s = teacher.float(), student.float()
    kl = (torch.special.xlogy(t, t) - t * torch.log(s.clamp_min(eps))).sum(-1)  # (batch, heads, queries)
    real = _real(mask).unsqueeze(1).expand_as(kl)
    return kl[real].mean()


def pooled_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the mean-pooled sentence vectors (Reimers & Gurevych 2020's multilingual
    distillation): the token losses can be small while the average they make, which is what e5 serves, drifts."""
    return F.mse_loss(mean_pool(student.float(), mask), mean_pool(teacher.float(), mask))


def similarity_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the in-batch cosine-similarity matrices of the sentence vectors (relational
    distillation, Park et al. 2019): which texts are near which, the structure a relevance probe reads, rather than
    where each vector lies. Needs at least two texts in a batch (zero otherwise)."""
    s = F.normalize(mean_pool(student.float(), mask), dim=-1)
    t = F.normalize(mean_pool(teacher.float(), mask), dim=-1)
    return F.mse_loss(s @ s.T, t @ t.T)
