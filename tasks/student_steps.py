"""The serving student's steps as plain functions over registry versions, tables and model folders.

What the student distils is decided from the registry: ``distill`` takes every marketplace of
``relevance@champion``; ``add-marketplace`` takes ``relevance-student@champion``'s marketplaces plus the new one,
which the relevance champion (its teacher) must already know. The student trains on each marketplace's own training
data, read from a data root (``<root>/<id>/{train,valid,test}``): unlike the relevance lineage it keeps old data,
which is why reports mark it † (like ``replay``). :mod:`tasks.prefect_tasks` wraps the steps in Prefect tasks.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from tasks import registry
from tasks.learner import to_pairs
from tasks.records import StageOutput

if TYPE_CHECKING:
    from models.config import StudentConfig
    from models.encoders import EncoderRef

log = logging.getLogger(__name__)

STUDENT_MODEL = "relevance-student"
_REFERENCE = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_-]+))$")


class StudentRequestError(ValueError):
    """A student run that cannot start as asked (no champion, an unknown or repeated marketplace, a bad candidate
    reference); the message says what exists."""


@dataclass(frozen=True)
class StudentPlan:
    """What a student run distils: the marketplaces in order (with languages), the relevance champion that teaches
    them, the student it continues (``add-marketplace``) and the newcomer, if any."""

    marketplaces: list[str]
    languages: list[str]
    champion: registry.VersionInfo
    parent: registry.VersionInfo | None
    new_marketplace: str | None


def plan_student(client: MlflowClient, add_marketplace: str | None = None) -> StudentPlan:
    """The run's marketplaces from the registry, or one :class:`StudentRequestError` before any work."""
    champion = registry.alias_version(client, registry.CHAMPION)
    if champion is None:
        raise StudentRequestError(f"no {registry.MODEL_NAME}@{registry.CHAMPION} yet: the student distils the "
                                  "champion's marketplaces; register one first (mcl arrive)")
    languages = dict(zip(champion.marketplaces, champion.languages, strict=True))
    if add_marketplace is None:
        return StudentPlan(list(champion.marketplaces), list(champion.languages), champion, None, None)
    parent = registry.alias_version(client, registry.CHAMPION, STUDENT_MODEL)
    if parent is None:
        raise StudentRequestError(f"no {STUDENT_MODEL}@{registry.CHAMPION} to add {add_marketplace!r} to; distil one "
                                  "first (mcl student distill)")
    if add_marketplace in parent.marketplaces:
        raise StudentRequestError(f"marketplace {add_marketplace!r} is already in {STUDENT_MODEL}@{registry.CHAMPION} "
                                  f"(version {parent.version}: {','.join(parent.marketplaces)})")
    if add_marketplace not in languages:
        raise StudentRequestError(
            f"unknown marketplace {add_marketplace!r}: {registry.MODEL_NAME}@{registry.CHAMPION} (version "
            f"{champion.version}) knows {','.join(champion.marketplaces)}, and it teaches the student; let "
            f"{add_marketplace!r} arrive first (mcl arrive)")
    unknown = [m for m in parent.marketplaces if m not in languages]
    if unknown:
        raise StudentRequestError(f"{STUDENT_MODEL}@{registry.CHAMPION} serves {','.join(unknown)}, which "
                                  f"{registry.MODEL_NAME}@{registry.CHAMPION} (version {champion.version}) no longer "
                                  "knows: distil a new student instead (mcl student distill)")
    ids = [*parent.marketplaces, add_marketplace]
    return StudentPlan(ids, [languages[m] for m in ids], champion, parent, add_marketplace)


def candidate_version(client: MlflowClient, reference: str) -> tuple[str, registry.VersionInfo]:
    """An extra teacher candidate named ``NAME/VERSION`` or ``NAME@ALIAS`` (e.g. ``relevance/4``,
    ``relevance@challenger``, ``adapter-de/1``): its registered model name and version."""
    match = _REFERENCE.match(reference.strip())
    if match is None:
        raise StudentRequestError(f"teacher candidate {reference!r}: write it as NAME/VERSION or NAME@ALIAS, e.g. "
                                  "relevance/4 or relevance@challenger")
    name = match["name"]
    if match["alias"]:
        info = registry.alias_version(client, match["alias"], name)
        if info is None:
            raise StudentRequestError(f"teacher candidate {reference!r}: {name!r} has no alias {match['alias']!r}")
        return name, info
    try:
        return name, registry.require_version(client, match["version"], name)
    except registry.RegistryError as err:
        raise StudentRequestError(f"teacher candidate {reference!r}: {err}") from None


# ------------------------------------------------------------------------------------------- teachers
@dataclass(frozen=True)
class StudentTeachers:
    """Every candidate's validation ROC-AUC per marketplace, each marketplace's teacher and weights, and the cached
    soft target of every training row (P(relevant), row order of the marketplace's train table)."""

    aucs: dict[str, dict[str, float]]
    teachers: dict[str, str]
    teacher_aucs: dict[str, float]
    weights: dict[str, dict[str, float]]
    targets: dict[str, np.ndarray]
    teacher_test_aucs: dict[str, float]


def teachers_step(models: Mapping[str, str], encoder: EncoderRef, train: Mapping[str, pd.DataFrame],
                  valid: Mapping[str, pd.DataFrame], test: Mapping[str, pd.DataFrame],
                  cfg: StudentConfig) -> StudentTeachers:
    """Load every candidate model (``models``: label -> relevance model folder, the champion first), choose each
    marketplace's teacher on validation, compute the soft targets once, and score each teacher on test (reported
    beside the student's, never used to choose)."""
    from models.metrics import roc_auc

    from models.device import resolve_device
    from models.relevance import RelevanceModel
    from models.student_teachers import choose_teachers, relevance_candidates, soft_targets

    device = resolve_device(cfg.device)
    candidates = [c for label, folder in models.items()
                  for c in relevance_candidates(RelevanceModel.load(folder, encoder, device=device), label,
                                                batch_size=cfg.train.eval_batch_size)]
    choice = choose_teachers(candidates, {m: to_pairs(t) for m, t in valid.items()})
    weights = {m: choice.weights(m, cfg.teacher_weights, cfg.weight_temperature) for m in train}
    targets = {m: soft_targets(candidates, weights[m], m, to_pairs(table)) for m, table in train.items()}
    teachers = {m: choice.teacher(m) for m in train}
    by_name = {c.name: c for c in candidates}
    test_aucs = {m: roc_auc(to_pairs(t).labels, by_name[teachers[m]].score(m, to_pairs(t))) for m, t in test.items()}
    return StudentTeachers(choice.aucs, teachers, {m: choice.teacher_auc(m) for m in train}, weights, targets,
                           test_aucs)


# ------------------------------------------------------------------------------------------- the student
def train_student_step(teachers: StudentTeachers, train: Mapping[str, pd.DataFrame],
                       valid: Mapping[str, pd.DataFrame], languages: Mapping[str, str], cfg: StudentConfig,
                       work_dir: Path, *, base: EncoderRef | None = None, text_from: str | None = None,
                       parent_dir: str | None = None, new_marketplace: str | None = None) -> StageOutput:
    """A fresh student (``base``'s layers, reading pairs as the relevance model at ``text_from`` does) distilled on
    every marketplace, or the student at ``parent_dir`` with a head for ``new_marketplace`` forced into A."""
    from models.pairs import TextFormat
    from models.relevance import MarketplaceSpec, RelevanceModel
    from models.student import StudentModel
    from models.student_distill import StudentData, distill_student

    if parent_dir is None:
        if base is None or text_from is None:
            raise ValueError("a fresh student needs the base encoder and the relevance model whose text format it reads")
        text = TextFormat(**RelevanceModel.read_manifest(text_from)["text_format"])
        student = StudentModel.create(base.path, name=base.name, checksum=base.checksum, layers=cfg.layers, text=text,
                                      layer_choice=cfg.layer_choice, device=cfg.device)
        for mid in train:
            student.add_marketplace(MarketplaceSpec(mid, languages[mid]))
        forced: list[str] = []
    else:
        student = StudentModel.load(parent_dir, device=cfg.device)
        if new_marketplace is None:
            raise ValueError("continuing a student needs the marketplace that joins it")
        student.add_marketplace(MarketplaceSpec(new_marketplace, languages[new_marketplace]))
        forced = [new_marketplace]
    data = [StudentData(MarketplaceSpec(mid, languages[mid]), to_pairs(train[mid]), to_pairs(valid[mid]),
                        teachers.targets[mid], teachers.teacher_aucs[mid]) for mid in train]
    report = distill_student(student, data, cfg, forced=forced)
    out = student.save(Path(work_dir) / "student")
    return StageOutput(str(out), report.as_dict())


def evaluate_student_step(model_dir: str, valid: Mapping[str, pd.DataFrame], test: Mapping[str, pd.DataFrame],
                          device: str) -> dict[str, dict[str, float]]:
    """The saved student's ROC-AUC per marketplace on validation (the gate's) and test (reported)."""
    from models.metrics import roc_auc
    from models.student import StudentModel

    student = StudentModel.load(model_dir, device=device)

    def aucs(tables: Mapping[str, pd.DataFrame]) -> dict[str, float]:
        return {m: roc_auc(to_pairs(t).labels, student.predict_proba(m, to_pairs(t))) for m, t in tables.items()}

    return {"valid": aucs(valid), "test": aucs(test)}
