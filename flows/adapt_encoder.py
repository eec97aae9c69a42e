"""The encoder-adaptation flow: extract in-domain text -> distil a shallower student -> evaluate it frozen ->
register it as ``encoder-<name>`` (Howell et al.'s domain-specific distillation of the base encoder).

The result is a plain encoder folder: ``--encoder <out>`` (or ``MCL_ENCODER=<out>``) starts a new lineage on it.
Adapters are tied to the encoder they were trained on, so an arrival against a champion built on another encoder is
refused; a lineage on the new encoder starts from an empty registry or after the old champion is retired.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import mlflow
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows import candidate
from models.config import EncoderDistillConfig, LearnerConfig
from models.encoder_distill import plan_student, run_fingerprint
from tasks.config import flat
from tasks.domain_text import distill_inputs, load_marketplaces, texts_hash
from tasks.encoder_registry import EncoderRegistrationRequest, encoder_model_name
from tasks.hashing import fingerprint, table_hash
from tasks.prefect_tasks import (
    distill_encoder_task,
    evaluate_encoder_task,
    extract_text_task,
    load_storage_credentials,
    project_log_level,
    register_encoder_task,
)
from tasks.settings import get_settings

log = logging.getLogger(__name__)


@flow(name="adapt-encoder")
def adapt_encoder(
    data: list[str],
    out: str,
    teacher: str | None = None,
    name: str | None = None,
    distill: EncoderDistillConfig = EncoderDistillConfig(),
    learner: LearnerConfig = LearnerConfig(),
) -> dict:
    """Distil the base encoder into one with half the layers on the marketplaces' own text, compare it frozen with
    its teacher and with an undistilled copy, and register it in MLflow.

    Args:
        data: Data roots, each holding one folder per marketplace (<root>/<id>/{train,valid,test}; local or s3://):
            their text is distilled on and their tables score the result.
        out: Folder the distilled encoder is written to (on the machine that runs the flow); pass it as --encoder
            to start a lineage on it.
        teacher: Encoder to distil: hub id, local folder, or the embedded multilingual-e5-small; default: the
            configured encoder (MCL_ENCODER).
        name: The encoder is registered as encoder-<name>; default: the output folder's name.
        distill: Every distillation and evaluation setting (layers, losses and their weights, optimiser, text,
            probes, adapter view, latency).
        learner: The learner settings the adapter view trains its adapters with (stage 1 of an arrival: adapter
            epochs, batch, learning rate, reduction factor, text format, seed); default: the learner's defaults.
    """
    from models.encoders import resolve_encoder
    from tasks.learner import resolve_settings_encoder

    project_log_level()
    load_storage_credentials()
    settings = get_settings()
    # Bad input fails here, before a teacher is loaded or anything is trained.
    marketplaces = load_marketplaces(data, s3_endpoint_url=settings.s3_endpoint_url)
    ref = resolve_settings_encoder(settings, teacher)
    plan = plan_student(ref.path, distill)
    log.info("student: teacher layers %s (of %d); distillation trains student layers %s, matched to teacher layers "
             "%s", plan.layers, plan.teacher_layers, plan.trained, plan.matched)
    candidate.start_tracking(settings)
    out_dir = Path(out).expanduser().resolve()
    model_name = encoder_model_name(name or out_dir.name)
    work = settings.cache_dir / "steps" / "adapt-encoder"
    with mlflow.start_run(run_name=f"adapt-encoder-{model_name}") as run:
        parent = run.info.run_id
        mlflow.set_tags({"kind": "encoder", "encoder_model": model_name, "teacher": ref.name})
        mlflow.log_params({"teacher": ref.name, "teacher_checksum": ref.checksum, "out": str(out_dir),
                           "data": ",".join(data), "marketplaces": ",".join(marketplaces), **flat(distill),
                           **{f"learner.{k}": v for k, v in flat(learner).items()}})
        texts = extract_text_task(marketplaces, list(distill.splits), distill.descriptions, distill.pairs,
                                  parent_run_id=parent)
        text_key, text_list = texts_hash(texts), distill_inputs(texts, prefixes=distill.prefixes)
        dkey = run_fingerprint(text_list, ref, distill)  # the checkpoint's folder: a rerun resumes from it
        result = distill_encoder_task(text_list, ref, out_dir, distill, work / dkey[:20], parent_run_id=parent)
        student = resolve_encoder(str(out_dir), settings.cache_dir)
        ekey = fingerprint("evaluate-encoder", student.checksum, ref.checksum, result.layers,
                           {m: [table_hash(mk.train), table_hash(mk.valid), table_hash(mk.test)]
                            for m, mk in marketplaces.items()},
                           distill, learner)
        evaluation = evaluate_encoder_task(ekey, student.path, ref, result.layers, marketplaces, distill, learner,
                                           work / ekey[:20], student_is_copy=not result.trained, parent_run_id=parent)
        facts = {"data": ",".join(data), "marketplaces": ",".join(marketplaces),
                 "splits": ",".join(distill.splits), "text_hash": text_key}
        registration = register_encoder_task(EncoderRegistrationRequest(
            name=model_name, student=student, teacher=ref, result=result, evaluation=evaluation, data=facts,
        ), parent_run_id=parent)
    table = evaluation.table()
    create_markdown_artifact(
        markdown=mlflow.artifacts.load_text(f"runs:/{registration.run_id}/encoder_card.md"),
        key=re.sub(r"[^a-z0-9-]+", "-", model_name.lower()),
        description=f"{registration.name} v{registration.version}")
    log.info("%s version %s: %s (checksum %s)", registration.name, registration.version, student.path,
             student.checksum[:12])
    return {
        "name": registration.name, "version": registration.version, "already_registered":
            registration.already_registered, "run_id": registration.run_id, "path": str(student.path),
        "checksum": student.checksum, "teacher": ref.name, "layers": result.layers,
        "trained_layers": result.trained, "losses": result.losses,
        "texts": result.texts, "steps": result.steps, "seconds": result.seconds, "reused": result.reused,
        "evaluation": table.to_dict(orient="records"), "adapter_aucs": evaluation.adapter_aucs,
        "latency_ms": evaluation.latency_ms,
        "parameters": evaluation.parameters,
    }
