"""The arrival's steps as plain functions, and thin Prefect task wrappers around them.

Plain functions take tables and model folders and return folders and numbers, so tests can call
them directly. The wrappers add what orchestration needs: retries for steps that touch storage,
persisted results with cache keys derived from data hashes and configuration (a rerun after a
crash resumes at the failed step and never retrains a finished one), and one nested MLflow run
per step. Training steps also checkpoint every epoch inside their keyed work folder, so a crash
*inside* a step resumes from the last finished epoch.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import mlflow
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency

from tasks.learner import to_pairs, translated_source

if TYPE_CHECKING:
    from models.encoders import EncoderRef
    from models.relevance import MarketplaceSpec
    from models.sequence import LearnerConfig

log = logging.getLogger(__name__)
# Logging a dataset (mlflow.data.from_pandas) warns that the integer label column could not hold missing
# values; the data contract forbids missing labels, so on every arrival this is noise in the operator's log.
warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column", category=UserWarning)

REGISTRY_LOCK = "mcl-registry"
T = TypeVar("T")


@dataclass(frozen=True)
class StageOutput:
    """A training step's result: where its model folder is and what the stage reported."""

    model_dir: str
    report: dict


@dataclass(frozen=True)
class Evaluation:
    """Test ROC-AUC of the candidate per marketplace, the new marketplace's adapter-only score,
    the fusion attention profile and the raw scores (for ROC curves)."""

    aucs: dict[str, float]
    adapter_auc: float | None
    attention: dict[str, dict[str, float]]
    labels: dict[str, list[int]] = field(default_factory=dict)
    scores: dict[str, list[float]] = field(default_factory=dict)


# --------------------------------------------------------------------------- plain steps
def translate_step(
    train: pd.DataFrame,
    source_language: str,
    target_languages: list[str],
    *,
    fraction: float,
    seed: int,
    backend: str,
    cache_dir: Path,
) -> dict[str, pd.DataFrame]:
    """T_1..T_{t-1}: a fraction of D_t in each older language.

    With ``backend="auto"`` and no translator for a pair on this machine, the arrival continues
    without translations (the paper's §4.2 variant: every D_t batch gets CE + L_AD) and says so;
    a backend named explicitly must work.
    """
    targets = sorted({lang for lang in target_languages if lang != source_language})
    if not targets or fraction <= 0:
        return {}
    from tasks.translation import translate_subset
    from tasks.translation.errors import NoRouteError

    try:
        return dict(translate_subset(train, source_language, targets, fraction=fraction, seed=seed, backend=backend,
                                     cache_dir=cache_dir))
    except NoRouteError as err:
        if backend != "auto":
            raise
        log.warning("no translation for %s -> %s on this machine (%s); distilling on D_t itself (paper §4.2)",
                    source_language, ",".join(targets), err)
        return {}


def _load_or_create(teacher_dir: str | None, encoder: EncoderRef, cfg: LearnerConfig):
    from models.device import resolve_device
    from models.relevance import RelevanceModel

    device = resolve_device(cfg.device)
    if teacher_dir is None:
        model = RelevanceModel.create(encoder, max_length=cfg.max_length)
        model.net.to(device)
        return model
    return RelevanceModel.load(teacher_dir, encoder, device=device)


def _stage_in_folder(model_dir: str | None, encoder: EncoderRef, cfg: LearnerConfig, work_dir: Path, name: str,
                     train: Callable[[Any, Path], Any]) -> StageOutput:
    """Load the step's input model, train it with per-epoch checkpoints in ``work_dir``, save the result there."""
    model = _load_or_create(model_dir, encoder, cfg)
    checkpoint = work_dir / f"{name}-epoch.pt"
    report = train(model, checkpoint)
    out = model.save(work_dir / "model")
    checkpoint.unlink(missing_ok=True)  # the saved folder supersedes the epoch checkpoint
    return StageOutput(str(out), report.as_dict())


def adapter_step(
    teacher_dir: str | None,
    encoder: EncoderRef,
    spec: MarketplaceSpec,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    cfg: LearnerConfig,
    work_dir: Path,
) -> StageOutput:
    """Stage 2 on top of the teacher M_{t-1} (or a bare encoder): the teacher's adapters and fusion stay as they are."""
    from models.stages import train_language_adapter

    return _stage_in_folder(teacher_dir, encoder, cfg, work_dir, "adapter", lambda model, checkpoint: (
        train_language_adapter(model, spec, to_pairs(train), to_pairs(valid), cfg.adapter, checkpoint=checkpoint)))


def fusion_step(
    adapter_dir: str,
    encoder: EncoderRef,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    translated: Mapping[str, pd.DataFrame],
    cfg: LearnerConfig,
    work_dir: Path,
) -> StageOutput:
    """Stage 3: a fresh fusion over all adapters, distilling the teacher fusion's attention on T_k."""
    from models.stages import distill_fusion

    sets = [to_pairs(table, translated_source(lang)) for lang, table in sorted(translated.items())]
    return _stage_in_folder(adapter_dir, encoder, cfg, work_dir, "fusion", lambda model, checkpoint: (
        distill_fusion(model, to_pairs(train), to_pairs(valid), sets, cfg.fusion, cfg.distill, checkpoint=checkpoint)))


def redistill_step(
    teacher_dir: str,
    encoder: EncoderRef,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    cfg: LearnerConfig,
    work_dir: Path,
) -> StageOutput:
    """Retraining: a fresh fusion over the champion's adapters, CE on fresh data + L_AD against the champion's fusion."""
    from models.stages import redistill_fusion

    return _stage_in_folder(teacher_dir, encoder, cfg, work_dir, "refusion", lambda model, checkpoint: (
        redistill_fusion(model, to_pairs(train), to_pairs(valid), cfg.fusion, cfg.distill, checkpoint=checkpoint)))


def evaluate_step(
    model_dir: str,
    encoder: EncoderRef,
    tests: Mapping[str, pd.DataFrame],
    new_marketplace: str | None,
    device: str = "auto",
) -> Evaluation:
    """ROC-AUC on every marketplace's test set, plus the new marketplace's adapter-only score when fused."""
    from models.device import resolve_device
    from models.metrics import roc_auc
    from models.relevance import RelevanceModel
    from models.sequence import fusion_attention_profile

    model = RelevanceModel.load(model_dir, encoder, device=resolve_device(device))
    pairs = {mid: to_pairs(table) for mid, table in tests.items()}
    scores = {mid: model.predict_proba(p) for mid, p in pairs.items()}
    aucs = {mid: roc_auc(pairs[mid].labels, s) for mid, s in scores.items()}
    adapter_auc = None
    if model.fusion is not None and new_marketplace is not None:
        adapter_auc = roc_auc(pairs[new_marketplace].labels,
                              model.predict_proba(pairs[new_marketplace], setup=new_marketplace))
    return Evaluation(
        aucs=aucs,
        adapter_auc=adapter_auc,
        attention=fusion_attention_profile(model, pairs),
        labels={mid: [int(x) for x in p.labels] for mid, p in pairs.items()},
        scores={mid: [float(x) for x in s] for mid, s in scores.items()},
    )


def single_adapter_folder(model_dir: str | Path, marketplace: str, out_dir: Path) -> Path:
    """A model folder holding only ``marketplace``'s adapter and head (what ``adapter-<id>`` registers)."""
    from models.relevance import MANIFEST, RelevanceModel

    source = Path(model_dir)
    manifest = RelevanceModel.read_manifest(source)
    spec = next((m for m in manifest["marketplaces"] if m["id"] == marketplace), None)
    if spec is None:
        raise ValueError(f"{source} has no adapter for marketplace {marketplace!r}")
    out = Path(out_dir)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(source / "adapters" / marketplace, out / "adapters" / marketplace)
    (out / MANIFEST).write_text(json.dumps({**manifest, "marketplaces": [spec], "fusion": None}, indent=2))
    return out


# --------------------------------------------------------------------------- orchestration
def keyed_cache(task_ctx: Any, parameters: Mapping[str, Any]) -> str:
    """Cache key = the step's ``key`` argument, which the flow derives from data hashes + configuration."""
    return f"{task_ctx.task.name}-{parameters['key']}"


@contextmanager
def step_run(name: str, parent_run_id: str | None) -> Iterator[None]:
    """One nested MLflow run per step, under the arrival's run (explicit parent: steps may run in other threads)."""
    if parent_run_id is None:
        yield
        return
    with mlflow.start_run(run_name=name, nested=True, parent_run_id=parent_run_id):
        yield


@contextmanager
def registry_lock(name: str = REGISTRY_LOCK, timeout_seconds: float | None = None) -> Iterator[None]:
    """Serialise arrivals through a Prefect global concurrency limit of 1: the registry never forks.

    The limit is created on first use, so a fresh server needs no set-up; every process talking
    to the same Prefect server (any machine) queues on it.
    """
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, 1)
    with concurrency(name, occupy=1, timeout_seconds=timeout_seconds, strict=True):
        yield


def _in_step(name: str, fn: Callable[..., T], parent_run_id: str | None, log_outputs: Callable[[T], None] | None,
             *args: Any, **kwargs: Any) -> T:
    with step_run(name, parent_run_id):
        result = fn(*args, **kwargs)
        # Each step loads the encoder (hundreds of MB); adapter hooks keep model graphs in reference
        # cycles, so collect now rather than let two steps' models overlap in a long-lived flow process.
        gc.collect()
        if parent_run_id is not None and log_outputs is not None:
            log_outputs(result)
    return result


def _log_stage(output: StageOutput) -> None:
    fit = output.report["fit"]
    mlflow.log_metrics({"best_valid_auc": fit["best_metric"], "epochs_run": fit["epochs_run"],
                        "trainable_parameters": fit["trainable_parameters"],
                        "examples_per_second": fit["examples_per_second"],
                        "trainable_fraction": output.report["trainable_fraction"]})
    for record in fit["history"]:
        mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=int(record["epoch"]))
    mlflow.log_dict(output.report, "stage_report.json")


@task(name="translate-subset", retries=2, retry_delay_seconds=2, cache_key_fn=keyed_cache, persist_result=True)
def translate_task(key: str, train: pd.DataFrame, source_language: str, target_languages: list[str], *,
                   fraction: float, seed: int, backend: str, cache_dir: Path,
                   parent_run_id: str | None = None) -> dict[str, pd.DataFrame]:
    def log_sets(sets: dict[str, pd.DataFrame]) -> None:
        mlflow.log_params({"fraction": fraction, "backend": backend, "targets": ",".join(sorted(sets)) or "none"})
        for lang, table in sets.items():
            mlflow.log_metric(f"translated_rows.{lang}", len(table))
            mlflow.log_input(mlflow.data.from_pandas(table, name=f"translated-{lang}"), context="translated")

    return _in_step("translate-subset", translate_step, parent_run_id, log_sets, train, source_language,
                    target_languages, fraction=fraction, seed=seed, backend=backend, cache_dir=cache_dir)


@task(name="train-new-language-adapter", cache_key_fn=keyed_cache, persist_result=True)
def adapter_task(key: str, teacher_dir: str | None, encoder: EncoderRef, spec: MarketplaceSpec,
                 train: pd.DataFrame, valid: pd.DataFrame, cfg: LearnerConfig, work_dir: Path,
                 parent_run_id: str | None = None) -> StageOutput:
    return _in_step("train-new-language-adapter", adapter_step, parent_run_id, _log_stage,
                    teacher_dir, encoder, spec, train, valid, cfg, work_dir)


@task(name="attention-distill-fusion", cache_key_fn=keyed_cache, persist_result=True)
def fusion_task(key: str, adapter_dir: str, encoder: EncoderRef, train: pd.DataFrame, valid: pd.DataFrame,
                translated: dict[str, pd.DataFrame], cfg: LearnerConfig, work_dir: Path,
                parent_run_id: str | None = None) -> StageOutput:
    return _in_step("attention-distill-fusion", fusion_step, parent_run_id, _log_stage,
                    adapter_dir, encoder, train, valid, translated, cfg, work_dir)


@task(name="re-distill-fusion", cache_key_fn=keyed_cache, persist_result=True)
def redistill_task(key: str, teacher_dir: str, encoder: EncoderRef, train: pd.DataFrame, valid: pd.DataFrame,
                   cfg: LearnerConfig, work_dir: Path, parent_run_id: str | None = None) -> StageOutput:
    return _in_step("re-distill-fusion", redistill_step, parent_run_id, _log_stage,
                    teacher_dir, encoder, train, valid, cfg, work_dir)


@task(name="evaluate", cache_key_fn=keyed_cache, persist_result=True)
def evaluate_task(key: str, model_dir: str, encoder: EncoderRef, tests: dict[str, pd.DataFrame],
                  new_marketplace: str | None, device: str = "auto",
                  parent_run_id: str | None = None) -> Evaluation:
    def log_evaluation(ev: Evaluation) -> None:
        mlflow.log_metrics({f"test_auc.{k}": v for k, v in ev.aucs.items()})
        if ev.adapter_auc is not None:
            mlflow.log_metric(f"adapter_only_auc.{new_marketplace}", ev.adapter_auc)
        from tasks import reporting

        reporting.log_evaluation_figures(ev)

    return _in_step("evaluate", evaluate_step, parent_run_id, log_evaluation, model_dir, encoder, tests,
                    new_marketplace, device)


@dataclass(frozen=True)
class Registration:
    version: str
    alias: str
    passed: bool
    reasons: list[str]
    checks: list[str]
    adapter_version: str | None


def register_step(
    *,
    model_dir: str,
    encoder: EncoderRef,
    marketplaces: list[str],
    languages: list[str],
    new_marketplace: str | None,
    parent: Any,
    champion: Any,
    evaluation: Evaluation,
    new_tests: Mapping[str, pd.DataFrame],
    data_hashes: Mapping[str, Mapping[str, str]],
    max_regression: float,
    adapter_margin: float,
    work_dir: Path,
    kind: str = "arrival",
) -> Registration:
    """Store new test sets, register ``relevance`` (+ ``adapter-<id>``), judge it against the champion, set the alias.

    Runs inside an active MLflow run: the version's source run holds the pyfunc and the test tables.
    """
    from mlflow.tracking import MlflowClient

    from tasks import registry

    client = MlflowClient()
    uris = {}
    for mid, table in new_tests.items():
        path = work_dir / "test_sets" / f"{mid}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        table.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), artifact_path="test_sets")
        uris[mid] = mlflow.get_artifact_uri(f"test_sets/{mid}.parquet")
    decision = registry.promotion_decision(
        champion.aucs if champion else {}, evaluation.aucs, new_marketplace=new_marketplace,
        adapter_auc=evaluation.adapter_auc, max_regression=max_regression, adapter_margin=adapter_margin,
    )
    tags = registry.version_tags(
        parent=parent, marketplaces=marketplaces, languages=languages, aucs=evaluation.aucs, test_sets=uris,
        data_hashes=data_hashes,
        extra={"kind": kind, "marketplace": new_marketplace or "", "encoder": encoder.name,
               "encoder_checksum": encoder.checksum,
               **({f"adapter_auc.{new_marketplace}": f"{evaluation.adapter_auc:.6f}"}
                  if evaluation.adapter_auc is not None else {})},
    )
    version = registry.log_relevance_pyfunc(Path(model_dir), encoder, registered_name=registry.MODEL_NAME,
                                            tags=tags)
    alias = registry.apply_decision(client, version, decision)
    adapter_version = None
    if new_marketplace is not None:
        single = single_adapter_folder(model_dir, new_marketplace, work_dir / f"adapter-{new_marketplace}")
        own_auc = evaluation.adapter_auc if evaluation.adapter_auc is not None else evaluation.aucs[new_marketplace]
        lang = languages[marketplaces.index(new_marketplace)]
        adapter_version = registry.log_relevance_pyfunc(
            single, encoder, registered_name=registry.adapter_model_name(new_marketplace),
            tags={"marketplace_order": new_marketplace, "languages": lang, f"auc.{new_marketplace}": f"{own_auc:.6f}",
                  "data_hashes": json.dumps({new_marketplace: dict(data_hashes.get(new_marketplace, {}))}),
                  f"test_set.{new_marketplace}": uris.get(new_marketplace, ""), "relevance_version": version},
        )
    return Registration(version, alias, decision.passed, decision.reasons, decision.checks, adapter_version)


@task(name="register", cache_policy=NO_CACHE)
def register_task(arguments: dict[str, Any], parent_run_id: str | None = None) -> Registration:
    """``register_step(**arguments)``; not cached and not retried: registering twice would create two versions."""
    with step_run("register", parent_run_id):
        result = register_step(**arguments)
        if parent_run_id is not None:
            mlflow.log_params({"version": result.version, "alias": result.alias})
            mlflow.log_text("\n".join(result.checks) or "first version: nothing to compare", "gate.txt")
    return result


@task(name="fetch-teacher", retries=3, retry_delay_seconds=2, cache_policy=NO_CACHE)
def fetch_teacher_task(info: Any, dest: Path) -> tuple[str, dict[str, pd.DataFrame]]:
    """The teacher's model folder and its old test sets, from the registry's artifact store (retried: I/O)."""
    from tasks import registry

    return str(registry.model_folder(info, dest / "models")), registry.read_test_sets(info, dest / "test_sets" / f"v{info.version}-{info.run_id}")
