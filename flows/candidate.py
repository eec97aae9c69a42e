"""The one skeleton every registering flow shares: a candidate is trained, judged and registered.

An arrival and a retraining differ only in how the candidate is trained (translate -> adapter -> fusion,
or re-distil the champion's fusion on fresh data). Everything around that is the same and lives here,
once: the MLflow parent run with its tags, parameters and input datasets, the teacher's folder and test
sets from the registry, evaluation on every test set, registration through the gate, and the review
artifacts (R[t][k] heatmap, attention plot, ROC curves, model card).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
import pandas as pd
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.sources import LocalArtifactDatasetSource
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Failed, State

from models.config import GateConfig, LearnerConfig
from tasks import registry, reporting
from tasks.config import flat
from tasks.events import emit_champion_moved
from tasks.hashing import fingerprint, folder_hash, table_hash
from tasks.prefect_tasks import evaluate_task, fetch_teacher_task, register_task
from tasks.records import Evaluation, Registration, StageOutput
from tasks.settings import Settings

log = logging.getLogger(__name__)

REFUSED = "Refused"
MODEL_CARD_ARTIFACT = "relevance-model-card"
REGISTRY_ARTIFACT = "relevance-registry"


def start_tracking(settings: Settings) -> None:
    """A tracking server chooses its own artifact root (e.g. proxied S3); a local store gets ours."""
    if settings.tracking_uri is not None and not settings.tracking_uri.strip():
        # A deployment templated an unset Prefect variable into MCL_TRACKING_URI: falling back to a local SQLite
        # store would register the model inside a container that is removed when the run ends.
        raise ValueError("MCL_TRACKING_URI is set but empty: set the Prefect variable mcl_tracking_uri (the MLflow "
                         "server's URL as this worker reaches it) and deploy again")
    uri = settings.resolved_tracking_uri
    local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
    registry.setup_tracking(uri, settings.artifact_location or (settings.resolved_artifact_location if local else None))


@dataclass(frozen=True)
class Teacher:
    """What the candidate is built on: the registry version, its model folder and its stored test sets."""

    version: registry.VersionInfo | None
    model_dir: str | None
    tests: dict[str, pd.DataFrame]
    valids: dict[str, pd.DataFrame]

    @property
    def folder_hash(self) -> str:
        return folder_hash(self.model_dir) if self.model_dir else "none"


@dataclass
class Candidate:
    """What a flow's training part hands back to the skeleton."""

    stages: list[StageOutput]
    marketplaces: list[tuple[str, str]]  # (id, language) of the candidate's adapters, oldest first
    tests: dict[str, pd.DataFrame]  # every test set the candidate is scored on (reported)
    valids: dict[str, pd.DataFrame]  # every validation set the gate judges it on
    new_marketplace: str | None = None  # None for a retraining
    new_tests: dict[str, pd.DataFrame] = field(default_factory=dict)  # stored in the registry for the first time
    new_valids: dict[str, pd.DataFrame] = field(default_factory=dict)
    data_hashes: dict[str, dict[str, str]] = field(default_factory=dict)
    translation_routes: dict[str, str] = field(default_factory=dict)  # older language -> route, or "none (§4.2)"


def dataset_source(location: str) -> DatasetSource | str:
    """The MLflow source of an input table read from ``location`` (a path, or a URI such as ``s3://``).

    MLflow registers its local-file source twice (once per scheme of its local artifact repository), so a plain
    path resolves ambiguously and every logged table warns "can be interpreted in multiple ways" into the
    operator's log; naming the local source here is MLflow's own workaround. URIs stay MLflow's to resolve.
    """
    return LocalArtifactDatasetSource(location) if urlparse(location).scheme in ("", "file") else location


@dataclass(frozen=True)
class Inputs:
    """A table the run read, logged as an MLflow dataset."""

    table: pd.DataFrame
    source: str
    name: str
    context: str


@dataclass(frozen=True)
class RunSpec:
    """How the parent MLflow run is named, tagged and parametrised."""

    kind: str  # "arrival" or "retrain" (the version's ``kind`` tag)
    run_name: str
    label: str  # the candidate's row label in R[t][k]
    tags: dict[str, str]
    params: dict[str, Any]
    inputs: Sequence[Inputs]
    work_dir: Path
    # What the flow's candidate is made from (marketplace, data hashes, options): with the teacher, the champion,
    # the encoder and the settings it is the registration fingerprint, so a duplicate event trains nothing.
    identity: dict[str, Any] = field(default_factory=dict)
    version_tags: dict[str, str] = field(default_factory=dict)  # written with the version (e.g. fresh_data)


def registration_fingerprint(spec: RunSpec, teacher: registry.VersionInfo | None,
                             champion: registry.VersionInfo | None, encoder: Any, learner: LearnerConfig,
                             gate: GateConfig) -> str:
    """The identity of a registration from its inputs, known before any training: the same upload (or fresh data)
    over the same teacher, judged against the same champion, with the same encoder and settings, is the same
    model and the same verdict. Teacher and champion count by run id, which is unique across registries (every
    store has a "version 1")."""
    return fingerprint("registration", spec.kind, spec.identity, teacher.run_id if teacher else None,
                       champion.run_id if champion else None, encoder.checksum, learner, gate)


def existing_summary(client: Any, info: registry.VersionInfo) -> dict:
    """The flow summary of a version registered earlier from the same fingerprint; its review artifacts are
    published again so the duplicate run's page in Prefect shows what it found."""
    registration = registry.registration_of(client, info)
    mid = info.tags.get("marketplace")
    adapter_auc = info.tags.get(f"adapter_auc.{mid}") if mid else None
    publish_prefect_artifacts(client, info.description or f"# {registry.MODEL_NAME} v{info.version}", registration)
    return {"version": info.version, "alias": registration.alias, "aucs": info.aucs,
            "adapter_auc": float(adapter_auc) if adapter_auc else None,
            "adapter_version": registration.adapter_version, "checks": registration.checks,
            "reasons": registration.reasons, "passed": registration.passed, "run_id": info.run_id,
            "already_registered": True}


def run_candidate(
    spec: RunSpec,
    teacher_version: registry.VersionInfo | None,
    champion: registry.VersionInfo | None,
    encoder: Any,
    learner: LearnerConfig,
    gate: GateConfig,
    settings: Settings,
    train: Callable[[str, Teacher], Candidate],
) -> dict:
    """Run ``train(parent_run_id, teacher)`` inside the parent run, then evaluate, register and log for review.

    Must run under the registry lock (the caller reads the champion under it). Returns the flow's summary;
    ``summary["passed"]`` says whether the gate promoted the candidate. A version already registered from the
    same fingerprint is returned as it is (``summary["already_registered"]``): nothing is trained or registered.
    """
    client = mlflow.tracking.MlflowClient()
    key = registration_fingerprint(spec, teacher_version, champion, encoder, learner, gate)
    existing = registry.version_with_fingerprint(client, key)
    if existing is not None:
        log.info("%s: already registered as %s version %s (fingerprint %s); nothing trained or registered",
                 spec.label, registry.MODEL_NAME, existing.version, key[:16])
        return existing_summary(client, existing)
    with mlflow.start_run(run_name=spec.run_name) as run:
        parent = run.info.run_id
        mlflow.set_tags({"kind": spec.kind, "teacher_version": teacher_version.version if teacher_version else "none",
                         **spec.tags})
        mlflow.log_params({**spec.params, "encoder": encoder.name, **flat(learner),
                           **{f"gate.{k}": v for k, v in flat(gate).items()}})
        for item in spec.inputs:
            mlflow.log_input(mlflow.data.from_pandas(item.table, source=dataset_source(item.source), name=item.name),
                             context=item.context)
        teacher = Teacher(teacher_version, None, {}, {})
        if teacher_version is not None:
            teacher = Teacher(teacher_version, *fetch_teacher_task(teacher_version, settings.cache_dir / "registry"))
        candidate = train(parent, teacher)
        final = candidate.stages[-1]
        ekey = fingerprint("evaluate", folder_hash(final.model_dir),
                           {m: table_hash(t) for m, t in candidate.tests.items()},
                           {m: table_hash(t) for m, t in candidate.valids.items()})
        evaluation = evaluate_task(ekey, final.model_dir, encoder, candidate.tests, candidate.valids,
                                   candidate.new_marketplace, learner.device, parent_run_id=parent)
        registration = register_task(registry.RegistrationRequest(
            model_dir=final.model_dir, encoder=encoder, marketplaces=[m for m, _ in candidate.marketplaces],
            languages=[lang for _, lang in candidate.marketplaces], new_marketplace=candidate.new_marketplace,
            parent=teacher_version, champion=champion, evaluation=evaluation, new_tests=candidate.new_tests,
            new_valids=candidate.new_valids,
            data_hashes=candidate.data_hashes, gate=gate, work_dir=spec.work_dir / "register" / parent,
            kind=spec.kind, examples=candidate.tests, fingerprint=key, extra_tags=spec.version_tags,
        ), parent_run_id=parent)
        if candidate.translation_routes:
            mlflow.log_params({f"translation_route.{k}": v for k, v in candidate.translation_routes.items()})
        card = log_review_artifacts(client, registration, teacher_version, candidate, evaluation, encoder.name,
                                    spec.label)
    publish_prefect_artifacts(client, card, registration)
    if registration.alias == registry.CHAMPION:
        emit_champion_moved(registry.MODEL_NAME, registration.version, champion.version if champion else None,
                            spec.kind)
    return {"version": registration.version, "alias": registration.alias, "aucs": evaluation.aucs,
            "adapter_auc": evaluation.adapter_auc, "adapter_version": registration.adapter_version,
            "checks": registration.checks, "reasons": registration.reasons, "passed": registration.passed,
            "run_id": parent, "already_registered": False}


def log_review_artifacts(
    client: Any,
    registration: Registration,
    teacher: registry.VersionInfo | None,
    candidate: Candidate,
    evaluation: Evaluation,
    encoder_name: str,
    label: str,
) -> str:
    """Into the active (parent) run: per-marketplace metrics, the R[t][k] heatmap, the model card (returned)."""
    marketplaces = candidate.marketplaces
    mlflow.log_metrics({f"test_auc.{k}": v for k, v in evaluation.aucs.items()})
    mlflow.log_metrics({f"valid_auc.{k}": v for k, v in evaluation.valid_aucs.items()})
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
        stages=[s.report for s in candidate.stages], attention=evaluation.attention, data_hashes=info.data_hashes,
        translation_routes=candidate.translation_routes,
    )
    mlflow.log_text(card, "model_card.md")
    # The reviewer's page is the version's: the card is its description (the version's source run is this run).
    client.update_model_version(registry.MODEL_NAME, registration.version, description=card)
    mlflow.set_tags({"relevance_version": registration.version, "alias": registration.alias})
    return card


def publish_prefect_artifacts(client: Any, card: str, registration: Registration) -> None:
    """The same review on the flow run's Artifacts tab, for the operator who watches Prefect, not MLflow:
    the model card (markdown) and the whole registry after this run (a table), under stable keys so the
    Artifacts page keeps each one's history across runs."""
    create_markdown_artifact(markdown=card, key=MODEL_CARD_ARTIFACT,
                             description=f"{registry.MODEL_NAME} v{registration.version} (@{registration.alias})")
    create_table_artifact(table=reporting.registry_rows(registry.registry_state(client)), key=REGISTRY_ARTIFACT,
                          description=f"{registry.MODEL_NAME} versions after registering v{registration.version}")


def refused_state(summary: dict) -> State:
    """How a flow ends when the gate keeps the champion: a FAILED state named ``Refused``, not a traceback.

    FAILED, not COMPLETED: the run did not deliver what it was started for (a new champion), an operator must
    look at the challenger, and Failed is what dashboards, ``run_deployment`` callers and the automations in
    ``infra/automations.yaml`` treat as needing attention. The name keeps it apart from a crash or a bug: the
    UI shows "Refused" with the gate's reasons as the message, the state change is its own event
    (``prefect.flow-run.Refused``), and no exception is raised inside the flow, so nothing is logged as a
    traceback. The state's data is the :class:`~tasks.registry.PromotionRefused`, so calling the flow as a
    function still raises it (the CLI and tests rely on that).
    """
    refusal = registry.PromotionRefused(summary["version"], summary["reasons"])
    log.warning("%s", refusal)
    return Failed(name=REFUSED, message=str(refusal), data=refusal)


def run_stage(stage_task: Any, *args: Any, **kwargs: Any) -> StageOutput:
    """Run a cached training task; a cached result whose model folder is gone (cache dir cleaned) is recomputed."""
    output = stage_task(*args, **kwargs)
    if not Path(output.model_dir, "manifest.json").is_file():
        log.warning("%s: cached model folder %s is gone; recomputing", stage_task.name, output.model_dir)
        output = stage_task.with_options(refresh_cache=True)(*args, **kwargs)
    return output
