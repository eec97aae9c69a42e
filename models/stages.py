"""The method's learning stages, each a configuration of the one training loop.

Stage 2, ``train_language_adapter``: a new Pfeiffer adapter A_t and its head learn D_t on the
frozen encoder. Stage 3, ``distill_fusion``: a fresh AdapterFusion Ψ_t over A_1..A_t learns D_t
with cross-entropy while translated batches T_k are distilled from the frozen previous model's
fusion attention (L_AD); without translations every D_t batch gets CE + L_AD (paper §4.2).
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from models.adapter_parts import head_module, load_state, state_of
from models.config import DistillConfig, LearnerConfig
from models.distill_losses import soft_target_loss
from models.fusion_attention import FusionAttentionRecorder, fusion_modules
from models.losses import attention_distillation_loss, relevance_loss
from models.metrics import roc_auc
from models.pairs import TASK_SOURCE, Batch, EncodedPairs, Pairs, batches
from models.relevance import MarketplaceSpec, RelevanceModel, fusion_name
from models.teacher import TeacherAttention, TeacherPredictions
from models.training import FitResult, fit, seed_everything

log = logging.getLogger(__name__)


@dataclass
class StageReport:
    stage: str
    marketplace: str
    fit: FitResult
    total_parameters: int
    details: dict = field(default_factory=dict)

    @property
    def trainable_fraction(self) -> float:
        return self.fit.trainable_parameters / self.total_parameters

    def as_dict(self) -> dict:
        return {**asdict(self), "trainable_fraction": self.trainable_fraction}


def init_seed(learner: LearnerConfig, name: str) -> int:
    """The seed a new adapter or fusion ``name`` is initialised from (see ``seed_per_marketplace``)."""
    return learner.seed + (zlib.crc32(name.encode()) % 100_003 if learner.seed_per_marketplace else 0)


def _steps(split: EncodedPairs, batch_size: int) -> int:
    return math.ceil(len(split) / batch_size)


def _validation(model: RelevanceModel, valid: Pairs, setup: str, batch_size: int,
                kept: Mapping[str, Pairs] | None = None):
    """The metric early stopping maximises: ROC-AUC on ``valid``, or its mean with every ``kept`` set."""
    sets = [valid, *(kept or {}).values()]
    return lambda: float(np.mean([roc_auc(s.labels, model.predict_proba(s, setup=setup, batch_size=batch_size))
                                  for s in sets]))


def train_language_adapter(
    model: RelevanceModel,
    spec: MarketplaceSpec,
    train: Pairs,
    valid: Pairs,
    learner: LearnerConfig,
    *,
    checkpoint: Path | None = None,
) -> StageReport:
    """Add A_t (+ head) for ``spec`` and train only those on D_t; old adapters are neither used nor changed."""
    cfg, seed = learner.adapter, learner.seed
    seed_everything(init_seed(learner, spec.id))
    model.add_marketplace(spec, learner.reduction_factor)
    head = model.activate(spec.id)
    params = model.parameters_of(adapters_=[spec.id], heads=[spec.id])
    model.set_trainable(params)
    data = model.encode(train)
    pad = model.tokenizer.pad_token_id

    def loss_fn(batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        loss = relevance_loss(model.logits(batch, head), batch.labels)
        return loss, {"ce": float(loss.detach())}

    result = fit(
        model.net, params,
        epoch_batches=lambda epoch: batches(data, cfg.batch_size, pad, shuffle=True, seed=seed + epoch),
        loss_fn=loss_fn,
        evaluate=_validation(model, valid, spec.id, cfg.eval_batch_size),
        cfg=cfg, steps_per_epoch=_steps(data, cfg.batch_size), desc=f"adapter[{spec.id}]", checkpoint=checkpoint,
    )
    model.set_trainable([])
    return StageReport("adapter", spec.id, result, model.total_parameters())


def mixed_epoch(splits: Sequence[EncodedPairs], batch_size: int, pad: int, seed: int) -> list[Batch]:
    """All batches of all splits, each batch from one split, in a seeded random order."""
    epoch = [b for i, s in enumerate(splits) for b in batches(s, batch_size, pad, shuffle=True, seed=seed + 7919 * i)]
    order = np.random.default_rng(seed).permutation(len(epoch))
    return [epoch[i] for i in order]


def distillation_loss(
    model: RelevanceModel,
    student: str,
    recorder: FusionAttentionRecorder,
    teacher: TeacherAttention,
    distill: DistillConfig,
    distill_task: bool,
    predictions: TeacherPredictions | None = None,
) -> Callable[[Batch], tuple[torch.Tensor, dict[str, float]]]:
    """Stage 3's per-batch loss, routed by the batch's source.

    D_t batches: cross-entropy (+ λ·L_AD when ``distill_task``, the no-translation variant);
    translated batches: λ·L_AD only as in the paper (the old marketplaces' behaviour is what the
    teacher's attention carries), or also cross-entropy with ``translated_ce``; every batch: the
    fusion value regulariser. ``predictions`` (M_{t-1}'s logits) add μ·output distillation wherever
    L_AD applies, to test whether the head, which D_t's cross-entropy moves and L_AD does not hold,
    is what the old marketplaces lose (on the demo data it was not:
    benchmarks/reports/distill-extensions-2cpu). With ``omega="per-source"``
    ω is the raw slice on translated batches and renormalised on D_t batches; a renormalised ω over a
    single old adapter is 1 whatever the student does, so that term is left out rather than computed
    as an exact zero whose rounding noise Adam would amplify.
    """

    def omega_for(batch: Batch) -> str:
        if distill.omega != "per-source":
            return distill.omega
        return "renorm" if batch.source == TASK_SOURCE else "slice"

    def loss_fn(batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        with recorder.record() as student_scores:
            logits = model.logits(batch, student)
        parts: dict[str, float] = {}
        total = torch.zeros((), device=logits.device)
        if batch.source == TASK_SOURCE or distill.translated_ce:
            ce = relevance_loss(logits, batch.labels)
            total = total + ce
            parts["ce"] = float(ce.detach())
        omega = omega_for(batch)
        constant = omega == "renorm" and teacher.num_old == 1
        distilled = batch.source != TASK_SOURCE or distill_task
        if predictions is not None and distilled:
            kd = soft_target_loss(logits, predictions.for_batch(batch), torch.ones_like(batch.labels),
                                  distill.output_temperature)
            total = total + distill.output_weight * kd
            parts["kd"] = float(kd.detach())
        if distill.weight > 0 and distilled and not constant:
            ad = attention_distillation_loss(teacher.for_batch(batch), student_scores, batch.attention_mask,
                                             omega, distill.layer_reduction,
                                             new_share=distill.new_share if omega == "slice" else 0.0)
            total = total + distill.weight * ad
            parts["ad"] = float(ad.detach())
        if distill.regularization:
            reg = model.net.get_fusion_regularization_loss()
            if reg is not None:
                total = total + reg
                parts["reg"] = float(reg.detach())
        return total, parts

    return loss_fn


def distill_fusion(
    model: RelevanceModel,
    train: Pairs,
    valid: Pairs,
    translated: Sequence[Pairs],
    learner: LearnerConfig,
    *,
    kept_valid: Mapping[str, Pairs] | None = None,
    checkpoint: Path | None = None,
) -> StageReport:
    """Train a fresh fusion Ψ_t over every adapter (old first), distilling Ψ_{t-1}'s attention.

    ``translated`` holds T_1..T_{t-1}: D_t pairs in the old languages, each ``Pairs`` with its own
    ``source`` name. The model must already hold the new adapter (stage 2). Afterwards the model's
    fusion is Ψ_t and Ψ_{t-1} is gone. ``kept_valid`` holds the old marketplaces' validation sets, which early
    stopping averages in when ``learner.early_stopping == "kept"``.
    """
    cfg, distill = learner.fusion, learner.distill
    names = model.adapter_names
    if len(names) < 2:
        raise ValueError("fusion needs at least two adapters; at t = 1 the model is the first adapter alone")
    sources = [p.source for p in translated]
    if TASK_SOURCE in sources or len(set(sources)) != len(sources):
        raise ValueError(f"translated sets need distinct sources other than {TASK_SOURCE!r}, got {sources}")
    seed_everything(init_seed(learner, fusion_name(names)))
    teacher_fusion = model.fusion
    previous_head = teacher_fusion or names[0]  # M_{t-1}'s head: its fusion's, or the first adapter's at t = 2
    student = model.add_fusion(names, warm_start_from=teacher_fusion if distill.warm_start else None,
                               head_from=previous_head if distill.head_init == "previous" else None)
    teacher = TeacherAttention(model, teacher_fusion, len(fusion_modules(model.net, student)), cfg.precision)
    task = model.encode(train)
    extra = [model.encode(p) for p in translated]
    if distill.cache_teacher and distill.weight > 0:
        teacher.build_cache(extra or [task], cfg.eval_batch_size)
    predictions = None
    if distill.output_weight > 0:
        predictions = TeacherPredictions(model, previous_head, cfg.precision)
        predictions.build_cache(extra or [task], cfg.eval_batch_size)
    kept = kept_valid if learner.early_stopping == "kept" else None
    result = _train_fusion(model, student, teacher, task, extra, valid, learner, checkpoint, kept, predictions)
    if teacher_fusion is not None:
        model.remove_fusion(teacher_fusion)
    model.fusion = student
    details = {
        "teacher": teacher_fusion or names[0],
        "translated_sources": sources,
        "translated_examples": sum(len(s) for s in extra),
        "distill": distill.model_dump(),
    }
    return StageReport("fusion", names[-1], result, model.total_parameters(), details)


def redistill_fusion(
    model: RelevanceModel,
    train: Pairs,
    valid: Pairs,
    learner: LearnerConfig,
    *,
    checkpoint: Path | None = None,
) -> StageReport:
    """Retraining: a fresh fusion over the SAME adapters learns fresh labelled data of existing marketplaces
    with cross-entropy while distilling the current fusion's attention on that data (CE + λ·L_AD per batch).

    Adapters stay as they are, so old knowledge in them is untouched; the teacher's attention keeps the
    routing the current model learnt. Teacher and student would carry the same fusion name, so the
    teacher's attention is cached first and its fusion removed before the student is created.
    """
    cfg, distill = learner.fusion, learner.distill
    teacher_fusion = model.fusion
    if teacher_fusion is None:
        raise ValueError("nothing to re-distil: the model has no fusion (a single marketplace is retrained by "
                         "replacing its adapter)")
    seed_everything(learner.seed)
    names = model.adapter_names
    teacher = TeacherAttention(model, teacher_fusion, len(fusion_modules(model.net, teacher_fusion)), cfg.precision)
    task = model.encode(train)
    if distill.weight > 0:
        teacher.build_cache([task], cfg.eval_batch_size)
    kept_fusion = state_of(fusion_modules(model.net, teacher_fusion))
    kept_head = state_of([head_module(model.net, teacher_fusion)])
    model.remove_fusion(teacher_fusion)
    student = model.add_fusion(names)
    if distill.warm_start:
        load_state(fusion_modules(model.net, student), kept_fusion)
    if distill.head_init == "previous":
        load_state([head_module(model.net, student)], kept_head)
    result = _train_fusion(model, student, teacher, task, [], valid, learner, checkpoint)
    model.fusion = student
    return StageReport("refusion", student, result, model.total_parameters(),
                       {"teacher": teacher_fusion, "distill": distill.model_dump(), "examples": len(task)})


def _train_fusion(
    model: RelevanceModel,
    student: str,
    teacher: TeacherAttention,
    task: EncodedPairs,
    extra: Sequence[EncodedPairs],
    valid: Pairs,
    learner: LearnerConfig,
    checkpoint: Path | None,
    kept_valid: Mapping[str, Pairs] | None = None,
    predictions: TeacherPredictions | None = None,
) -> FitResult:
    """Stage 3's training, shared by an arrival and a retraining: only the student fusion and its head learn."""
    cfg, distill = learner.fusion, learner.distill
    recorder = FusionAttentionRecorder(model.net, student)
    params = model.parameters_of(fusion=student, heads=[student])
    model.set_trainable(params)
    model.activate(student)
    pad = model.tokenizer.pad_token_id
    distill_task = not extra  # paper §4.2: no translations, so D_t itself carries L_AD
    loss_fn = distillation_loss(model, student, recorder, teacher, distill, distill_task, predictions)
    steps = _steps(task, cfg.batch_size) + sum(_steps(s, cfg.batch_size) for s in extra)
    result = fit(
        model.net, params,
        epoch_batches=lambda epoch: mixed_epoch([task, *extra], cfg.batch_size, pad, learner.seed + epoch),
        loss_fn=loss_fn,
        evaluate=_validation(model, valid, student, cfg.eval_batch_size, kept_valid),
        cfg=cfg, steps_per_epoch=steps, desc=f"fusion[{student}]", checkpoint=checkpoint,
    )
    model.set_trainable([])
    return result


def retrain_jointly(
    model: RelevanceModel,
    train: Mapping[str, Pairs],
    valid: Mapping[str, Pairs],
    learner: LearnerConfig,
    *,
    report: Mapping[str, Pairs] | None = None,
) -> StageReport:
    """Retraining on fresh data of several marketplaces at once by a joint method (``learner.retrain.method``):
    the champion's own fusion and head (or its adapters) keep training, each marketplace with its own loss, and the
    last checkpoint is the result (``models.joint_training``). ``report``: sets scored at every evaluation for the
    benchmark's curves, never used to choose."""
    from models.joint_training import train_jointly

    retrain, cfg = learner.retrain, learner.fusion
    if retrain.method == "redistill":
        raise ValueError("retrain.method='redistill' is redistill_fusion, not a joint method")
    fusion = model.fusion
    if fusion is None:
        raise ValueError("a joint retraining trains the champion's fusion: a single marketplace is retrained by "
                         "replacing its adapter")
    unknown = sorted(set(train) - set(model.adapter_names))
    if unknown:
        raise ValueError(f"fresh data for {unknown}, which the champion has no adapter for")
    seed_everything(learner.seed)
    if retrain.trains == "fusion":
        params = model.parameters_of(fusion=fusion, heads=[fusion])
    else:
        params = model.parameters_of(adapters_=model.adapter_names)
    model.set_trainable(params)
    head = model.activate(fusion)
    regularizer = model.net.get_fusion_regularization_loss if (
        learner.distill.regularization and retrain.trains == "fusion") else None
    result = train_jointly(
        model.net, params, lambda batch: model.logits(batch, head),
        {m: model.encode(p) for m, p in train.items()}, {m: model.encode(p) for m, p in valid.items()},
        cfg, retrain, pad=model.tokenizer.pad_token_id, seed=learner.seed, desc=f"{retrain.method}[{fusion}]",
        regularizer=regularizer, report={m: model.encode(p) for m, p in (report or {}).items()})
    model.set_trainable([])
    model.activate(None)
    details = {"retrain": retrain.model_dump(), "joint": {k: v for k, v in result.as_dict().items() if k != "fit"}}
    return StageReport("joint-retrain", fusion, result.fit, model.total_parameters(), details)
