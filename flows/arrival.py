"""The marketplace-arrival flow: translate-subset -> train-new-language-adapter -> attention-distill-fusion
-> evaluate -> register, against ``relevance@champion`` as the teacher.

The registry is the state: the champion's tags say which marketplaces, languages and test sets
it has; the flow never reads anything from a previous process's memory. Arrivals hold a Prefect
global concurrency slot from reading the champion to setting the alias, so two arrivals at once
queue instead of both building on the same champion.
"""

from __future__ import annotations

import logging

from prefect import flow
from prefect.states import State

from flows import candidate
from flows.candidate import Candidate, Teacher
from models.config import GateConfig, LearnerConfig
from models.relevance import MarketplaceSpec
from tasks import registry
from tasks.config import entry_learner
from tasks.hashing import fingerprint, table_hash
from tasks.prefect_tasks import (
    adapter_task,
    fusion_task,
    load_storage_credentials,
    project_log_level,
    translate_task,
)
from tasks.registry_lock import registry_lock
from tasks.settings import get_settings
from tasks.steps import translation_routes

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


@flow(name="marketplace-arrival")
def marketplace_arrival(
    marketplace: str,
    language: str,
    train: str,
    valid: str,
    test: str,
    learner: LearnerConfig = entry_learner("arrival"),
    gate: GateConfig = GateConfig(),
    replace: bool = False,
    encoder: str | None = None,
) -> dict | State:
    """One marketplace joins the model; ends in the state ``Refused`` (after registering a challenger) when the
    gate keeps the champion.

    Args:
        marketplace: Marketplace id, e.g. es; it names the new adapter and its head.
        language: BCP-47 language of the marketplace, e.g. es.
        train: Train table (parquet, csv or jsonl; a local path or s3://).
        valid: Validation table (early stopping).
        test: Test table, stored in the registry so later arrivals re-evaluate this marketplace.
        learner: Every learner setting: adapter and fusion stages, distillation, translation, sizes, seed, device.
        gate: When the new version may replace relevance@champion.
        replace: Retrain a marketplace the champion already has (its most recent one only).
        encoder: Base encoder (hub id, local folder, or the embedded default); must match the champion's.
    """
    from mlflow.tracking import MlflowClient

    from tasks.data import load_marketplace
    from tasks.learner import resolve_settings_encoder

    project_log_level()
    load_storage_credentials()
    settings = get_settings()
    # Bad input fails here, before the lock, the registry or any training.
    data = load_marketplace(marketplace, language, train, valid, test, s3_endpoint_url=settings.s3_endpoint_url)
    for warning in data.warnings:
        log.warning("%s: %s", marketplace, warning)
    ref = resolve_settings_encoder(settings, encoder)
    candidate.start_tracking(settings)
    spec = MarketplaceSpec(marketplace, language)
    tables = {"train": data.train, "valid": data.valid, "test": data.test}
    sources = {"train": train, "valid": valid, "test": test}
    hashes = {split: table_hash(t) for split, t in tables.items()}
    work = settings.cache_dir / "steps" / marketplace

    def train_candidate(parent: str, teacher: Teacher) -> Candidate:
        version = teacher.version
        old = list(zip(version.marketplaces, version.languages, strict=True)) if version else []
        old_languages = [lang for _, lang in old]
        tr = learner.translation
        tkey = fingerprint("translate", hashes["train"], language, old_languages, tr.fraction, learner.seed, tr.backend)
        translated = translate_task(tkey, data.train, language, old_languages, fraction=tr.fraction, seed=learner.seed,
                                    backend=tr.backend, cache_dir=settings.cache_dir / "translations",
                                    parent_run_id=parent)
        akey = fingerprint("adapter", str(settings.cache_dir), teacher.folder_hash, ref.checksum, spec,
                           hashes["train"], hashes["valid"], learner.adapter, learner.max_length, learner.seed,
                           learner.seed_per_marketplace, learner.reduction_factor)
        stages = [candidate.run_stage(adapter_task, akey, teacher.model_dir, ref, spec, data.train, data.valid, learner,
                            work / akey[:20], parent_run_id=parent)]
        if version is not None:
            kept_valid = {m: t for m, t in teacher.valids.items() if m != marketplace}
            fkey = fingerprint("fusion", akey, {k: table_hash(v) for k, v in translated.items()}, learner.fusion,
                               learner.distill, learner.early_stopping, learner.seed_per_marketplace,
                               {m: table_hash(t) for m, t in kept_valid.items()}
                               if learner.early_stopping == "kept" else {})
            stages.append(candidate.run_stage(fusion_task, fkey, stages[0].model_dir, ref, data.train, data.valid,
                                              translated, learner, work / fkey[:20], kept_valid,
                                              parent_run_id=parent))
        kept = [(m, lang) for m, lang in old if m != marketplace]
        return Candidate(
            stages=stages, marketplaces=[*kept, (marketplace, language)],
            tests={**{m: t for m, t in teacher.tests.items() if m != marketplace}, marketplace: data.test},
            valids={**{m: t for m, t in teacher.valids.items() if m != marketplace}, marketplace: data.valid},
            new_marketplace=marketplace, new_tests={marketplace: data.test}, new_valids={marketplace: data.valid},
            data_hashes={marketplace: hashes},
            translation_routes=translation_routes(translated, old_languages),
        )

    run = candidate.RunSpec(
        kind="arrival", run_name=f"arrival-{marketplace}", label=marketplace,
        tags={"marketplace": marketplace, "language": language},
        params={"marketplace": marketplace, "language": language, "replace": replace},
        inputs=[candidate.Inputs(t, sources[s], f"{marketplace}-{s}", s) for s, t in tables.items()], work_dir=work,
        identity={"marketplace": marketplace, "language": language, "data": hashes, "replace": replace},
    )
    with registry_lock():
        client = MlflowClient()
        champion = registry.alias_version(client, registry.CHAMPION)
        if not replace and registry.learnt_from(champion, marketplace, hashes):
            # A repeated event for an upload already learnt (an operator's re-emit, a re-marked folder with the
            # same tables): nothing to train or register, and nothing an on-call alert should fire for.
            log.info("%s: %s@%s (version %s) already learnt it from exactly these tables; nothing to do",
                     marketplace, registry.MODEL_NAME, registry.CHAMPION, champion.version)
            return candidate.existing_summary(client, champion)
        teacher = registry.teacher_for_arrival(client, marketplace, replace=replace)
        summary = candidate.run_candidate(run, teacher, champion, ref, learner, gate, settings, train_candidate)
    if not summary["passed"]:
        return candidate.refused_state(summary)
    return summary
