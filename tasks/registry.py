"""The MLflow model registry as the pipeline's state: which model is champion, what it knows, how it scored.

Everything an arrival needs to continue the sequence lives on model-version tags, so any version
can be inspected, re-evaluated or used as a teacher without local state:
``marketplace_order``/``languages`` (the adapters, oldest first), ``data_hashes`` (train/valid/test
content hashes per marketplace), ``auc.<id>`` (test ROC-AUC per marketplace, reported) and ``valid_auc.<id>``
(validation ROC-AUC, what the gate decides on), ``test_set.<id>`` and ``valid_set.<id>``
(artifact URI of each marketplace's test table, carried forward from the version that first
stored it), ``parent_version`` and the gate's verdict. Aliases ``champion`` and ``challenger``
mark what serves and what was refused.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from models.config import GateConfig
from tasks.gate import GateDecision, promotion_decision
from tasks.pyfunc import input_example, log_relevance_pyfunc
from tasks.records import Evaluation, Registration
from tasks.steps import single_adapter_folder

if TYPE_CHECKING:
    from models.encoders import EncoderRef

log = logging.getLogger(__name__)

MODEL_NAME = "relevance"
CHAMPION = "champion"
CHALLENGER = "challenger"
EXPERIMENT = "marketplace-arrivals"
def adapter_model_name(marketplace: str) -> str:
    return f"adapter-{marketplace}"


class ArrivalRefused(RuntimeError):
    """An arrival the registry cannot take (a marketplace the champion already has, without replace)."""


class PromotionRefused(RuntimeError):
    """The gate kept the champion; the new version is registered as challenger."""

    def __init__(self, version: str, reasons: Sequence[str]) -> None:
        self.version = version
        self.reasons = list(reasons)
        super().__init__(f"version {version} of {MODEL_NAME!r} was not promoted (alias {CHALLENGER!r}): "
                         + "; ".join(self.reasons))

    def __reduce__(self) -> tuple:
        # A refusal is a flow run's final state data, persisted and read back by Prefect: rebuild from both fields.
        return (type(self), (self.version, self.reasons))


@dataclass(frozen=True)
class VersionInfo:
    """A registered version as the pipeline reads it back from its tags."""

    version: str
    run_id: str
    source: str
    marketplaces: list[str]
    languages: list[str]
    aucs: dict[str, float]
    test_sets: dict[str, str]
    data_hashes: dict[str, dict[str, str]]
    parent: str | None
    valid_aucs: dict[str, float] = field(default_factory=dict)
    valid_sets: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)


def setup_tracking(tracking_uri: str, artifact_location: str | None, experiment: str = EXPERIMENT) -> str:
    """Point MLflow at the store and make sure the experiment exists with our artifact root; returns its id."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        mlflow.set_experiment(experiment_id=found.experiment_id)
        return found.experiment_id
    try:
        experiment_id = client.create_experiment(experiment, artifact_location=artifact_location)
    except MlflowException:  # created concurrently by another process
        experiment_id = client.get_experiment_by_name(experiment).experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def _split(value: str | None) -> list[str]:
    return [x for x in (value or "").split(",") if x]


def version_info(client: MlflowClient, version: str, name: str = MODEL_NAME) -> VersionInfo:
    mv = client.get_model_version(name, version)
    tags = dict(mv.tags)
    return VersionInfo(
        version=str(mv.version),
        run_id=mv.run_id,
        source=mv.source,
        marketplaces=_split(tags.get("marketplace_order")),
        languages=_split(tags.get("languages")),
        aucs={k.removeprefix("auc."): float(v) for k, v in tags.items() if k.startswith("auc.")},
        test_sets={k.removeprefix("test_set."): v for k, v in tags.items() if k.startswith("test_set.")},
        valid_aucs={k.removeprefix("valid_auc."): float(v) for k, v in tags.items() if k.startswith("valid_auc.")},
        valid_sets={k.removeprefix("valid_set."): v for k, v in tags.items() if k.startswith("valid_set.")},
        data_hashes=json.loads(tags.get("data_hashes", "{}")),
        parent=tags.get("parent_version") or None,
        aliases=list(mv.aliases),
        tags=tags,
    )


def alias_version(client: MlflowClient, alias: str, name: str = MODEL_NAME) -> VersionInfo | None:
    """The version holding ``alias``, or None when the model or the alias does not exist yet."""
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    return version_info(client, str(mv.version), name)


def teacher_for_arrival(client: MlflowClient, marketplace: str, *, replace: bool) -> VersionInfo | None:
    """The version an arrival of ``marketplace`` continues from (its teacher), or None for the first arrival.

    Normally the champion. A marketplace the champion already has is refused unless ``replace``;
    replacing is possible for the champion's most recent marketplace only, whose parent version
    (the model before it arrived) becomes the teacher — an older marketplace sits under later
    adapters and fusions trained with it, which cannot be unpicked.
    """
    champion = alias_version(client, CHAMPION)
    if champion is None or marketplace not in champion.marketplaces:
        return champion
    if not replace:
        raise ArrivalRefused(
            f"marketplace {marketplace!r} is already in {MODEL_NAME}@{CHAMPION} (version {champion.version}, "
            f"marketplaces {','.join(champion.marketplaces)}); pass replace=True (--replace) to retrain it"
        )
    if champion.marketplaces[-1] != marketplace:
        raise ArrivalRefused(
            f"only the most recent marketplace of the champion ({champion.marketplaces[-1]!r}) can be replaced; "
            f"{marketplace!r} has later marketplaces built on it ({','.join(champion.marketplaces)})"
        )
    return version_info(client, champion.parent) if champion.parent else None


def model_folder(info: VersionInfo, dest: Path, name: str = MODEL_NAME) -> Path:
    """Download a version's pyfunc once and return the relevance model folder inside it.

    The download is keyed by the version's run id, not its number alone: every registry (a fresh demo,
    another tracking server) has a "version 1", and a folder cached for one must never be read as another's.
    """
    target = Path(dest) / f"{name}-v{info.version}-{info.run_id}"
    if not (target / "MLmodel").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{info.version}", dst_path=str(tmp))
            shutil.rmtree(target, ignore_errors=True)
            tmp.replace(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    flavor = Model.load(str(target / "MLmodel")).flavors["python_function"]
    return target / flavor["artifacts"]["model"]["path"]


def read_test_sets(info: VersionInfo, dest: Path) -> dict[str, pd.DataFrame]:
    """Every marketplace's test table, from the artifact store, in marketplace order."""
    tables = {}
    for mid in info.marketplaces:
        if mid not in info.test_sets:
            raise MlflowException(f"{MODEL_NAME} version {info.version} has no test_set.{mid} tag")
        path = mlflow.artifacts.download_artifacts(artifact_uri=info.test_sets[mid], dst_path=str(dest))
        tables[mid] = pd.read_parquet(path)
    return tables


def read_valid_sets(info: VersionInfo, dest: Path) -> dict[str, pd.DataFrame]:
    """The validation tables the version kept (kept like test sets, never trained on); a version registered
    before validation sets were kept has none for its marketplaces, and the gate says so."""
    return {mid: pd.read_parquet(mlflow.artifacts.download_artifacts(artifact_uri=info.valid_sets[mid],
                                                                    dst_path=str(dest)))
            for mid in info.marketplaces if mid in info.valid_sets}


def version_tags(
    *,
    parent: VersionInfo | None,
    marketplaces: Sequence[str],
    languages: Sequence[str],
    aucs: Mapping[str, float],
    test_sets: Mapping[str, str],
    data_hashes: Mapping[str, Mapping[str, str]],
    valid_aucs: Mapping[str, float] | None = None,
    valid_sets: Mapping[str, str] | None = None,
    extra: Mapping[str, str] = {},
) -> dict[str, str]:
    """The tags a version carries; test-set URIs and data hashes of untouched marketplaces come from the parent."""
    hashes = {**(parent.data_hashes if parent else {}), **{k: dict(v) for k, v in data_hashes.items()}}
    uris = {**(parent.test_sets if parent else {}), **test_sets}
    valid_uris = {**(parent.valid_sets if parent else {}), **(valid_sets or {})}
    tags = {
        "marketplace_order": ",".join(marketplaces),
        "languages": ",".join(languages),
        "data_hashes": json.dumps({m: hashes[m] for m in marketplaces if m in hashes}, sort_keys=True),
        "parent_version": parent.version if parent else "",
        **{f"auc.{k}": f"{v:.6f}" for k, v in aucs.items()},
        **{f"test_set.{m}": uris[m] for m in marketplaces},
        **{f"valid_auc.{k}": f"{v:.6f}" for k, v in (valid_aucs or {}).items()},
        **{f"valid_set.{m}": valid_uris[m] for m in marketplaces if m in valid_uris},
        **extra,
    }
    return tags


def decision_tags(decision: GateDecision) -> dict[str, str]:
    """The gate's verdict as version tags (written with the version's other tags, at creation)."""
    return {"gate": "passed" if decision.passed else "failed",
            "gate_checks": " | ".join(decision.checks) or "first version",
            **({"gate_reasons": " | ".join(decision.reasons)} if decision.reasons else {})}


def apply_decision(client: MlflowClient, version: str, decision: GateDecision, name: str = MODEL_NAME) -> str:
    """Move ``champion`` to the version when it passed, otherwise mark it ``challenger``; returns the alias set."""
    alias = CHAMPION if decision.passed else CHALLENGER
    client.set_registered_model_alias(name, alias, version)
    log.info("%s version %s -> @%s", name, version, alias)
    return alias


@contextmanager
def in_run(run_id: str | None) -> Iterator[None]:
    """Make ``run_id`` the active MLflow run in this thread unless it already is (a task may run in a worker
    thread, where the flow's run is not active); None leaves the active run as it is."""
    active = mlflow.active_run()
    if run_id is None or (active is not None and active.info.run_id == run_id):
        yield
        return
    with mlflow.start_run(run_id=run_id, nested=active is not None):
        yield


def registry_state(client: MlflowClient, name: str = MODEL_NAME) -> list[VersionInfo]:
    """Every version of ``name``, oldest first (empty when nothing is registered yet)."""
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return []
    return sorted((version_info(client, str(v.version), name) for v in versions), key=lambda v: int(v.version))


def lineage(client: MlflowClient, info: VersionInfo) -> list[VersionInfo]:
    """``info`` and its ancestors through ``parent_version``, oldest first (the rows of R[t][k])."""
    chain = [info]
    while chain[-1].parent:
        chain.append(version_info(client, chain[-1].parent))
    return chain[::-1]


@dataclass(frozen=True)
class RegistrationRequest:
    """What an arrival or a retraining asks the registry to record: the candidate folder, what it knows, how it
    scored, and what it is judged against."""

    model_dir: str
    encoder: EncoderRef
    marketplaces: list[str]  # the candidate's adapters, oldest first
    languages: list[str]
    new_marketplace: str | None  # None for a retraining
    parent: VersionInfo | None  # the version it was built on (lineage)
    champion: VersionInfo | None  # the version it must not fall behind
    evaluation: Evaluation
    new_tests: Mapping[str, pd.DataFrame]  # test sets stored for the first time
    new_valids: Mapping[str, pd.DataFrame]  # validation sets stored for the first time
    data_hashes: Mapping[str, Mapping[str, str]]
    gate: GateConfig
    work_dir: Path
    kind: str = "arrival"
    examples: Mapping[str, pd.DataFrame] = field(default_factory=dict)  # tables to take the input example from


def _store_tables(tables: Mapping[str, pd.DataFrame], work_dir: Path, folder: str) -> dict[str, str]:
    """Log each table as ``<folder>/<id>.parquet`` in the active run; returns their artifact URIs."""
    uris = {}
    for mid, table in tables.items():
        path = work_dir / folder / f"{mid}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        table.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), artifact_path=folder)
        uris[mid] = mlflow.get_artifact_uri(f"{folder}/{mid}.parquet")
    return uris


def _gate_scores(champion: VersionInfo | None,
                 ev: Evaluation) -> tuple[dict[str, float], dict[str, float], dict[str, str]]:
    """What the gate compares: validation ROC-AUC per marketplace (model selection never looks at test). A
    marketplace whose champion predates kept validation sets is compared on test, and its check says so."""
    before, after, on = {}, dict(ev.valid_aucs), {}
    for mid, test_auc in (champion.aucs if champion else {}).items():
        if mid in champion.valid_aucs and mid in ev.valid_aucs:
            before[mid] = champion.valid_aucs[mid]
        else:
            before[mid], after[mid], on[mid] = test_auc, ev.aucs[mid], "test (no kept validation set)"
    return before, after, on


def register(request: RegistrationRequest) -> Registration:
    """Store new test sets, register ``relevance`` (+ ``adapter-<id>``), judge it against the champion, set the alias.

    Runs inside the active MLflow run, which becomes the version's source run: the run that holds the plots
    and the model card (the flow's parent run; ``register_task`` makes sure of it). Every version tag, the gate's
    verdict included, is written with the version itself; only the alias moves afterwards.
    """
    r = request
    client = MlflowClient()
    uris = _store_tables(r.new_tests, r.work_dir, "test_sets")
    valid_uris = _store_tables(r.new_valids, r.work_dir, "valid_sets")
    ev = r.evaluation
    before, after, measured_on = _gate_scores(r.champion, ev)
    decision = promotion_decision(before, after, new_marketplace=r.new_marketplace, adapter_auc=ev.adapter_valid_auc,
                                  gate=r.gate, measured_on=measured_on)
    adapter_tag = {f"adapter_auc.{r.new_marketplace}": f"{ev.adapter_auc:.6f}"} if ev.adapter_auc is not None else {}
    tags = version_tags(
        parent=r.parent, marketplaces=r.marketplaces, languages=r.languages, aucs=ev.aucs, test_sets=uris,
        data_hashes=r.data_hashes, valid_aucs=ev.valid_aucs, valid_sets=valid_uris,
        extra={"kind": r.kind, "marketplace": r.new_marketplace or "", "encoder": r.encoder.name,
               "encoder_checksum": r.encoder.checksum, **adapter_tag, **decision_tags(decision)},
    )
    examples = {m: r.examples[m] for m in r.marketplaces if m in r.examples}
    version = log_relevance_pyfunc(Path(r.model_dir), r.encoder, registered_name=MODEL_NAME, tags=tags,
                                   example=input_example(examples) if examples else None)
    alias = apply_decision(client, version, decision)
    adapter_version = None
    if r.new_marketplace is not None:
        mid = r.new_marketplace
        single = single_adapter_folder(r.model_dir, mid, r.work_dir / f"adapter-{mid}")
        own_auc = ev.adapter_auc if ev.adapter_auc is not None else ev.aucs[mid]
        adapter_version = log_relevance_pyfunc(
            single, r.encoder, registered_name=adapter_model_name(mid),
            tags={"marketplace_order": mid, "languages": r.languages[r.marketplaces.index(mid)],
                  f"auc.{mid}": f"{own_auc:.6f}",
                  "data_hashes": json.dumps({mid: dict(r.data_hashes.get(mid, {}))}),
                  f"test_set.{mid}": uris.get(mid, ""), "relevance_version": version},
            example=input_example({mid: r.examples[mid]}) if mid in r.examples else None,
        )
    return Registration(version, alias, decision.passed, decision.reasons, decision.checks, adapter_version)
