"""The serving-student flow (AMTSS, Chen et al.): choose each marketplace's teacher -> cache its soft targets ->
distil a small shared encoder with one head per marketplace by the adaptive top-K loop -> evaluate -> register
``relevance-student`` through its own gate.

Started by hand (``mcl student distill`` / ``mcl student add-marketplace``), on a schedule, or by the automation on
``relevance.champion.moved`` (``flows/prefect.yaml``). The student trains on every marketplace's own training data,
read from a data root: it keeps old data, which the relevance lineage never does (reports mark it †).
"""

from __future__ import annotations

import logging

import mlflow
from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed, State

from flows import candidate
from models.config import StudentConfig
from tasks import registry
from tasks.config import flat
from tasks.hashing import fingerprint, table_hash
from tasks.prefect_tasks import (
    evaluate_student_task,
    fetch_model_task,
    load_storage_credentials,
    project_log_level,
    register_student_task,
    student_teachers_task,
    train_student_task,
)
from tasks.settings import get_settings
from tasks.student_registry import StudentRegistrationRequest
from tasks.student_steps import STUDENT_MODEL, candidate_version, plan_student

log = logging.getLogger(__name__)


@flow(name="distill-student")
def distill_student(
    data: str,
    add_marketplace: str | None = None,
    candidates: list[str] | None = None,
    student: StudentConfig = StudentConfig(),
    base_encoder: str | None = None,
    encoder: str | None = None,
) -> dict | State:
    """Distil relevance@champion's marketplaces into the compact serving student, or add one marketplace to it; ends
    in the state Refused (after registering a challenger) when a marketplace is farther from its teacher than the
    gate allows.

    Args:
        data: Data root holding one folder per marketplace (<data>/<id>/{train,valid,test}, local or s3://): the
            student trains on each marketplace's own training data and is judged on its validation data.
        add_marketplace: Add this marketplace (already in relevance@champion) to relevance-student@champion: a new
            head, forced into the active set, training continued from the current student.
        candidates: Extra teacher candidates besides the champion and its adapters, as NAME/VERSION or NAME@ALIAS
            (e.g. relevance/4, relevance@challenger); each marketplace is taught by its best candidate on validation.
        student: Every student setting: layers, λ, K, ε, teacher weights, the gate's margin, training.
        base_encoder: Encoder whose layers the student copies (a local folder such as a domain-distilled encoder,
            a hub id, or the embedded default); default: the relevance models' encoder.
        encoder: The relevance models' base encoder (hub id, local folder, or the embedded default); must match
            the champion's.
    """
    from mlflow.tracking import MlflowClient

    from models.encoders import resolve_encoder
    from tasks.data import load_data_root
    from tasks.learner import resolve_settings_encoder

    project_log_level()
    load_storage_credentials()
    settings = get_settings()
    candidate.start_tracking(settings)
    client = MlflowClient()
    # Bad input fails here, before any model is loaded or trained.
    plan = plan_student(client, add_marketplace)
    extras = [candidate_version(client, ref) for ref in candidates or []]
    tables = {m.id: m for m in load_data_root(data, plan.marketplaces, s3_endpoint_url=settings.s3_endpoint_url)}
    ref = resolve_settings_encoder(settings, encoder)
    base = resolve_encoder(base_encoder, settings.cache_dir) if base_encoder else ref
    train = {m: t.train for m, t in tables.items()}
    valid = {m: t.valid for m, t in tables.items()}
    test = {m: t.test for m, t in tables.items()}
    hashes = {m: {s: table_hash(getattr(t, s)) for s in ("train", "valid", "test")} for m, t in tables.items()}
    teachers = {f"{name} v{info.version}": (name, info) for name, info in [(registry.MODEL_NAME, plan.champion),
                                                                             *extras]}
    runs = {label: info.run_id for label, (_, info) in teachers.items()}
    key = fingerprint("student", runs, plan.parent.run_id if plan.parent else None,
                      plan.new_marketplace, hashes, student, base.checksum, ref.checksum)
    existing = registry.version_with_fingerprint(client, key, STUDENT_MODEL)
    if existing is not None:
        log.info("already registered as %s version %s (fingerprint %s): nothing trained", STUDENT_MODEL,
                 existing.version, key[:16])
        return _summary(registry.registration_of(client, existing, STUDENT_MODEL), existing.valid_aucs, existing.tags,
                        already=True)
    work = settings.cache_dir / "steps" / "student"
    registry_dir = settings.cache_dir / "registry" / "models"
    with mlflow.start_run(run_name=f"student-{add_marketplace or 'distill'}") as run:
        parent = run.info.run_id
        mlflow.set_tags({"kind": "student", "keeps_old_data": "true"})
        mlflow.log_params({"data": data, "marketplaces": ",".join(plan.marketplaces),
                           "add_marketplace": add_marketplace or "", "teachers": ",".join(teachers),
                           "base_encoder": base.name, "encoder": ref.name, **flat(student)})
        folders = {label: fetch_model_task(info, registry_dir, name) for label, (name, info) in teachers.items()}
        tkey = fingerprint("teachers", runs, hashes, student.teacher_weights,
                           student.weight_temperature, ref.checksum)
        chosen = student_teachers_task(tkey, folders, ref, train, valid, test, student, parent_run_id=parent)
        parent_dir = fetch_model_task(plan.parent, registry_dir, STUDENT_MODEL) if plan.parent else None
        skey = fingerprint("student-train", tkey, key)
        languages = dict(zip(plan.marketplaces, plan.languages, strict=True))
        stage = train_student_task(skey, chosen, train, valid, languages, student, work / skey[:20], base=base,
                                   text_from=folders[next(iter(teachers))], parent_dir=parent_dir,
                                   new_marketplace=plan.new_marketplace, parent_run_id=parent)
        evaluation = evaluate_student_task(fingerprint("student-eval", skey), stage.model_dir, valid, test,
                                           student.device, parent_run_id=parent)
        registration = register_student_task(StudentRegistrationRequest(
            model_dir=stage.model_dir, marketplaces=plan.marketplaces, languages=plan.languages, teachers=chosen,
            teacher_versions=runs, report=stage.report, evaluation=evaluation,
            gate_margin=student.gate_margin, epsilon=student.epsilon, parent=plan.parent,
            new_marketplace=plan.new_marketplace, data_hashes=hashes, fingerprint=key, examples=test,
        ), parent_run_id=parent)
    card = client.get_model_version(STUDENT_MODEL, registration.version).description
    create_markdown_artifact(markdown=card, key="relevance-student-card",
                             description=f"{STUDENT_MODEL} v{registration.version} (@{registration.alias})")
    summary = _summary(registration, evaluation["valid"], {"stop_reason": stage.report["stop_reason"]})
    summary.update({"teachers": chosen.teachers, "teacher_aucs": chosen.teacher_aucs, "run_id": parent,
                    "epochs": stage.report["epochs"], "marketplaces": plan.marketplaces})
    if not registration.passed:
        refusal = registry.PromotionRefused(registration.version, registration.reasons, STUDENT_MODEL)
        log.warning("%s", refusal)
        return Failed(name=candidate.REFUSED, message=str(refusal), data=refusal)
    return summary


def _summary(registration, valid_aucs: dict[str, float], tags: dict[str, str], already: bool = False) -> dict:
    return {"version": registration.version, "alias": registration.alias, "passed": registration.passed,
            "reasons": registration.reasons, "checks": registration.checks, "valid_aucs": dict(valid_aucs),
            "stop_reason": tags.get("stop_reason", ""), "already_registered": already}
