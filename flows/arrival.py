"""The marketplace-arrival flow: translate-subset -> train-new-language-adapter -> attention-distill-fusion
-> evaluate -> register, against ``relevance@champion`` as the teacher.

The registry is the state: the champion's tags say which marketplaces, languages and test sets
it has; the flow never reads anything from a previous process's memory. Arrivals hold a Prefect
global concurrency slot from reading the champion to setting the alias, so two arrivals at once
queue instead of both building on the same champion.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow

from models.relevance import MarketplaceSpec
from models.sequence import LearnerConfig
from tasks import registry, reporting
from tasks.hashing import fingerprint, folder_hash, table_hash
from tasks.learner import learner_config
from tasks.pipeline import (
    Evaluation,
    Registration,
    StageOutput,
    adapter_task,
    evaluate_task,
    fetch_teacher_task,
    fusion_task,
    register_task,
    registry_lock,
    translate_task,
)
from tasks.settings import Settings, get_settings

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


def start_tracking(settings: Settings) -> None:
    """A tracking server chooses its own artifact root (e.g. proxied S3); a local store gets ours."""
    uri = settings.resolved_tracking_uri
    local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
    registry.setup_tracking(uri, settings.artifact_location or (settings.resolved_artifact_location if local else None))


def log_review_artifacts(
    client: Any,
    registration: Registration,
    teacher: registry.VersionInfo | None,
    marketplaces: list[tuple[str, str]],
    evaluation: Evaluation,
    stages: list[StageOutput],
    encoder_name: str,
    label: str,
) -> None:
    """Into the active (arrival) run: per-marketplace metrics, the R[t][k] heatmap, the model card."""
    mlflow.log_metrics({f"test_auc.{k}": v for k, v in evaluation.aucs.items()})
    if evaluation.adapter_auc is not None:
        mlflow.log_metric("adapter_only_auc", evaluation.adapter_auc)
    ids = [m for m, _ in marketplaces]
    history = [(v.tags.get("marketplace") or f"v{v.version}", v.aucs) for v in registry.lineage(client, teacher)] \
        if teacher else []
    matrix = reporting.auc_matrix([*history, (label, evaluation.aucs)], ids)
    mlflow.log_figure(reporting.heatmap_figure(matrix), "roc_auc_matrix.png")
    mlflow.log_table(matrix.reset_index(names="after"), "roc_auc_matrix.json")
    if evaluation.attention:
        mlflow.log_figure(reporting.attention_figure(evaluation.attention), "fusion_attention_by_language.png")
    mlflow.log_figure(reporting.roc_figure(evaluation.labels, evaluation.scores, evaluation.aucs), "roc_curves.png")
    info = registry.version_info(client, registration.version)
    card = reporting.model_card(
        version=registration.version, alias=registration.alias, marketplaces=marketplaces, encoder=encoder_name,
        matrix=matrix, gate_checks=registration.checks, gate_reasons=registration.reasons,
        stages=[s.report for s in stages], attention=evaluation.attention, data_hashes=info.data_hashes,
    )
    mlflow.log_text(card, "model_card.md")
    mlflow.set_tags({"relevance_version": registration.version, "alias": registration.alias})


@flow(name="marketplace-arrival")
def marketplace_arrival(
    marketplace: str,
    language: str,
    train: str,
    valid: str,
    test: str,
    translate_fraction: float = 0.3,
    replace: bool = False,
    max_regression: float = 0.01,
    adapter_margin: float = 0.0,
    adapter_epochs: int = 5,
    fusion_epochs: int = 5,
    batch_size: int = 32,
    adapter_lr: float = 1e-3,
    fusion_lr: float = 1e-4,
    patience: int = 2,
    max_length: int = 64,
    distill_weight: float = 1.0,
    translation_backend: str = "auto",
    encoder: str | None = None,
    seed: int | None = None,
) -> dict:
    """One marketplace joins the model; fails (after registering a challenger) when the gate refuses it."""
    from mlflow.tracking import MlflowClient

    from tasks.data import load_marketplace
    from tasks.learner import resolve_settings_encoder

    if not 0 <= translate_fraction <= 1:
        raise ValueError(f"translate_fraction must be 0 (no translation) or in (0, 1], got {translate_fraction}")
    settings = get_settings()
    seed = settings.seed if seed is None else seed
    cfg = learner_config(adapter_epochs=adapter_epochs, fusion_epochs=fusion_epochs, batch_size=batch_size,
                         adapter_lr=adapter_lr, fusion_lr=fusion_lr, patience=patience, max_length=max_length,
                         distill_weight=distill_weight, seed=seed, device=settings.device)
    # Bad input fails here, before the lock, the registry or any training.
    data = load_marketplace(marketplace, language, train, valid, test, s3_endpoint_url=settings.s3_endpoint_url)
    for warning in data.warnings:
        log.warning("%s: %s", marketplace, warning)
    ref = resolve_settings_encoder(settings, encoder)
    start_tracking(settings)
    spec = MarketplaceSpec(marketplace, language)
    tables = {"train": data.train, "valid": data.valid, "test": data.test}
    sources = {"train": train, "valid": valid, "test": test}

    with registry_lock():
        client = MlflowClient()
        teacher = registry.teacher_for_arrival(client, marketplace, replace=replace)
        champion = registry.alias_version(client, registry.CHAMPION)
        work = settings.cache_dir / "steps" / marketplace
        with mlflow.start_run(run_name=f"arrival-{marketplace}") as run:
            parent = run.info.run_id
            mlflow.set_tags({"marketplace": marketplace, "language": language, "kind": "arrival",
                             "teacher_version": teacher.version if teacher else "none"})
            mlflow.log_params({"marketplace": marketplace, "language": language, "translate_fraction": translate_fraction,
                               "replace": replace, "max_regression": max_regression, "adapter_margin": adapter_margin,
                               "encoder": ref.name, "translation_backend": translation_backend,
                               **flat_config(cfg)})
            for split, table in tables.items():
                mlflow.log_input(mlflow.data.from_pandas(table, source=sources[split], name=f"{marketplace}-{split}"),
                                 context=split)

            teacher_dir, old_tests = (None, {})
            if teacher is not None:
                teacher_dir, old_tests = fetch_teacher_task(teacher, settings.cache_dir / "registry")
            old = [(m, lang) for m, lang in zip(teacher.marketplaces, teacher.languages, strict=True)] if teacher else []
            hashes = {split: table_hash(t) for split, t in tables.items()}
            teacher_hash = folder_hash(teacher_dir) if teacher_dir else "none"

            tkey = fingerprint("translate", hashes["train"], language, [lang for _, lang in old],
                               translate_fraction, seed, translation_backend)
            translated = translate_task(tkey, data.train, language, [lang for _, lang in old],
                                        fraction=translate_fraction, seed=seed, backend=translation_backend,
                                        cache_dir=settings.cache_dir / "translations", parent_run_id=parent)
            akey = fingerprint("adapter", str(settings.cache_dir), teacher_hash, ref.checksum, spec, hashes["train"],
                               hashes["valid"], cfg.adapter, cfg.max_length)
            adapter = run_stage(adapter_task, akey, teacher_dir, ref, spec, data.train, data.valid, cfg,
                                work / akey[:20], parent_run_id=parent)
            stages = [adapter]
            final_key = akey
            if teacher is not None:
                final_key = fingerprint("fusion", akey, {k: table_hash(v) for k, v in translated.items()},
                                        cfg.fusion, cfg.distill)
                stages.append(run_stage(fusion_task, final_key, adapter.model_dir, ref, data.train, data.valid,
                                        translated, cfg, work / final_key[:20], parent_run_id=parent))
            final = stages[-1]
            tests = {**{m: t for m, t in old_tests.items() if m != marketplace}, marketplace: data.test}
            ekey = fingerprint("evaluate", folder_hash(final.model_dir), {m: table_hash(t) for m, t in tests.items()})
            evaluation = evaluate_task(ekey, final.model_dir, ref, tests, marketplace, settings.device,
                                       parent_run_id=parent)
            kept = [(m, lang) for m, lang in old if m != marketplace]
            order = [*kept, (marketplace, language)]
            registration = register_task({
                "model_dir": final.model_dir, "encoder": ref, "marketplaces": [m for m, _ in order],
                "languages": [lang for _, lang in order], "new_marketplace": marketplace, "parent": teacher,
                "champion": champion, "evaluation": evaluation, "new_tests": {marketplace: data.test},
                "data_hashes": {marketplace: hashes}, "max_regression": max_regression,
                "adapter_margin": adapter_margin, "work_dir": work / "register" / parent,
            }, parent_run_id=parent)
            log_review_artifacts(client, registration, teacher, order, evaluation, stages, ref.name, marketplace)

    summary = {"version": registration.version, "alias": registration.alias, "aucs": evaluation.aucs,
               "adapter_auc": evaluation.adapter_auc, "adapter_version": registration.adapter_version,
               "checks": registration.checks, "run_id": parent}
    if not registration.passed:
        raise registry.PromotionRefused(registration.version, registration.reasons)
    return summary


def run_stage(stage_task: Any, *args: Any, **kwargs: Any) -> StageOutput:
    """Run a cached training task; a cached result whose model folder is gone (cache dir cleaned) is recomputed."""
    output = stage_task(*args, **kwargs)
    if not Path(output.model_dir, "manifest.json").is_file():
        log.warning("%s: cached model folder %s is gone; recomputing", stage_task.name, output.model_dir)
        output = stage_task.with_options(refresh_cache=True)(*args, **kwargs)
    return output


def flat_config(cfg: LearnerConfig) -> dict[str, Any]:
    """``adapter.epochs``-style keys for MLflow params."""
    from dataclasses import asdict

    out: dict[str, Any] = {}
    for section, values in asdict(cfg).items():
        if isinstance(values, dict):
            out.update({f"{section}.{k}": v for k, v in values.items()})
        else:
            out[section] = values
    return out


def arrival_paths(folder: str | Path) -> dict[str, str]:
    """train/valid/test file paths of a marketplace folder (the layout ``mcl data demo`` writes)."""
    folder = str(folder).rstrip("/")
    return {split: f"{folder}/{split}.parquet" for split in SPLITS}
