"""The arrival's and the retraining's steps as plain functions over tables and model folders.

Tests call these directly; :mod:`tasks.prefect_tasks` wraps each in a Prefect task (retries, persisted
results keyed by data hashes and configuration, one nested MLflow run per step). Training steps checkpoint
every epoch inside their keyed work folder, so a crash *inside* a step resumes from the last finished epoch.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from tasks.learner import to_pairs, translated_source
from tasks.records import Evaluation, StageOutput

if TYPE_CHECKING:
    from models.config import LearnerConfig
    from models.encoders import EncoderRef
    from models.relevance import MarketplaceSpec

log = logging.getLogger(__name__)


NO_ROUTE = "none (§4.2)"


def translate_step(
    train: pd.DataFrame,
    source_language: str,
    target_languages: list[str],
    *,
    fraction: float,
    seed: int,
    backend: str,
    cache_dir: Path,
) -> dict[str, pd.DataFrame]:
    """T_1..T_{t-1}: a fraction of D_t in each older language that has a route.

    With ``backend="auto"`` an older language this machine cannot translate into is left out, with a
    warning: the arrival distils on the languages it can reach and only that language falls back to the
    paper's §4.2 variant (one untranslatable language must not cost the others their translations). A
    backend named explicitly must serve every language, and fails before anything is translated.
    """
    targets = sorted({lang for lang in target_languages if lang != source_language})
    if not targets or fraction <= 0:
        return {}
    from tasks.translation import translate_subset
    from tasks.translation.errors import NoRouteError

    def translate(languages: list[str]) -> dict[str, pd.DataFrame]:
        return dict(translate_subset(train, source_language, languages, fraction=fraction, seed=seed,
                                     backend=backend, cache_dir=cache_dir))

    if backend != "auto":
        return translate(targets)
    tables: dict[str, pd.DataFrame] = {}
    for target in targets:  # the subset is seeded, so every language gets the same rows
        try:
            tables.update(translate([target]))
        except NoRouteError as err:
            log.warning("no translation for %s -> %s on this machine; %s is not distilled on translated text "
                        "(paper §4.2 for it): %s", source_language, target, target, str(err).splitlines()[0])
    return tables


def translation_routes(tables: Mapping[str, pd.DataFrame], target_languages: list[str]) -> dict[str, str]:
    """The route each older language was reached by (``es>en``), or ``none (§4.2)``: what the run records."""
    return {lang: str(tables[lang]["translation_route"].iloc[0]) if lang in tables and len(tables[lang]) else NO_ROUTE
            for lang in target_languages}


def _load_or_create(teacher_dir: str | None, encoder: EncoderRef, cfg: LearnerConfig):
    from models.device import resolve_device
    from models.pairs import TextFormat
    from models.relevance import RelevanceModel

    if teacher_dir is None:
        return RelevanceModel.create(encoder, text=TextFormat.of(cfg), device=cfg.device)
    return RelevanceModel.load(teacher_dir, encoder, device=resolve_device(cfg.device))


def _stage_in_folder(model_dir: str | None, encoder: EncoderRef, cfg: LearnerConfig, work_dir: Path, name: str,
                     train: Callable[[Any, Path], Any]) -> StageOutput:
    """Load the step's input model, train it with per-epoch checkpoints in ``work_dir``, save the result there."""
    model = _load_or_create(model_dir, encoder, cfg)
    checkpoint = work_dir / f"{name}-epoch.pt"
    report = train(model, checkpoint)
    out = model.save(work_dir / "model")
    checkpoint.unlink(missing_ok=True)  # the saved folder supersedes the epoch checkpoint
    return StageOutput(str(out), report.as_dict())


def adapter_step(
    teacher_dir: str | None,
    encoder: EncoderRef,
    spec: MarketplaceSpec,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    cfg: LearnerConfig,
    work_dir: Path,
) -> StageOutput:
    """Stage 2 on top of the teacher M_{t-1} (or a bare encoder): the teacher's adapters and fusion stay as they are."""
    from models.stages import train_language_adapter

    return _stage_in_folder(teacher_dir, encoder, cfg, work_dir, "adapter", lambda model, checkpoint: (
        train_language_adapter(model, spec, to_pairs(train), to_pairs(valid), cfg, checkpoint=checkpoint)))


def fusion_step(
    adapter_dir: str,
    encoder: EncoderRef,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    translated: Mapping[str, pd.DataFrame],
    cfg: LearnerConfig,
    work_dir: Path,
    kept_valid: Mapping[str, pd.DataFrame] | None = None,
) -> StageOutput:
    """Stage 3: a fresh fusion over all adapters, distilling the teacher fusion's attention on T_k
    (``kept_valid``: the old marketplaces' kept validation sets, for ``early_stopping = "kept"``)."""
    from models.stages import distill_fusion

    sets = [to_pairs(table, translated_source(lang)) for lang, table in sorted(translated.items())]
    kept = {mid: to_pairs(table) for mid, table in (kept_valid or {}).items()}
    return _stage_in_folder(adapter_dir, encoder, cfg, work_dir, "fusion", lambda model, checkpoint: (
        distill_fusion(model, to_pairs(train), to_pairs(valid), sets, cfg, kept_valid=kept, checkpoint=checkpoint)))


def redistill_step(
    teacher_dir: str,
    encoder: EncoderRef,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    cfg: LearnerConfig,
    work_dir: Path,
) -> StageOutput:
    """Retraining: a fresh fusion over the champion's adapters, CE on fresh data + L_AD against the champion's fusion."""
    from models.stages import redistill_fusion

    return _stage_in_folder(teacher_dir, encoder, cfg, work_dir, "refusion", lambda model, checkpoint: (
        redistill_fusion(model, to_pairs(train), to_pairs(valid), cfg, checkpoint=checkpoint)))


def joint_retrain_step(
    teacher_dir: str,
    encoder: EncoderRef,
    train: Mapping[str, pd.DataFrame],
    valid: Mapping[str, pd.DataFrame],
    cfg: LearnerConfig,
    work_dir: Path,
) -> StageOutput:
    """Retraining by a joint method (async-kd, uniform, dwa, gradnorm): the champion's fusion and head keep training
    on every fresh marketplace at once, each with its own loss. Its rewinds need the in-memory checkpoints of the run,
    so a crashed joint retraining starts again from the champion rather than from an epoch checkpoint."""
    from models.stages import retrain_jointly

    return _stage_in_folder(teacher_dir, encoder, cfg, work_dir, "joint", lambda model, _checkpoint: (
        retrain_jointly(model, {m: to_pairs(t) for m, t in train.items()}, {m: to_pairs(t) for m, t in valid.items()},
                        cfg)))


def evaluate_step(
    model_dir: str,
    encoder: EncoderRef,
    tests: Mapping[str, pd.DataFrame],
    valids: Mapping[str, pd.DataFrame],
    new_marketplace: str | None,
    device: str,
) -> Evaluation:
    """ROC-AUC on every marketplace's validation set (the gate's) and test set (reported), plus the new
    marketplace's adapter-only scores when fused."""
    from models.device import resolve_device
    from models.fusion_attention import fusion_attention_profile
    from models.metrics import roc_auc
    from models.relevance import RelevanceModel

    model = RelevanceModel.load(model_dir, encoder, device=resolve_device(device))
    pairs = {mid: to_pairs(table) for mid, table in tests.items()}
    scores = {mid: model.predict_proba(p) for mid, p in pairs.items()}
    aucs = {mid: roc_auc(pairs[mid].labels, s) for mid, s in scores.items()}
    valid_pairs = {mid: to_pairs(table) for mid, table in valids.items()}
    valid_aucs = {mid: roc_auc(p.labels, model.predict_proba(p)) for mid, p in valid_pairs.items()}
    adapter_auc = adapter_valid_auc = None
    if model.fusion is not None and new_marketplace is not None:
        adapter_auc = roc_auc(pairs[new_marketplace].labels,
                              model.predict_proba(pairs[new_marketplace], setup=new_marketplace))
        if new_marketplace in valid_pairs:
            adapter_valid_auc = roc_auc(valid_pairs[new_marketplace].labels,
                                        model.predict_proba(valid_pairs[new_marketplace], setup=new_marketplace))
    return Evaluation(
        aucs=aucs,
        adapter_auc=adapter_auc,
        valid_aucs=valid_aucs,
        adapter_valid_auc=adapter_valid_auc,
        attention=fusion_attention_profile(model, pairs),
        labels={mid: [int(x) for x in p.labels] for mid, p in pairs.items()},
        scores={mid: [float(x) for x in s] for mid, s in scores.items()},
    )


def single_adapter_folder(model_dir: str | Path, marketplace: str, out_dir: Path) -> Path:
    """A model folder holding only ``marketplace``'s adapter and head (what ``adapter-<id>`` registers)."""
    from models.relevance import MANIFEST, RelevanceModel

    source = Path(model_dir)
    manifest = RelevanceModel.read_manifest(source)
    spec = next((m for m in manifest["marketplaces"] if m["id"] == marketplace), None)
    if spec is None:
        raise ValueError(f"{source} has no adapter for marketplace {marketplace!r}")
    out = Path(out_dir)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(source / "adapters" / marketplace, out / "adapters" / marketplace)
    (out / MANIFEST).write_text(json.dumps({**manifest, "marketplaces": [spec], "fusion": None}, indent=2))
    return out
