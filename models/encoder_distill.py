"""A shallower base encoder distilled from the frozen one on in-domain text (Howell et al., DistilBERT's recipe).

The student is the teacher's own architecture with fewer layers, initialised from a subset of the teacher's layers
plus its embeddings, and saved as a plain encoder folder (``BertModel`` weights + the teacher's tokenizer): it
resolves by path like any encoder, and ``adapters``/AdapterFusion take it unchanged. Only its top ``train_layers``
are trained (by default one: the less of the copy distillation changes, the better adapters do on it); the rest
stay the teacher's, bit for bit. Which losses train it depends on the teacher:

- with an MLM head (mBERT, the paper's teacher): DistilBERT's α_ce·T²·KL on the MLM logits + α_mlm·MLM
  cross-entropy + α_cos·(1 − cos) on last hidden states, on dynamically masked text (15 %, 80/10/10);
- without one (multilingual-e5-small, the default encoder): there are no logits to match, so the hidden states
  carry it: cosine and MSE on the last hidden states, plus each student layer against the teacher layer it was
  copied from, or MiniLM's 2k+1 (hidden-state MSE and the KL between self-attention distributions), plus the MSE
  between the in-batch cosine similarities of the mean-pooled sentence vectors (relational distillation), on the
  text as it is -- there is no masked-LM objective, and the representations being matched are those of real text,
  which is what the frozen encoder will see under the adapters.

The loop is its own, not :func:`models.training.fit`: ``fit`` is built around epochs of labelled batches -- a
validation metric after each epoch, early stopping, checkpoints between epochs -- while distillation has no
validation metric to stop on and must checkpoint every N optimiser steps and resume mid-epoch. What it shares with
``fit`` is the optimiser recipe (AdamW, linear warm-up/decay from transformers, gradient clipping, autocast on GPU).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    DataCollatorWithPadding,
    PreTrainedModel,
    get_linear_schedule_with_warmup,
)
from transformers.trainer_pt_utils import get_length_grouped_indices

from models import distill_losses as L
from models.config import EncoderDistillConfig
from models.device import autocast, autocast_dtype, resolve_device
from models.encoder_ref import EncoderRef, weight_files
from models.folders import write_folder
from models.training import save_checkpoint

log = logging.getLogger(__name__)

MANIFEST = "mcl-distill.json"
MANIFEST_FORMAT = 1
CHECKPOINT = "distill-checkpoint.pt"
MLM_LOSSES = ("ce", "mlm", "cos")
HIDDEN_LOSSES = ("cos", "mse", "hidden", "attention")
ProgressFn = Callable[[int, dict[str, float]], None]
#: One unit of in-domain text: a query, title or description alone, or a (query, product title) pair, which the
#: relevance model reads as one cross-encoded sequence.
DomainText = str | tuple[str, str]


class DistillOutputError(ValueError):
    """The output folder exists and holds something other than this distillation's result."""


# ------------------------------------------------------------------------------------------- the student
def evenly_spaced_layers(teacher_layers: int, count: int) -> list[int]:
    """``count`` of ``teacher_layers`` layers, evenly spaced from the first to the last (rounded half up)."""
    if not 1 <= count <= teacher_layers:
        raise ValueError(f"cannot take {count} layers from a teacher with {teacher_layers}")
    return [math.floor(x + 0.5) for x in np.linspace(0, teacher_layers - 1, count)]


def copied_layers(teacher_layers: int, count: int, choice: str) -> list[int]:
    """The layers a student copies: the first ``count`` (``bottom``: the top layers dropped),
    :func:`evenly_spaced_layers` (``evenly``; for 12 -> 6 DistilBERT's [0, 2, 4, 7, 9, 11]) or the first
    ``count`` - 1 and the last (``bottom-and-last``: a contiguous block that computes exactly what the teacher's
    bottom does, then the teacher's output layer, so the output space stays the teacher's)."""
    if choice not in ("bottom", "evenly", "bottom-and-last"):
        raise ValueError(f"unknown layer choice {choice!r}: bottom, evenly or bottom-and-last")
    spread = evenly_spaced_layers(teacher_layers, count)  # checks that the teacher has ``count`` layers
    if choice == "evenly":
        return spread
    return list(range(count)) if choice == "bottom" else [*range(count - 1), teacher_layers - 1]


def matched_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """The teacher layer each student layer k imitates (0-based): the last of the k-th of ``student_layers`` equal
    groups, i.e. 2k + 1 when the student has half the layers (MiniLM/TinyBERT's uniform mapping)."""
    return [(k + 1) * teacher_layers // student_layers - 1 for k in range(student_layers)]


def layer_targets(teacher_layers: int, layers: Sequence[int], match: str) -> list[int]:
    """The teacher layer each student layer imitates: :func:`matched_layers` (``uniform``), or the layer it was
    copied from (``copied``), so that a copied block that already computes what the teacher computes there is
    asked to keep doing it, and only the layers that stand in for dropped ones are pulled towards new work."""
    if match not in ("uniform", "copied"):
        raise ValueError(f"unknown layer match {match!r}: uniform or copied")
    return list(layers) if match == "copied" else matched_layers(teacher_layers, len(layers))


def resolve_layers(teacher_layers: int, layers: Sequence[int] | None, choice: str) -> list[int]:
    """The layers to copy: the configured ones, or half the teacher's depth as :func:`copied_layers` chooses them."""
    if layers is None:
        return copied_layers(teacher_layers, max(1, teacher_layers // 2), choice)
    return check_layers(teacher_layers, layers)


def check_layers(teacher_layers: int, layers: Sequence[int]) -> list[int]:
    """``layers`` as a list, once every index is known to exist in a teacher of ``teacher_layers`` layers."""
    bad = [i for i in layers if not 0 <= i < teacher_layers]
    if bad:
        raise ValueError(f"layers {bad} do not exist in a teacher with {teacher_layers} layers "
                         f"(0..{teacher_layers - 1})")
    return list(layers)


@dataclass(frozen=True)
class StudentPlan:
    """Which teacher layers the student copies, which of its layers distillation trains, and which teacher layer
    each student layer is matched to: known from the teacher's config and the settings alone, so a flow can check
    them before any text is read or model loaded."""

    teacher_layers: int
    layers: list[int]
    trained: list[int]
    matched: list[int]


class StudentPlanError(ValueError):
    """The layer settings ask for something this teacher does not have."""


def plan_student(teacher: Path, cfg: EncoderDistillConfig) -> StudentPlan:
    """The :class:`StudentPlan` of distilling ``teacher`` with ``cfg``; :class:`StudentPlanError` names the setting
    that does not fit this teacher (a layer it does not have, more trained layers than the student has)."""
    depth = int(AutoConfig.from_pretrained(str(teacher)).num_hidden_layers)
    try:
        layers = resolve_layers(depth, cfg.layers, cfg.layer_choice)
        return StudentPlan(depth, layers, trained_layers(len(layers), cfg.train_layers),
                           layer_targets(depth, layers, cfg.layer_match))
    except ValueError as err:
        raise StudentPlanError(f"the distillation settings do not fit the teacher at {teacher}: {err}") from err


def trained_layers(student_layers: int, train_layers: int | str) -> list[int]:
    """The student layers (0-based) distillation trains: its top ``train_layers``, or every one (``all``)."""
    if train_layers == "all":
        return list(range(student_layers))
    if not 1 <= int(train_layers) <= student_layers:
        raise ValueError(f"train_layers {train_layers} does not fit a student of {student_layers} layers "
                         f"(1..{student_layers}, or all)")
    return list(range(student_layers - int(train_layers), student_layers))


def freeze_untrained(student: PreTrainedModel, trained: Sequence[int], *, train_word_embeddings: bool) -> None:
    """Leave only the ``trained`` layers trainable. With every layer trained the embeddings follow
    ``train_word_embeddings`` (DistilBERT trains them); with a subset, everything else -- embeddings included --
    stays the teacher's copy, so adapters placed in those layers see exactly what they would on the teacher."""
    layers = student.encoder.layer
    if len(trained) == len(layers):
        if not train_word_embeddings:
            student.get_input_embeddings().weight.requires_grad_(False)
        return
    student.requires_grad_(False)
    for k in trained:
        layers[k].requires_grad_(True)


def has_pooler(folder: Path) -> bool:
    """Whether an encoder folder's weights include a pooler (mBERT's do; the converted e5-small's do not), read
    from the weight files' keys without building the model."""
    for file in weight_files(Path(folder)):
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as fh:
                keys = list(fh.keys())
        else:
            keys = list(torch.load(file, map_location="cpu", mmap=True, weights_only=True))
        if any(f".{k}".startswith((".pooler.", ".bert.pooler.")) for k in keys):
            return True
    return False


def build_student(teacher: Path, out_dir: Path, layers: Sequence[int]) -> Path:
    """Write the student (the teacher's embeddings and ``layers``, copied bit for bit) and the teacher's tokenizer.

    The student carries a pooler only when the teacher's folder has one, so it loads exactly as the teacher does:
    this project's heads read the [CLS] token or mean-pool and never use the pooler."""
    out_dir = Path(out_dir)
    student_encoder(teacher, layers).save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(str(teacher)).save_pretrained(out_dir)
    return out_dir


def student_encoder(teacher: Path, layers: Sequence[int]) -> PreTrainedModel:
    """The teacher's architecture with only ``layers``, in memory: its embeddings and those layers copied bit for
    bit, a pooler only when the teacher's folder has one."""
    pooler = has_pooler(teacher)
    base = AutoModel.from_pretrained(str(teacher), add_pooling_layer=pooler)
    chosen = check_layers(int(base.config.num_hidden_layers), layers)
    config = copy.deepcopy(base.config)
    config.num_hidden_layers = len(chosen)
    student = type(base)(config, add_pooling_layer=pooler)
    position = {src: dst for dst, src in enumerate(chosen)}
    state = {}
    for key, value in base.state_dict().items():
        if key.startswith("encoder.layer."):
            index, rest = key.removeprefix("encoder.layer.").split(".", 1)
            if int(index) in position:
                state[f"encoder.layer.{position[int(index)]}.{rest}"] = value
        else:
            state[key] = value
    student.load_state_dict(state, strict=True)  # strict: every student weight comes from the teacher
    return student


def teacher_has_mlm_head(teacher: Path, choice: str = "auto") -> bool:
    """``auto``: whether the teacher's config names a masked-LM architecture (mBERT's hub folder: BertForMaskedLM;
    the converted e5-small: BertModel)."""
    if choice != "auto":
        return choice == "mlm"
    architectures = AutoConfig.from_pretrained(str(teacher)).architectures or []
    return any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in architectures)


def student_mlm_head(teacher: PreTrainedModel, student: PreTrainedModel) -> torch.nn.Module:
    """A copy of the teacher's MLM head for the student, its decoder tied to the student's word embeddings as the
    teacher's is to its own (so the student's logits start where the teacher's are)."""
    children = [m for name, m in teacher.named_children() if name != teacher.base_model_prefix]
    if len(children) != 1:
        raise ValueError(f"cannot tell the MLM head of {type(teacher).__name__} from its other modules")
    head_source = children[0]
    decoder = teacher.get_output_embeddings()
    decoder_name = next(name for name, m in head_source.named_modules() if m is decoder)
    head = copy.deepcopy(head_source)
    if teacher.config.tie_word_embeddings:
        head.get_submodule(decoder_name).weight = student.get_input_embeddings().weight
    return head


# ------------------------------------------------------------------------------------------- the losses
@dataclass(frozen=True)
class _Objective:
    mlm: bool
    cfg: EncoderDistillConfig
    matched: list[int]

    @property
    def needs_attentions(self) -> bool:
        return not self.mlm and self.cfg.alpha_attention > 0

    @property
    def needs_hidden_states(self) -> bool:
        return self.mlm or self.cfg.alpha_hidden > 0

    @property
    def weights(self) -> dict[str, float]:
        c = self.cfg
        if self.mlm:
            return {"ce": c.alpha_ce, "mlm": c.alpha_mlm, "cos": c.alpha_cos}
        return {"cos": c.alpha_cos, "mse": c.alpha_mse, "hidden": c.alpha_hidden, "attention": c.alpha_attention,
                "pooled": c.alpha_pooled, "similarity": c.alpha_similarity}

    @property
    def losses(self) -> list[str]:
        return [name for name, weight in self.weights.items() if weight > 0]


def distillation_losses(objective: _Objective, teacher: PreTrainedModel, student: PreTrainedModel,
                        head: torch.nn.Module | None, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every enabled loss term of one batch (unweighted); the caller weights and sums them."""
    labels = batch.pop("labels", None)
    mask = batch["attention_mask"]
    flags = {"output_hidden_states": objective.needs_hidden_states, "output_attentions": objective.needs_attentions}
    with torch.no_grad():
        t = teacher(**batch, **flags)
    s = student(**batch, **flags)
    cfg, parts = objective.cfg, {}
    if objective.mlm:
        t_last = t.hidden_states[-1]
        logits = head(s.last_hidden_state)
        if cfg.alpha_ce > 0:
            parts["ce"] = L.soft_target_loss(logits, t.logits, mask, cfg.temperature)
        if cfg.alpha_mlm > 0:
            parts["mlm"] = L.mlm_loss(logits, labels)
    else:
        t_last = t.last_hidden_state
        if cfg.alpha_mse > 0:
            parts["mse"] = L.hidden_mse(s.last_hidden_state, t_last, mask)
        if cfg.alpha_hidden > 0:  # hidden_states[0] is the embedding output: layer k's output is index k + 1
            parts["hidden"] = torch.stack([L.hidden_mse(s.hidden_states[k + 1], t.hidden_states[m + 1], mask)
                                           for k, m in enumerate(objective.matched)]).mean()
        if cfg.alpha_attention > 0:
            parts["attention"] = torch.stack([L.attention_kl(s.attentions[k], t.attentions[m], mask)
                                              for k, m in enumerate(objective.matched)]).mean()
        if cfg.alpha_pooled > 0:
            parts["pooled"] = L.pooled_mse(s.last_hidden_state, t_last, mask)
        if cfg.alpha_similarity > 0:
            parts["similarity"] = L.similarity_mse(s.last_hidden_state, t_last, mask)
    if cfg.alpha_cos > 0:
        parts["cos"] = L.cosine_loss(s.last_hidden_state, t_last, mask)
    return parts


# ------------------------------------------------------------------------------------------- the run
@dataclass
class DistillResult:
    """What a distillation produced and how it went (also the ``history`` of every optimiser step)."""

    path: str
    teacher: str
    teacher_checksum: str
    teacher_layers: int
    layers: list[int]
    matched_layers: list[int]
    mlm_teacher: bool
    losses: list[str]
    texts: int
    steps: int
    epochs: float
    seconds: float
    fingerprint: str
    history: list[dict[str, float]] = field(default_factory=list)
    trained_layers: list[int] | None = None  # student layers trained ([]: max_steps 0; None: written before it was kept)
    resumed_at: int = 0  # the optimiser step a checkpoint was resumed from (0: started fresh)
    reused: bool = False  # the output folder already held this very distillation: nothing was trained

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def trained(self) -> list[int]:
        """The student layers distillation trained; a result written before that was recorded trained every one."""
        return list(range(len(self.layers))) if self.trained_layers is None else self.trained_layers

    @property
    def trained_text(self) -> str:
        """:attr:`trained` as MLflow params and tags show it: ``3,4,5``, or ``none`` (``max_steps`` 0)."""
        return ",".join(map(str, self.trained)) or "none"


# Settings that do not change the student: which tables the text came from (the texts themselves count), the
# evaluation's, the checkpoint cadence and the device.
_NOT_THE_STUDENTS = {"splits", "descriptions", "checkpoint_steps", "device", "eval_seeds", "probe_fraction",
                     "eval_batch_size", "adapter_rows", "latency_pairs", "latency_batch_sizes", "latency_repeats"}


def run_fingerprint(texts: Sequence[DomainText], teacher: EncoderRef, cfg: EncoderDistillConfig) -> str:
    """The identity of a distillation: the teacher's weights, the texts in order and every setting that shapes the
    student. A checkpoint or a finished folder with another fingerprint is never resumed or reused; changing only
    the evaluation's settings reuses the student."""
    recipe = cfg.model_dump(exclude=_NOT_THE_STUDENTS)
    digest = hashlib.sha256(json.dumps({"teacher": teacher.checksum, "config": recipe}, sort_keys=True).encode())
    for text in texts:
        digest.update(text.encode("utf-8") if isinstance(text, str) else b"\x1e" + "\x1f".join(text).encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def read_result(folder: Path) -> DistillResult | None:
    """The result recorded in a finished student folder, or None when the folder holds no finished distillation."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        return None
    return DistillResult(**manifest["result"])


def _sample(texts: Sequence[DomainText], cfg: EncoderDistillConfig) -> list[DomainText]:
    texts = list(texts)
    if cfg.max_texts is None or len(texts) <= cfg.max_texts:
        return texts
    keep = np.sort(np.random.default_rng(cfg.seed).choice(len(texts), size=cfg.max_texts, replace=False))
    return [texts[i] for i in keep]


def _load(teacher: Path, student_dir: Path, objective: _Objective, device: torch.device):
    """Teacher (eval mode, frozen), student (train mode) and, for an MLM teacher, the student's MLM head.

    With the attention loss both run eager attention (sdpa returns no attention weights), and the student's
    attention dropout is off: the weights it returns are taken after dropout, whose zeros would make the KL to
    the teacher's distributions explode. The saved student gets the teacher's dropout back (:func:`_publish`)."""
    attn = {"attn_implementation": "eager"} if objective.needs_attentions else {}
    if objective.mlm:
        t = AutoModelForMaskedLM.from_pretrained(str(teacher), **attn)
    else:
        t = AutoModel.from_pretrained(str(teacher), add_pooling_layer=has_pooler(teacher), **attn)
    t = t.to(device).eval()
    for p in t.parameters():
        p.requires_grad_(False)
    no_attention_dropout = {"attention_probs_dropout_prob": 0.0} if objective.needs_attentions else {}
    s = AutoModel.from_pretrained(str(student_dir), add_pooling_layer=has_pooler(student_dir), **attn,
                                  **no_attention_dropout).to(device).train()
    head = student_mlm_head(t, s).to(device).train() if objective.mlm else None
    return t, s, head


def _collator(tokenizer, objective: _Objective):
    if objective.mlm:
        c = objective.cfg
        return DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=c.mlm_probability,
                                               mask_replace_prob=c.mask_replace_prob,
                                               random_replace_prob=c.random_replace_prob, return_tensors="pt")
    return DataCollatorWithPadding(tokenizer, return_tensors="pt")


def _check_output(out_dir: Path, fingerprint: str) -> DistillResult | None:
    """The finished result when ``out_dir`` already holds this distillation; an error when it holds anything else."""
    if not out_dir.exists():
        return None
    done = read_result(out_dir)
    if done is not None and done.fingerprint == fingerprint:
        return done
    if done is not None:
        raise DistillOutputError(f"{out_dir} holds another distilled encoder (teacher {done.teacher!r}, "
                                 f"{done.texts} texts, other settings); choose another output folder or remove it")
    if not out_dir.is_dir() or any(out_dir.iterdir()):
        raise DistillOutputError(f"{out_dir} exists and is not a distilled encoder; choose another output folder")
    return None


def _publish(student: PreTrainedModel, tokenizer, teacher_config, result: DistillResult, cfg: EncoderDistillConfig,
             out_dir: Path) -> None:
    """Weights, tokenizer and the manifest (written last) into a temp folder beside ``out_dir``, then renamed over it
    (:func:`models.folders.write_folder`): a killed run never leaves a folder that looks finished. ``out_dir`` is
    absent or an empty folder the user made beforehand (:func:`_check_output` refuses anything else)."""

    def write(building: Path) -> None:
        student.config.attention_probs_dropout_prob = teacher_config.attention_probs_dropout_prob
        student.save_pretrained(building)
        tokenizer.save_pretrained(building)
        manifest = {"format": MANIFEST_FORMAT, "created": datetime.now(UTC).isoformat(timespec="seconds"),
                    "config": cfg.model_dump(), "result": result.as_dict()}
        (building / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        building.chmod(0o777 & ~umask)  # mkdtemp's 0700 would hide a shared encoder from the team

    write_folder(out_dir, write)


def distill_encoder(
    texts: Sequence[DomainText],
    teacher: EncoderRef,
    out_dir: Path,
    cfg: EncoderDistillConfig,
    *,
    work_dir: Path,
    progress: ProgressFn | None = None,
) -> DistillResult:
    """Distil ``teacher`` into a student with fewer layers on ``texts`` and save it to ``out_dir``.

    Resumable: every ``cfg.checkpoint_steps`` optimiser steps the student, its MLM head, the optimiser, the schedule
    and the history go to ``work_dir`` (atomically), and a rerun with the same fingerprint (teacher, texts, settings)
    continues from there. Each micro-batch reseeds torch from (seed, micro-batch index) before masking and the
    forward pass, so a resumed run masks and drops out exactly as an uninterrupted one. An ``out_dir`` that already
    holds this distillation is returned as it is. ``progress(step, record)`` is called after every optimiser step.
    """
    out_dir, work_dir = Path(out_dir), Path(work_dir)
    texts = _sample(texts, cfg)
    if not texts:
        raise ValueError("no text to distil on")
    fingerprint = run_fingerprint(texts, teacher, cfg)
    finished = _check_output(out_dir, fingerprint)
    if finished is not None:
        log.info("%s already holds this distillation (%d steps); nothing to train", out_dir, finished.steps)
        return DistillResult(**{**finished.as_dict(), "path": str(out_dir), "reused": True})

    device = resolve_device(cfg.device)
    plan = plan_student(teacher.path, cfg)
    teacher_layers, layers, trained = plan.teacher_layers, plan.layers, plan.trained
    objective = _Objective(teacher_has_mlm_head(teacher.path, cfg.teacher_head), cfg, plan.matched)
    if objective.mlm and len(trained) < len(layers):
        log.warning("%s has an MLM head, and only student layers %s are distilled: the defaults were chosen on a "
                    "teacher without one (multilingual-e5-small); the paper's recipe for an MLM teacher is "
                    "`--preset paper` (every layer trained)", teacher.name, trained)
    initial = build_student(teacher.path, work_dir / "student-init", layers)
    t_model, student, head = _load(teacher.path, initial, objective, device)
    tokenizer = AutoTokenizer.from_pretrained(str(initial))
    features = [dict(f) for f in _tokenise(tokenizer, texts, cfg.max_length, objective.mlm)]
    collate = _collator(tokenizer, objective)
    freeze_untrained(student, trained, train_word_embeddings=cfg.train_word_embeddings)
    modules = [student] + ([head] if head is not None else [])
    params = list({id(p): p for m in modules for p in m.parameters() if p.requires_grad}.values())

    micro_per_epoch = math.ceil(len(features) / cfg.batch_size)
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.gradient_accumulation_steps)
    total = cfg.epochs * steps_per_epoch if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * steps_per_epoch)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype(device, cfg.precision) == torch.float16)
    checkpoint = work_dir / CHECKPOINT
    start, history, seconds = 0, [], 0.0
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        if state.get("fingerprint") == fingerprint:
            student.load_state_dict(state["student"])
            if head is not None:
                head.load_state_dict(state["head"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start, history, seconds = state["step"], state["history"], state["seconds"]
            log.info("resuming the distillation from %s at step %d of %d", checkpoint, start, total)
        else:
            log.warning("%s belongs to another distillation; starting over", checkpoint)
    log.info("distilling %s (%d layers -> %s, training student layers %s against teacher layers %s) on %d texts: "
             "%s; %d optimiser steps", teacher.name, teacher_layers, layers, trained, objective.matched, len(texts),
             ", ".join(objective.losses), total)

    weights = objective.weights
    orders: dict[int, np.ndarray] = {}
    bar = tqdm(total=total, initial=start, desc="distil encoder", dynamic_ncols=True)
    for step in range(start, total):
        t0 = time.perf_counter()
        epoch, within = divmod(step, steps_per_epoch)
        if epoch not in orders:
            orders = {epoch: _epoch_order(features, cfg, epoch)}
        micro = [m for m in range(within * cfg.gradient_accumulation_steps,
                                  (within + 1) * cfg.gradient_accumulation_steps) if m < micro_per_epoch]
        sums: dict[str, float] = {}
        for m in micro:
            torch.manual_seed(cfg.seed * 1_000_003 + epoch * micro_per_epoch + m)
            rows = orders[epoch][m * cfg.batch_size:(m + 1) * cfg.batch_size]
            batch = {k: v.to(device) for k, v in collate([features[i] for i in rows]).items()}
            with autocast(device, cfg.precision):
                parts = distillation_losses(objective, t_model, student, head, batch)
                loss = sum(weights[k] * v for k, v in parts.items())
            scaler.scale(loss / len(micro)).backward()
            for key, value in {"loss": loss, **parts}.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach()) / len(micro)
        scaler.unscale_(optimizer)
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - t0
        record = {"step": step + 1, "epoch": epoch + 1, **sums, "lr": lr}
        history.append(record)
        bar.update(1)
        bar.set_postfix(loss=f"{sums['loss']:.4f}")
        if (step + 1) % cfg.checkpoint_steps == 0 and step + 1 < total:
            save_checkpoint(checkpoint, {
                "fingerprint": fingerprint, "step": step + 1, "student": student.state_dict(),
                "head": head.state_dict() if head is not None else None, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "history": history, "seconds": seconds})
        if progress is not None:
            progress(step + 1, record)
    bar.close()

    result = DistillResult(
        path=str(out_dir), teacher=teacher.name, teacher_checksum=teacher.checksum, teacher_layers=teacher_layers,
        layers=layers, matched_layers=objective.matched, trained_layers=trained if total else [],
        mlm_teacher=objective.mlm,
        losses=objective.losses, texts=len(texts), steps=total, epochs=round(total / steps_per_epoch, 4),
        seconds=seconds,
        fingerprint=fingerprint, history=history, resumed_at=start,
    )
    _publish(student.cpu(), tokenizer, t_model.config, result, cfg, out_dir)
    checkpoint.unlink(missing_ok=True)
    shutil.rmtree(initial, ignore_errors=True)
    log.info("distilled encoder saved to %s (%d steps, %.0f s, final loss %.4f)", out_dir, total, seconds,
             history[-1]["loss"] if history else float("nan"))
    return result


def _epoch_order(features: Sequence[dict], cfg: EncoderDistillConfig, epoch: int) -> np.ndarray:
    """The texts' order in ``epoch``, a function of (seed, epoch) alone so a resumed run sees the same batches.

    Grouped by length (transformers' length-grouped sampling, as ``Trainer(group_by_length=True)``): a random
    permutation cut into mega-batches of 50 batches, each sorted by length, so a batch pads to a length its texts
    share. In random batches of the demo and taxonomy text 44 % of the tokens were padding."""
    if not cfg.group_by_length:
        return np.random.default_rng([cfg.seed, epoch]).permutation(len(features))
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    lengths = [len(f["input_ids"]) for f in features]
    return np.asarray(get_length_grouped_indices(lengths, cfg.batch_size, generator=generator))


def _tokenise(tokenizer, texts: Sequence[DomainText], max_length: int, special_tokens_mask: bool) -> list[dict]:
    """Each text once, unpadded (the collator pads per batch); a (query, title) pair as one sequence, cut as the
    learner cuts it (longest first), so the student learns the cross-encoded input the adapters will read. The MLM
    collator reads the special-tokens mask so it never masks [CLS]/[SEP] (padding it adds is marked special too)."""
    features: list[dict] = [{} for _ in texts]
    singles = [i for i, t in enumerate(texts) if isinstance(t, str)]
    pairs = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    for rows, columns in ((singles, ([texts[i] for i in singles],)),
                          (pairs, ([texts[i][0] for i in pairs], [texts[i][1] for i in pairs]))):
        if not rows:
            continue
        enc = tokenizer(*columns, truncation="longest_first", max_length=max_length, padding=False,
                        return_special_tokens_mask=special_tokens_mask)
        for j, i in enumerate(rows):
            features[i] = {k: enc[k][j] for k in enc.keys()}
    return features
