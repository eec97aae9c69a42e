"""Scheduled retraining: refresh the champion on fresh data, through the same gate as an arrival.

Two kinds of method (``learner.retrain.method``). The default, ``redistill``, is described next. The joint methods
(``async-kd``, and the baselines ``uniform``, ``dwa``, ``gradnorm``) keep training the champion's own fusion and head
on every fresh marketplace at once, each marketplace with its own loss; under ``async-kd`` each converges on its own
schedule (Lu et al.; ``models.joint_training``). Either way the result goes through the same gate and registry.

Fresh data for existing marketplaces sits in ``<data_root>/<id>/`` with a ready marker (the landing-zone
layout, local or ``s3://``). The champion's adapters stay as they are; a fresh fusion over them learns
the fresh labelled data (cross-entropy) while distilling the champion's fusion attention on it (L_AD),
so the routing the model learnt for every language is kept while the fusion and its head catch up with
the new data. The candidate is evaluated on every stored test set and promoted only if no marketplace
regresses more than the gate allows against the champion. A champion with one marketplace has no
fusion yet; its adapter is retrained instead, as a replacing arrival with the same settings.

Fresh data is used once. A version records what it was trained on (``data_hashes``: an arrival's tables,
and a retraining's fresh train/valid tables as ``retrain_train``/``retrain_valid``; a retraining also writes
``fresh_data``: each landing folder with its hashes), and a folder whose train and valid tables some version
already trained on is skipped with a log line naming that version: a weekly schedule over a landing zone
nobody has touched since does nothing, instead of retraining (and re-judging) the same folder every week.
"""

from __future__ import annotations

import json
import logging

import pandas as pd
from prefect import flow
from prefect.states import Failed, State

from flows import candidate
from flows.arrival import marketplace_arrival
from flows.candidate import Candidate, Teacher
from models.config import GateConfig, LearnerConfig
from tasks import registry
from tasks.config import entry_learner
from tasks.hashing import fingerprint, table_hash
from tasks.landing import scan_landing_zone
from tasks.prefect_tasks import (
    joint_retrain_task,
    load_storage_credentials,
    project_log_level,
    redistill_task,
)
from tasks.registry_lock import registry_lock
from tasks.settings import get_settings

log = logging.getLogger(__name__)


@flow(name="scheduled-retraining")
def scheduled_retraining(
    data_root: str,
    learner: LearnerConfig = entry_learner("retrain"),
    gate: GateConfig = GateConfig(),
    encoder: str | None = None,
) -> dict | State | None:
    """Retrain the champion's fusion on fresh data of its marketplaces (``learner.retrain.method``); None when there is
    nothing to retrain.

    Args:
        data_root: Landing zone of fresh data: <data_root>/<marketplace>/{train,valid,test} with a _READY marker
            (a local folder or s3://).
        learner: Every learner setting; retrain.method chooses the method (redistill: the fusion stage and
            distillation, starting from the champion's fusion; async-kd and the joint baselines: retrain.* with the
            fusion stage's optimiser settings), the adapter stage a one-marketplace champion's retraining.
        gate: When the retrained version may replace relevance@champion.
        encoder: Base encoder (hub id, local folder, or the embedded default); must match the champion's.
    """
    from mlflow.tracking import MlflowClient

    from tasks.data import load_marketplace
    from tasks.learner import resolve_settings_encoder

    project_log_level()
    load_storage_credentials()
    settings = get_settings()
    candidate.start_tracking(settings)
    champion = registry.alias_version(MlflowClient(), registry.CHAMPION)
    if champion is None:
        log.info("no champion yet: nothing to retrain")
        return None
    ready = {f.marketplace: f for f in scan_landing_zone(data_root, s3_endpoint_url=settings.s3_endpoint_url)}
    fresh = [ready[m] for m in champion.marketplaces if m in ready]
    if not fresh:
        log.info("no ready fresh data for %s under %s: nothing to retrain", ",".join(champion.marketplaces), data_root)
        return None
    # Bad input fails here, before the lock, the registry or any training.
    data = {f.marketplace: load_marketplace(f.marketplace, f.language, f.train, f.valid, f.test,
                                            s3_endpoint_url=settings.s3_endpoint_url) for f in fresh}
    hashes = {m: {"train": table_hash(d.train), "valid": table_hash(d.valid)} for m, d in data.items()}
    unused = registry.unused_fresh_data(MlflowClient(), {f.marketplace: f.folder for f in fresh}, hashes)
    if not unused:
        log.info("every ready fresh folder under %s was already trained on: nothing to retrain", data_root)
        return None
    fresh = [f for f in fresh if f.marketplace in unused]
    data = {m: d for m, d in data.items() if m in unused}
    hashes = {m: h for m, h in hashes.items() if m in unused}
    if len(champion.marketplaces) == 1:
        log.info("champion has one marketplace and no fusion: retraining its adapter as a replacing arrival")
        try:
            return marketplace_arrival(**fresh[0].as_payload(), replace=True, learner=learner, gate=gate,
                                       encoder=encoder)
        except registry.PromotionRefused as refusal:  # the subflow's refusal is this run's, not a failure of it
            return Failed(name=candidate.REFUSED, message=str(refusal), data=refusal)

    train = pd.concat([d.train for d in data.values()], ignore_index=True)
    valid = pd.concat([d.valid for d in data.values()], ignore_index=True)
    ref = resolve_settings_encoder(settings, encoder)
    fresh_data = {f.marketplace: {"landing": f.key, **hashes[f.marketplace]} for f in fresh}
    work = settings.cache_dir / "steps" / "retrain"

    method = learner.retrain.method

    def train_candidate(parent: str, teacher: Teacher) -> Candidate:
        version = teacher.version
        if method == "redistill":
            key = fingerprint("refusion", teacher.folder_hash, ref.checksum, hashes, learner.fusion, learner.distill,
                              learner.max_length, learner.seed)
            stage = candidate.run_stage(redistill_task, key, teacher.model_dir, ref, train, valid, learner,
                                        work / key[:20], parent_run_id=parent)
        else:
            key = fingerprint("joint", teacher.folder_hash, ref.checksum, hashes, learner.fusion, learner.retrain,
                              learner.distill.regularization, learner.max_length, learner.seed)
            stage = candidate.run_stage(joint_retrain_task, key, teacher.model_dir, ref,
                                        {m: d.train for m, d in data.items()}, {m: d.valid for m, d in data.items()},
                                        learner, work / key[:20], parent_run_id=parent)
        return Candidate(
            stages=[stage], marketplaces=list(zip(version.marketplaces, version.languages, strict=True)),
            tests=teacher.tests, valids=teacher.valids,
            data_hashes={m: {**version.data_hashes.get(m, {}), **{f"retrain_{k}": v for k, v in h.items()}}
                         for m, h in hashes.items()},
        )

    run = candidate.RunSpec(
        kind="retrain", run_name=f"retrain-{'-'.join(data)}", label="retrain " + ",".join(data),
        tags={"marketplaces": ",".join(data)},
        params={"fresh_marketplaces": ",".join(data), "retrain_method": method,
                **{f"fresh_data.{f.marketplace}": f.key for f in fresh}},
        inputs=[candidate.Inputs(getattr(data[f.marketplace], s), getattr(f, s), f"{f.marketplace}-{s}-fresh", s)
                for f in fresh for s in ("train", "valid")],
        work_dir=work, identity={"fresh": hashes},
        version_tags={"fresh_data": json.dumps(fresh_data, sort_keys=True)},
    )
    with registry_lock():
        champion = registry.alias_version(MlflowClient(), registry.CHAMPION)  # re-read under the lock
        summary = candidate.run_candidate(run, champion, champion, ref, learner, gate, settings, train_candidate)
    summary["retrained_on"] = list(data)
    if not summary["passed"]:
        return candidate.refused_state(summary)
    return summary
