"""The MLflow model registry as the pipeline's state: which model is champion, what it knows, how it scored.

Everything an arrival needs to continue the sequence lives on model-version tags, so any version
can be inspected, re-evaluated or used as a teacher without local state:
``marketplace_order``/``languages`` (the adapters, oldest first), ``data_hashes`` (train/valid/test
content hashes per marketplace), ``auc.<id>`` (test ROC-AUC per marketplace, reported) and ``valid_auc.<id>``
(validation ROC-AUC, what the gate decides on), ``test_set.<id>`` and ``valid_set.<id>``
(artifact URI of each marketplace's test table, carried forward from the version that first
stored it), ``parent_version`` and the gate's verdict, ``fingerprint`` (the identity of what produced the
version: its inputs, teacher, champion and settings; a second registration of the same fingerprint returns the
first version) and, for a retraining, ``fresh_data`` (the landing folders and data hashes it trained on).
Aliases ``champion`` and ``challenger`` mark what serves and what was refused; ``previous-champion`` marks the
version ``champion`` replaced, where a rollback goes (each champion's ``previous_champion`` tag names the one
before it, so repeated rollbacks walk back through the champions).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import pandas as pd
from filelock import FileLock
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
PREVIOUS_CHAMPION = "previous-champion"
FINGERPRINT_TAG = "fingerprint"
# "pending" from the version's creation until its alias and adapter model are set, then "complete".
REGISTRATION_TAG = "registration"
EXPERIMENT = "marketplace-arrivals"


def adapter_model_name(marketplace: str) -> str:
    return f"adapter-{marketplace}"


class ArrivalRefused(RuntimeError):
    """An arrival the registry cannot take (a marketplace the champion already has, without replace)."""


class RegistryError(RuntimeError):
    """An operator's registry command that cannot be carried out as asked (an unknown version, nothing to roll
    back to, a promotion that would stop serving marketplaces); the message says what exists or what to pass."""


class PromotionRefused(RuntimeError):
    """The gate kept the champion; the new version is registered as challenger."""

    def __init__(self, version: str, reasons: Sequence[str], name: str = MODEL_NAME) -> None:
        self.version = version
        self.reasons = list(reasons)
        self.name = name
        super().__init__(f"version {version} of {name!r} was not promoted (alias {CHALLENGER!r}): "
                         + "; ".join(self.reasons))

    def __reduce__(self) -> tuple:
        # A refusal is a flow run's final state data, persisted and read back by Prefect: rebuild from every field.
        return (type(self), (self.version, self.reasons, self.name))


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
    created: datetime | None = None
    description: str = ""


def _first_use_lock(tracking_uri: str) -> AbstractContextManager:
    """Local commands opening a new SQLite store at the same time each run MLflow's schema migrations on it, and all
    but one fail ("Online migration expected to match one row", reproduced with two processes in 3 of 3 tries):
    they take turns on a lock file beside the database. A tracking server migrates its own store."""
    if not tracking_uri.startswith("sqlite:///"):
        return nullcontext()
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(f"{database}.lock")


def setup_tracking(tracking_uri: str, artifact_location: str | None, experiment: str = EXPERIMENT) -> str:
    """Point MLflow at the store and make sure the experiment exists with our artifact root; returns its id."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    with _first_use_lock(tracking_uri):
        client = MlflowClient()  # creates or migrates the store's tables
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
        created=datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC) if mv.creation_timestamp else None,
        description=mv.description or "",
    )


def alias_version(client: MlflowClient, alias: str, name: str = MODEL_NAME) -> VersionInfo | None:
    """The version holding ``alias``, or None when the model or the alias does not exist yet."""
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    return version_info(client, str(mv.version), name)


def learnt_from(info: VersionInfo | None, marketplace: str, hashes: Mapping[str, str]) -> bool:
    """Whether ``info`` holds ``marketplace`` trained on exactly these tables (split -> content hash)."""
    return info is not None and marketplace in info.marketplaces and info.data_hashes.get(marketplace) == dict(hashes)


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


def move_champion(client: MlflowClient, version: str, previous: str | None, name: str = MODEL_NAME) -> None:
    """``champion`` -> ``version``; the version it leaves keeps ``previous-champion``, so a rollback knows where to go.

    ``previous-champion`` is set first: a crash between the two calls leaves it on the still-serving champion,
    which a rollback refuses as "already champion", never a champion alias pointing nowhere."""
    if previous is not None and previous != version:
        client.set_registered_model_alias(name, PREVIOUS_CHAMPION, previous)
    client.set_registered_model_alias(name, CHAMPION, version)


def apply_decision(client: MlflowClient, version: str, passed: bool, name: str = MODEL_NAME,
                   previous: str | None = None) -> str:
    """Move ``champion`` to the version when it passed the gate (``previous`` -- the champion it was judged
    against -- becomes ``previous-champion``), otherwise mark it ``challenger``; returns the alias set."""
    if passed:
        move_champion(client, version, previous, name)
        alias = CHAMPION
    else:
        alias = CHALLENGER
        client.set_registered_model_alias(name, alias, version)
    log.info("%s version %s -> @%s", name, version, alias)
    return alias


def version_numbers(client: MlflowClient, name: str = MODEL_NAME) -> list[str]:
    """Every version number of ``name``, ascending (for messages and checks; no per-version reads)."""
    return sorted((str(v.version) for v in client.search_model_versions(f"name = '{name}'")), key=int)


def require_version(client: MlflowClient, version: str, name: str = MODEL_NAME) -> VersionInfo:
    """The version an operator named, or a :class:`RegistryError` listing the versions that do exist."""
    known = version_numbers(client, name)
    if str(version).strip() not in known:
        raise RegistryError(f"version {version} of {name!r} does not exist; versions: "
                            + (", ".join(known) if known else "none (nothing is registered yet)"))
    return version_info(client, str(version).strip(), name)


def version_with_fingerprint(client: MlflowClient, fingerprint: str, name: str = MODEL_NAME) -> VersionInfo | None:
    """The version registered with this fingerprint (the oldest if a store predating the check holds several)."""
    found = client.search_model_versions(f"name = '{name}' AND tags.{FINGERPRINT_TAG} = '{fingerprint}'")
    if not found:
        return None
    return version_info(client, str(min(int(v.version) for v in found)), name)


def _listed(value: str | None) -> list[str]:
    return [x for x in (value or "").split(" | ") if x]


def adapter_version_of(client: MlflowClient, marketplace: str, version: str) -> str | None:
    """The ``adapter-<marketplace>`` version registered with ``relevance`` version ``version``, if any."""
    found = client.search_model_versions(f"name = '{adapter_model_name(marketplace)}' "
                                         f"AND tags.relevance_version = '{version}'")
    return str(found[0].version) if found else None


def registration_of(client: MlflowClient, info: VersionInfo, name: str = MODEL_NAME) -> Registration:
    """An existing version read back as the :class:`Registration` that created it (its verdict from its tags,
    the alias it holds now, its adapter version), for a duplicate request that must not register again."""
    alias = next((a for a in (CHAMPION, CHALLENGER, PREVIOUS_CHAMPION) if a in info.aliases), "none")
    checks = info.tags.get("gate_checks", "")
    mid = info.tags.get("marketplace")
    adapter = adapter_version_of(client, mid, info.version) if mid else None
    return Registration(info.version, alias, info.tags.get("gate") == "passed", _listed(info.tags.get("gate_reasons")),
                        [] if checks == "first version" else _listed(checks), adapter)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ChampionMove:
    """What a promotion or rollback did: the new champion, the one it replaced, and what now sits at
    ``previous-champion`` (where the next rollback would go; None: nowhere)."""

    champion: str
    replaced: str | None
    previous_champion: str | None
    dropped: list[str] = field(default_factory=list)  # marketplaces the replaced champion served and this one lacks


def promote(client: MlflowClient, version: str, *, force: bool = False, name: str = MODEL_NAME) -> ChampionMove:
    """Make ``version`` the champion by hand (e.g. a challenger a reviewer accepts), bypassing the gate.

    Refused unless ``force`` when the version lacks a marketplace the champion serves: every caller of
    ``models:/relevance@champion`` for that marketplace would start failing. The promotion is recorded on the
    version (``previous_champion``, ``promoted_at``, ``promoted_by``) and the replaced champion keeps
    ``previous-champion``."""
    target = require_version(client, version, name)
    champion = alias_version(client, CHAMPION, name)
    if champion is not None and champion.version == target.version:
        raise RegistryError(f"version {target.version} of {name!r} is already @{CHAMPION}")
    dropped = [m for m in champion.marketplaces if m not in target.marketplaces] if champion else []
    if dropped and not force:
        raise RegistryError(
            f"version {target.version} of {name!r} has marketplaces {','.join(target.marketplaces) or 'none'}, not "
            f"all of @{CHAMPION}'s (version {champion.version}: {','.join(champion.marketplaces)}); promoting it "
            f"would stop serving {','.join(dropped)}. Pass --force to promote it anyway")
    move_champion(client, target.version, champion.version if champion else None, name)
    if CHALLENGER in target.aliases:
        client.delete_registered_model_alias(name, CHALLENGER)
    record = {"previous_champion": champion.version if champion else "", "promoted_at": _now(),
              "promoted_by": "manual" + (f" --force (dropped {','.join(dropped)})" if dropped else "")}
    for key, value in record.items():
        client.set_model_version_tag(name, target.version, key, value)
    log.info("%s version %s -> @%s by hand (was version %s)", name, target.version, CHAMPION,
             champion.version if champion else "none")
    return ChampionMove(target.version, champion.version if champion else None,
                        champion.version if champion else None, dropped)


def rollback(client: MlflowClient, name: str = MODEL_NAME) -> ChampionMove:
    """Move ``champion`` back to ``previous-champion`` and record it on the version rolled back from
    (``rolled_back_at``, ``rolled_back_to``).

    ``previous-champion`` then moves one step further back (the restored version's ``previous_champion`` tag,
    when that version still exists), so rolling back twice undoes two promotions; with no older champion
    recorded the alias is removed and a further rollback is refused."""
    previous = alias_version(client, PREVIOUS_CHAMPION, name)
    champion = alias_version(client, CHAMPION, name)
    if previous is None:
        raise RegistryError(f"{name!r} has no @{PREVIOUS_CHAMPION} to roll back to"
                            + (f" (@{CHAMPION} is version {champion.version})" if champion else "")
                            + "; promote a version by number instead: mcl registry promote VERSION")
    if champion is not None and champion.version == previous.version:
        raise RegistryError(f"@{PREVIOUS_CHAMPION} and @{CHAMPION} are both version {champion.version} of {name!r}: "
                            "nothing to roll back; promote a version by number instead")
    client.set_registered_model_alias(name, CHAMPION, previous.version)
    before = previous.tags.get("previous_champion") or None
    if before is not None and (before == previous.version or before not in version_numbers(client, name)):
        before = None
    if before is None:
        client.delete_registered_model_alias(name, PREVIOUS_CHAMPION)
    else:
        client.set_registered_model_alias(name, PREVIOUS_CHAMPION, before)
    if champion is not None:
        client.set_model_version_tag(name, champion.version, "rolled_back_at", _now())
        client.set_model_version_tag(name, champion.version, "rolled_back_to", previous.version)
    log.info("%s @%s rolled back from version %s to %s", name, CHAMPION, champion.version if champion else "none",
             previous.version)
    return ChampionMove(previous.version, champion.version if champion else None, before)


def used_training_data(client: MlflowClient, name: str = MODEL_NAME) -> dict[str, dict[tuple[str, str], str]]:
    """Per marketplace, every (train, valid) content-hash pair some version was trained on -> the oldest such
    version: an arrival's tables (``data_hashes`` train/valid) and a retraining's fresh tables (retrain_train/
    retrain_valid). What a scheduled retraining must not train on again."""
    used: dict[str, dict[tuple[str, str], str]] = {}
    for info in registry_state(client, name):
        for mid, hashes in info.data_hashes.items():
            for prefix in ("", "retrain_"):
                pair = (hashes.get(f"{prefix}train"), hashes.get(f"{prefix}valid"))
                if pair[0] and pair[1]:
                    used.setdefault(mid, {}).setdefault(pair, info.version)
    return used


def unused_fresh_data(client: MlflowClient, folders: Mapping[str, str],
                      hashes: Mapping[str, Mapping[str, str]], name: str = MODEL_NAME) -> list[str]:
    """The marketplaces whose fresh train and valid tables no registered version has trained on yet; each one
    skipped is logged with the version that used its data (what an operator needs to see why nothing ran)."""
    used = used_training_data(client, name)
    unused = []
    for mid, h in hashes.items():
        version = used.get(mid, {}).get((h["train"], h["valid"]))
        if version is None:
            unused.append(mid)
        else:
            log.info("fresh data for %s in %s was already trained on by %s version %s (train sha256 %s): skipped",
                     mid, folders[mid], name, version, h["train"][:12])
    return unused


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
    # Identity of what produced the candidate; a version already registered with it is returned, not duplicated.
    fingerprint: str = ""
    extra_tags: Mapping[str, str] = field(default_factory=dict)  # e.g. a retraining's fresh_data


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


def _complete(client: MlflowClient, r: RegistrationRequest, info: VersionInfo) -> tuple[str, str | None]:
    """What follows the version's creation: its alias (from the gate verdict in its tags) and the new
    marketplace's adapter model; then ``registration=complete``. The only part a crash or an MLflow outage can cut
    once the version exists, so a retry that finds the version by fingerprint runs just this, once."""
    alias = apply_decision(client, info.version, info.tags.get("gate") == "passed",
                           previous=r.champion.version if r.champion else None)
    adapter_version = None
    if r.new_marketplace is not None:
        mid = r.new_marketplace
        adapter_version = adapter_version_of(client, mid, info.version)
        if adapter_version is None:
            ev = r.evaluation
            single = single_adapter_folder(r.model_dir, mid, r.work_dir / f"adapter-{mid}")
            own_auc = ev.adapter_auc if ev.adapter_auc is not None else ev.aucs[mid]
            adapter_version = log_relevance_pyfunc(
                single, r.encoder, registered_name=adapter_model_name(mid),
                tags={"marketplace_order": mid, "languages": r.languages[r.marketplaces.index(mid)],
                      f"auc.{mid}": f"{own_auc:.6f}",
                      "data_hashes": json.dumps({mid: dict(r.data_hashes.get(mid, {}))}),
                      f"test_set.{mid}": info.test_sets.get(mid, ""), "relevance_version": info.version},
                example=input_example({mid: r.examples[mid]}) if mid in r.examples else None,
                metrics={f"test_auc.{mid}": own_auc},
            )
    client.set_model_version_tag(MODEL_NAME, info.version, REGISTRATION_TAG, "complete")
    return alias, adapter_version


def register(request: RegistrationRequest) -> Registration:
    """Store new test sets, register ``relevance`` (+ ``adapter-<id>``), judge it against the champion, set the alias.

    Runs inside the active MLflow run, which becomes the version's source run: the run that holds the plots
    and the model card (the flow's parent run; ``register_task`` makes sure of it). Every version tag, the gate's
    verdict included, is written with the version itself; afterwards only the alias moves, the adapter model is
    registered, and ``registration`` turns from ``pending`` to ``complete`` (:func:`_complete`).

    A request whose ``fingerprint`` a version already carries (a duplicate event, a rerun after a crash past
    this point) stores nothing and returns that version: the same model is never registered twice.
    """
    r = request
    client = MlflowClient()
    if r.fingerprint:
        existing = version_with_fingerprint(client, r.fingerprint)
        if existing is not None:
            if existing.tags.get(REGISTRATION_TAG) == "pending":
                log.warning("%s version %s was created but its registration was cut (alias, adapter model): "
                            "completing it", MODEL_NAME, existing.version)
                _complete(client, r, existing)
            else:
                log.info("%s version %s already holds fingerprint %s: not registered again", MODEL_NAME,
                         existing.version, r.fingerprint[:16])
            return registration_of(client, version_info(client, existing.version))
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
               "encoder_checksum": r.encoder.checksum, **adapter_tag, **decision_tags(decision),
               **({FINGERPRINT_TAG: r.fingerprint} if r.fingerprint else {}), REGISTRATION_TAG: "pending",
               # the champion this one replaces, for rollbacks that walk back more than one step
               **({"previous_champion": r.champion.version} if decision.passed and r.champion else {}),
               **r.extra_tags},
    )
    examples = {m: r.examples[m] for m in r.marketplaces if m in r.examples}
    scores = {**{f"test_auc.{m}": v for m, v in ev.aucs.items()}, **{f"valid_auc.{m}": v for m, v in ev.valid_aucs.items()}}
    version = log_relevance_pyfunc(Path(r.model_dir), r.encoder, registered_name=MODEL_NAME, tags=tags,
                                   example=input_example(examples) if examples else None, metrics=scores)
    alias, adapter_version = _complete(client, r, version_info(client, version))
    return Registration(version, alias, decision.passed, decision.reasons, decision.checks, adapter_version)
