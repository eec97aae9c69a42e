"""The serving student in the MLflow registry: registered model ``relevance-student``, its own gate and aliases.

A version is a pyfunc with the relevance model's input contract (marketplace, query, product_title -> score). Its
tags name every teacher (``teacher.<id>``: the candidate, e.g. ``relevance v3 fusion``; ``teacher_versions``: every
registry version that taught), the validation ROC-AUC of student and teacher and the margin per marketplace, the
stop reason and the gate's verdict; its run holds the per-epoch margin table and plot. The gate promotes it
(``relevance-student@champion``) only when every marketplace is within ``gate_margin`` of its teacher; otherwise it
is ``@challenger`` and the serving student stays as it was.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from tasks import registry, reporting
from tasks.gate import GateDecision, student_decision
from tasks.pyfunc import STUDENT_SIGNATURE, StudentPyfunc, input_example, log_relevance_pyfunc
from tasks.records import Registration
from tasks.student_steps import STUDENT_MODEL, StudentTeachers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudentRegistrationRequest:
    """The saved student and everything known about it when it is registered."""

    model_dir: str
    marketplaces: list[str]
    languages: list[str]
    teachers: StudentTeachers
    teacher_versions: dict[str, str]  # candidate model label (relevance v3) -> its run id
    report: dict  # models.student_distill.StudentReport.as_dict()
    evaluation: dict[str, dict[str, float]]  # valid/test -> marketplace -> student ROC-AUC
    gate_margin: float
    epsilon: float
    parent: registry.VersionInfo | None  # the student it continues (add-marketplace)
    new_marketplace: str | None
    data_hashes: Mapping[str, Mapping[str, str]]
    fingerprint: str
    examples: Mapping[str, pd.DataFrame] = field(default_factory=dict)
    extra_tags: Mapping[str, str] = field(default_factory=dict)


def student_tags(r: StudentRegistrationRequest, decision: GateDecision) -> dict[str, str]:
    valid, test, t = r.evaluation["valid"], r.evaluation["test"], r.teachers
    return {
        "marketplace_order": ",".join(r.marketplaces),
        "languages": ",".join(r.languages),
        "kind": "student-add" if r.new_marketplace else "student",
        "new_marketplace": r.new_marketplace or "",
        "parent_version": r.parent.version if r.parent else "",
        "teacher_versions": ",".join(r.teacher_versions),
        **{f"teacher.{m}": name for m, name in t.teachers.items()},
        **{f"teacher_weights.{m}": json.dumps({k: round(v, 4) for k, v in w.items()}) for m, w in t.weights.items()},
        **{f"valid_auc.{m}": f"{v:.6f}" for m, v in valid.items()},
        **{f"auc.{m}": f"{v:.6f}" for m, v in test.items()},
        **{f"teacher_valid_auc.{m}": f"{v:.6f}" for m, v in t.teacher_aucs.items()},
        **{f"teacher_auc.{m}": f"{v:.6f}" for m, v in t.teacher_test_aucs.items()},
        **{f"margin.{m}": f"{t.teacher_aucs[m] - v:.6f}" for m, v in valid.items()},
        "stop_reason": r.report["stop_reason"],
        "epochs_run": str(r.report["fit"]["epochs_run"]),
        "kept_epoch": str(r.report["best_epoch"]),
        "data_hashes": json.dumps({m: dict(h) for m, h in r.data_hashes.items()}, sort_keys=True),
        "keeps_old_data": "true",  # trains on every marketplace's own data: a serving artifact, marked † in reports
        registry.FINGERPRINT_TAG: r.fingerprint,
        **registry.decision_tags(decision),
        **r.extra_tags,
    }


def student_card(r: StudentRegistrationRequest, version: str, alias: str, decision: GateDecision) -> str:
    """The markdown a reviewer reads on the version page."""
    t, valid = r.teachers, r.evaluation["valid"]
    rows = [f"| {m} | {t.teachers[m]} | {t.teacher_aucs[m]:.4f} | {valid[m]:.4f} | {t.teacher_aucs[m] - valid[m]:+.4f} |"
            for m in r.marketplaces]
    return "\n".join([
        f"# {STUDENT_MODEL} v{version} (@{alias})",
        "",
        "Compact serving student (AMTSS, Chen et al.): a shared small encoder with one head per marketplace, "
        "distilled from each marketplace's best teacher. † It trains on every marketplace's own training data "
        "(old data is kept), unlike the relevance lineage.",
        "",
        "| marketplace | teacher | teacher valid ROC-AUC | student valid ROC-AUC | margin |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"**Stopped**: {r.report['stop_reason']} (kept epoch {r.report['best_epoch']}).",
        "",
        "## Gate",
        "",
        *(f"- {c}" for c in decision.checks),
        "",
        f"**Verdict**: {'passed' if decision.passed else 'refused: ' + '; '.join(decision.reasons)}",
        "",
    ])


def register_student(request: StudentRegistrationRequest) -> Registration:
    """Log the review material and the pyfunc into the active run, register the version with all its tags, judge it
    and set its alias. A request whose fingerprint a version already carries returns that version unchanged."""
    r = request
    client = MlflowClient()
    existing = registry.version_with_fingerprint(client, r.fingerprint, STUDENT_MODEL)
    if existing is not None:
        log.info("%s version %s already holds fingerprint %s: not registered again", STUDENT_MODEL, existing.version,
                 r.fingerprint[:16])
        return registry.registration_of(client, existing, STUDENT_MODEL)
    epochs = r.report["epochs"]
    mlflow.log_table(pd.DataFrame(reporting.margin_rows(epochs)), "student_margins.json")
    mlflow.log_figure(reporting.margin_figure(epochs, r.epsilon, r.report["best_epoch"]), "student_margins.png")
    mlflow.log_dict(r.report, "student_report.json")
    mlflow.log_dict(r.teachers.aucs, "teacher_candidates.json")
    decision = student_decision(r.teachers.teacher_aucs, r.evaluation["valid"], r.gate_margin)
    champion = registry.alias_version(client, registry.CHAMPION, STUDENT_MODEL)
    examples = {m: r.examples[m] for m in r.marketplaces if m in r.examples}
    scores = {**{f"valid_auc.{m}": v for m, v in r.evaluation["valid"].items()},
              **{f"test_auc.{m}": v for m, v in r.evaluation["test"].items()}}
    version = log_relevance_pyfunc(Path(r.model_dir), None, registered_name=STUDENT_MODEL,
                                   tags=student_tags(r, decision), example=input_example(examples) if examples else None,
                                   metrics=scores, python_model=StudentPyfunc(), signature=STUDENT_SIGNATURE)
    alias = registry.apply_decision(client, version, decision.passed, STUDENT_MODEL,
                                    previous=champion.version if champion else None)
    client.update_model_version(STUDENT_MODEL, version, description=student_card(r, version, alias, decision))
    return Registration(version, alias, decision.passed, decision.reasons, decision.checks, None)
