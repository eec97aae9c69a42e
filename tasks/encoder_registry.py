"""A distilled encoder in the MLflow registry: registered model ``encoder-<name>``, one version per distinct student.

The version's source is the encoder folder itself, logged as the run's ``encoder/`` artifacts (a plain Hugging Face
folder: download it and pass it as ``--encoder``); beside it in the run are the loss curves, the frozen-evaluation
table and plot, and the distillation report, and on the version are the facts an operator filters on (checksum,
teacher, layers, parameters, ms per pair, mean probe ROC-AUC).

Never half-registered: everything is logged into the run first and the version is created last, in one call that
carries all its tags and its card; a failure before that leaves no version (and no empty registered model this call
created), so a retry starts clean. A version is keyed by the student's weights checksum: a retry after the version
was created finds it and returns it instead of registering the same encoder twice.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import mlflow
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tasks import encoder_reporting
from tasks.encoder_evaluation import EncoderEvaluation

if TYPE_CHECKING:
    from models.encoder_distill import DistillResult
    from models.encoders import EncoderRef

log = logging.getLogger(__name__)

PREFIX = "encoder-"
CHECKSUM_TAG = "checksum"
ENCODER_ARTIFACT = "encoder"
_BATCH = 1000  # metrics per log_batch call (MLflow's limit)


def encoder_model_name(name: str) -> str:
    """``encoder-<name>``, with anything but letters, digits, '.', '_' and '-' turned into '-'."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    if not cleaned:
        raise ValueError(f"encoder name {name!r} has no letter or digit to name a registered model with")
    return cleaned if cleaned.startswith(PREFIX) else PREFIX + cleaned


@dataclass(frozen=True)
class EncoderRegistrationRequest:
    """The student folder and everything known about it when it is registered."""

    name: str  # registered as encoder-<name>
    student: EncoderRef  # the folder and its weights checksum
    teacher: EncoderRef
    result: DistillResult
    evaluation: EncoderEvaluation
    data: Mapping[str, str] = field(default_factory=dict)  # data roots, marketplaces, splits, text hash


@dataclass(frozen=True)
class EncoderRegistration:
    name: str
    version: str
    run_id: str
    source: str
    checksum: str
    already_registered: bool = False


def version_with_checksum(client: MlflowClient, name: str, checksum: str) -> str | None:
    """The (oldest) version of ``name`` holding the encoder with this weights checksum."""
    try:
        found = client.search_model_versions(f"name = '{name}' AND tags.{CHECKSUM_TAG} = '{checksum}'")
    except MlflowException:
        return None
    return str(min(int(v.version) for v in found)) if found else None


def _log_run_contents(r: EncoderRegistrationRequest) -> None:
    """Into the active run: the folder, the plots, the tables and every number (loss curves as step metrics)."""
    mlflow.log_artifacts(str(r.student.path), artifact_path=ENCODER_ARTIFACT)
    mlflow.log_figure(encoder_reporting.loss_figure(r.result.history, r.result.losses), "loss_curves.png")
    mlflow.log_figure(encoder_reporting.evaluation_figure(r.evaluation), "frozen_evaluation.png")
    mlflow.log_table(r.evaluation.table(), "frozen_evaluation.json")
    mlflow.log_dict(r.evaluation.as_dict(), "frozen_evaluation_seeds.json")
    mlflow.log_dict(r.result.as_dict(), "distill_report.json")
    run_id = mlflow.active_run().info.run_id
    now = int(time.time() * 1000)
    curves = [Metric(f"distill.{k}", float(v), now, int(record["step"]))
              for record in r.result.history for k, v in record.items() if k not in ("step", "epoch")]
    summary = {**r.evaluation.metrics(), "distill.seconds": r.result.seconds, "distill.steps": float(r.result.steps),
               "distill.texts": float(r.result.texts)}
    metrics = curves + [Metric(k, float(v), now, 0) for k, v in summary.items()]
    client = MlflowClient()
    for start in range(0, len(metrics), _BATCH):
        client.log_batch(run_id, metrics=metrics[start:start + _BATCH])


def version_tags(r: EncoderRegistrationRequest) -> dict[str, str]:
    ev, res = r.evaluation, r.result
    return {
        CHECKSUM_TAG: r.student.checksum,
        "teacher": r.teacher.name,
        "teacher_checksum": r.teacher.checksum,
        "layers": ",".join(map(str, res.layers)),
        "trained_layers": res.trained_text,
        "teacher_layers": str(res.teacher_layers),
        "losses": ",".join(res.losses),
        "parameters": str(ev.parameters["student"]),
        "teacher_parameters": str(ev.parameters["teacher"]),
        **{f"ms_per_pair.b{size}": f"{ms:.3f}" for size, ms in ev.latency_ms["student"].items()},
        **{f"latency_ratio.b{size}": f"{ev.latency_ratio(size):.4f}" for size in ev.latency_ms["student"]},
        **{f"probe_auc.{kind}": f"{ev.mean(kind):.6f}" for kind in ev.aucs},
        "texts": str(res.texts),
        "steps": str(res.steps),
        **{str(k): str(v) for k, v in r.data.items()},
    }


def register_encoder(request: EncoderRegistrationRequest) -> EncoderRegistration:
    """Log the student's folder and review material into the active run, then create the version (see module doc)."""
    r = request
    client = MlflowClient()
    name = encoder_model_name(r.name)
    existing = version_with_checksum(client, name, r.student.checksum)
    if existing is not None:
        mv = client.get_model_version(name, existing)
        log.info("%s version %s already holds this encoder (checksum %s): not registered again", name, existing,
                 r.student.checksum[:12])
        return EncoderRegistration(name, existing, mv.run_id, mv.source, r.student.checksum, already_registered=True)
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("register_encoder runs inside an MLflow run (the version's source run)")
    _log_run_contents(r)
    card = encoder_reporting.encoder_card(name=name, checksum=r.student.checksum, result=r.result,
                                          evaluation=r.evaluation, data=r.data)
    mlflow.log_text(card, "encoder_card.md")
    created_model = False
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Base encoders distilled by `mcl encoder distill`; "
                                                         "pass a version's folder as --encoder.")
        created_model = True
    source = mlflow.get_artifact_uri(ENCODER_ARTIFACT)
    try:
        mv = client.create_model_version(name, source=source, run_id=run.info.run_id, tags=version_tags(r),
                                         description=card)
    except BaseException:
        if created_model and not client.search_model_versions(f"name = '{name}'"):
            client.delete_registered_model(name)  # no empty model left behind for a reviewer to wonder about
        raise
    mlflow.set_tags({"encoder_model": name, "encoder_version": str(mv.version)})
    log.info("registered %s version %s (checksum %s) from %s", name, mv.version, r.student.checksum[:12], source)
    return EncoderRegistration(name, str(mv.version), run.info.run_id, source, r.student.checksum)
