"""Scheduled retraining: refresh the champion on fresh data, through the same gate as an arrival.

Fresh data for existing marketplaces sits in ``<data_root>/<id>/`` with a ready marker (the landing-zone
layout, local or ``s3://``). The champion's adapters stay as they are; a fresh fusion over them learns
the fresh labelled data (cross-entropy) while distilling the champion's fusion attention on it (L_AD),
so the routing the model learnt for every language is kept while the fusion and its head catch up with
the new data. The candidate is evaluated on every stored test set and promoted only if no marketplace
regresses more than ``max_regression`` against the champion. A champion with one marketplace has no
fusion yet; its adapter is retrained instead, as a replacing arrival.
"""

from __future__ import annotations

import logging

import mlflow
import pandas as pd
from prefect import flow

from flows.arrival import flat_config, log_review_artifacts, marketplace_arrival, run_stage, start_tracking
from tasks import registry
from tasks.hashing import fingerprint, folder_hash, table_hash
from tasks.landing import Landing, scan_landing_zone
from tasks.learner import learner_config
from tasks.pipeline import evaluate_task, fetch_teacher_task, redistill_task, register_task, registry_lock
from tasks.settings import get_settings

log = logging.getLogger(__name__)


@flow(name="scheduled-retraining")
def scheduled_retraining(
    data_root: str,
    max_regression: float = 0.01,
    fusion_epochs: int = 5,
    fusion_lr: float = 1e-4,
    distill_weight: float = 1.0,
    warm_start: bool = True,
    batch_size: int = 32,
    patience: int = 2,
    max_length: int = 64,
    adapter_epochs: int = 5,
    translate_fraction: float = 0.3,
    encoder: str | None = None,
    seed: int | None = None,
) -> dict | None:
    """Re-distil the champion's fusion on fresh data of its marketplaces; None when there is nothing to retrain.

    ``warm_start`` starts the new fusion from the champion's (a refresh, not a new arrival); ``adapter_epochs``
    and ``translate_fraction`` only matter for a single-marketplace champion, whose adapter is retrained.
    """
    from mlflow.tracking import MlflowClient

    from tasks.data import load_marketplace
    from tasks.learner import resolve_settings_encoder

    settings = get_settings()
    start_tracking(settings)
    champion = registry.alias_version(MlflowClient(), registry.CHAMPION)
    if champion is None:
        log.info("no champion yet: nothing to retrain")
        return None
    ready = {f.marketplace: f for f in scan_landing_zone(data_root, s3_endpoint_url=settings.s3_endpoint_url)}
    fresh = [ready[m] for m in champion.marketplaces if m in ready]
    if not fresh:
        log.info("no ready fresh data for %s under %s: nothing to retrain", ",".join(champion.marketplaces), data_root)
        return None
    if len(champion.marketplaces) == 1:
        log.info("champion has one marketplace and no fusion: retraining its adapter as a replacing arrival")
        return marketplace_arrival(**fresh[0].as_payload(), replace=True, max_regression=max_regression,
                                   translate_fraction=translate_fraction, adapter_epochs=adapter_epochs,
                                   fusion_epochs=fusion_epochs, batch_size=batch_size, max_length=max_length,
                                   encoder=encoder, seed=seed)

    seed = settings.seed if seed is None else seed
    cfg = learner_config(fusion_epochs=fusion_epochs, fusion_lr=fusion_lr, distill_weight=distill_weight,
                         warm_start=warm_start, batch_size=batch_size, patience=patience, max_length=max_length,
                         seed=seed, device=settings.device)
    # Bad input fails here, before the lock, the registry or any training.
    data = {f.marketplace: load_marketplace(f.marketplace, f.language, f.train, f.valid, f.test,
                                            s3_endpoint_url=settings.s3_endpoint_url) for f in fresh}
    train = pd.concat([d.train for d in data.values()], ignore_index=True)
    valid = pd.concat([d.valid for d in data.values()], ignore_index=True)
    ref = resolve_settings_encoder(settings, encoder)
    with registry_lock():
        client = MlflowClient()
        champion = registry.alias_version(client, registry.CHAMPION)  # re-read under the lock
        summary = _retrain(client, champion, fresh, data, train, valid, ref, cfg, settings, max_regression)
    if not summary["passed"]:
        raise registry.PromotionRefused(summary["version"], summary["reasons"])
    return summary


def _retrain(client, champion: registry.VersionInfo, fresh: list[Landing], data: dict, train: pd.DataFrame,
             valid: pd.DataFrame, ref, cfg, settings, max_regression: float) -> dict:
    label = "retrain " + ",".join(data)
    work = settings.cache_dir / "steps" / "retrain"
    with mlflow.start_run(run_name=f"retrain-{'-'.join(data)}") as run:
        parent = run.info.run_id
        mlflow.set_tags({"kind": "retrain", "teacher_version": champion.version, "marketplaces": ",".join(data)})
        mlflow.log_params({"fresh_marketplaces": ",".join(data), "max_regression": max_regression,
                           "encoder": ref.name, **flat_config(cfg)})
        for f in fresh:
            for split in ("train", "valid"):
                table = getattr(data[f.marketplace], split)
                mlflow.log_input(mlflow.data.from_pandas(table, source=getattr(f, split),
                                                         name=f"{f.marketplace}-{split}-fresh"), context=split)
        teacher_dir, tests = fetch_teacher_task(champion, settings.cache_dir / "registry")
        hashes = {m: {"train": table_hash(d.train), "valid": table_hash(d.valid)} for m, d in data.items()}
        key = fingerprint("refusion", folder_hash(teacher_dir), ref.checksum, hashes, cfg.fusion, cfg.distill,
                          cfg.max_length)
        stage = run_stage(redistill_task, key, teacher_dir, ref, train, valid, cfg, work / key[:20],
                          parent_run_id=parent)
        ekey = fingerprint("evaluate", folder_hash(stage.model_dir), {m: table_hash(t) for m, t in tests.items()})
        evaluation = evaluate_task(ekey, stage.model_dir, ref, tests, None, settings.device, parent_run_id=parent)
        order = list(zip(champion.marketplaces, champion.languages, strict=True))
        registration = register_task({
            "model_dir": stage.model_dir, "encoder": ref, "marketplaces": champion.marketplaces,
            "languages": champion.languages, "new_marketplace": None, "parent": champion, "champion": champion,
            "evaluation": evaluation, "new_tests": {},
            "data_hashes": {m: {**champion.data_hashes.get(m, {}), **{f"retrain_{k}": v for k, v in h.items()}}
                            for m, h in hashes.items()},
            "max_regression": max_regression, "adapter_margin": 0.0, "work_dir": work / "register" / parent,
            "kind": "retrain",
        }, parent_run_id=parent)
        log_review_artifacts(client, registration, champion, order, evaluation, [stage], ref.name, label)
    return {"version": registration.version, "alias": registration.alias, "aucs": evaluation.aucs,
            "retrained_on": list(data), "checks": registration.checks, "reasons": registration.reasons,
            "passed": registration.passed, "run_id": parent}
