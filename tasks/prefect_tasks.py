"""Thin Prefect task wrappers over :mod:`tasks.steps` and :mod:`tasks.registry`.

The wrappers add what orchestration needs: retries for steps that touch storage, persisted results
with cache keys derived from data hashes and configuration (a rerun after a crash resumes at the
failed step and never retrains a finished one), and one nested MLflow run per step. The lock that serialises
arrivals is :mod:`tasks.registry_lock`.
"""

from __future__ import annotations

import gc
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import mlflow
import pandas as pd
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks import hashing, registry, reporting, steps
from tasks.records import Evaluation, Registration, StageOutput

if TYPE_CHECKING:
    from models.config import EncoderDistillConfig, LearnerConfig, StudentConfig
    from models.encoder_distill import DistillResult, DomainText
    from models.encoders import EncoderRef
    from models.relevance import MarketplaceSpec
    from tasks.encoder_evaluation import EncoderEvaluation
    from tasks.encoder_registry import EncoderRegistration, EncoderRegistrationRequest
    from tasks.student_registry import StudentRegistrationRequest
    from tasks.student_steps import StudentTeachers

log = logging.getLogger(__name__)
# Logging a dataset (mlflow.data.from_pandas) warns that the integer label column could not hold missing
# values; the data contract forbids missing labels, so on every arrival this is noise in the operator's log.
warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column", category=UserWarning)

# Names the Prefect Secret block with the object store's credentials (a name is not a secret: it may sit in
# a deployment's job variables; the value never does).
STORAGE_CREDENTIALS_BLOCK_ENV = "MCL_S3_CREDENTIALS_BLOCK"
STORAGE_CREDENTIAL_KEYS = {"aws_access_key_id": "AWS_ACCESS_KEY_ID", "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY"}
T = TypeVar("T")


PROJECT_LOGGERS = ("models", "tasks", "flows")


def project_log_level(level: int = logging.INFO) -> None:
    """Let the project's INFO lines (stages, epochs, announcements) through in a flow-run process.

    ``PREFECT_LOGGING_EXTRA_LOGGERS=models,tasks,flows`` (set for the deployments and the compose worker)
    attaches Prefect's API handler to these loggers, but a worker's flow-run process leaves the root logger
    at WARNING, so without a level of their own only warnings would reach the run's log in the UI. A level
    set explicitly (e.g. by ``mcl --verbose``) is kept."""
    for name in PROJECT_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(level)


def load_storage_credentials(block_name: str | None = None) -> bool:
    """Put the object store's credentials from a Prefect Secret block into this process's environment, where
    boto3 (data readers, the landing zone) and MLflow's S3 client read them; returns whether a block was loaded.

    Why at run time and not as ``{{ prefect.blocks.secret.NAME }}`` in ``flows/prefect.yaml``: ``prefect deploy``
    resolves block and variable templates when it registers a deployment, so the secret would be stored in plain
    text in the deployment's job variables again. Loaded here, the value only exists in the run that needs it,
    and rotating it is one ``Secret(value={...}).save(NAME, overwrite=True)``: the next run uses the new value.
    The block holds ``{"aws_access_key_id": ..., "aws_secret_access_key": ...}``. Without a block name (the
    argument or ``$MCL_S3_CREDENTIALS_BLOCK``), e.g. local runs and the compose worker, the environment's own
    credentials are used unchanged.
    """
    name = block_name or os.environ.get(STORAGE_CREDENTIALS_BLOCK_ENV)
    if not name:
        return False
    from prefect.blocks.system import Secret

    value = Secret.load(name).get()
    missing = sorted(set(STORAGE_CREDENTIAL_KEYS) - set(value if isinstance(value, dict) else {}))
    if missing:
        raise ValueError(f"Prefect Secret block {name!r} must hold a JSON object with "
                         f"{sorted(STORAGE_CREDENTIAL_KEYS)}; missing {missing}")
    for key, variable in STORAGE_CREDENTIAL_KEYS.items():
        os.environ[variable] = str(value[key])
    log.info("object-store credentials from Prefect Secret block %r", name)
    return True


def keyed_cache(task_ctx: Any, parameters: Mapping[str, Any]) -> str:
    """Cache key = the step's ``key`` argument, which the flow derives from data hashes + configuration, and the
    code that computes it (:func:`tasks.hashing.code_fingerprint`): an upgraded learner never reuses an older one's
    results."""
    return f"{task_ctx.task.name}-{parameters['key']}-{hashing.code_fingerprint()[:16]}"


@contextmanager
def step_run(name: str, parent_run_id: str | None) -> Iterator[None]:
    """One nested MLflow run per step, under the arrival's run (explicit parent: steps may run in other threads)."""
    if parent_run_id is None:
        yield
        return
    with mlflow.start_run(run_name=name, nested=True, parent_run_id=parent_run_id):
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
        mlflow.log_params({"fraction": fraction, "backend": backend, "targets": ",".join(sorted(sets)) or "none",
                           **{f"route.{lang}": route for lang, route in
                              steps.translation_routes(sets, target_languages).items()}})
        for lang, table in sets.items():
            mlflow.log_metric(f"translated_rows.{lang}", len(table))
            mlflow.log_input(mlflow.data.from_pandas(table, name=f"translated-{lang}"), context="translated")

    return _in_step("translate-subset", steps.translate_step, parent_run_id, log_sets, train, source_language,
                    target_languages, fraction=fraction, seed=seed, backend=backend, cache_dir=cache_dir)


@task(name="train-new-language-adapter", cache_key_fn=keyed_cache, persist_result=True)
def adapter_task(key: str, teacher_dir: str | None, encoder: EncoderRef, spec: MarketplaceSpec,
                 train: pd.DataFrame, valid: pd.DataFrame, cfg: LearnerConfig, work_dir: Path,
                 parent_run_id: str | None = None) -> StageOutput:
    return _in_step("train-new-language-adapter", steps.adapter_step, parent_run_id, _log_stage,
                    teacher_dir, encoder, spec, train, valid, cfg, work_dir)


@task(name="attention-distill-fusion", cache_key_fn=keyed_cache, persist_result=True)
def fusion_task(key: str, adapter_dir: str, encoder: EncoderRef, train: pd.DataFrame, valid: pd.DataFrame,
                translated: dict[str, pd.DataFrame], cfg: LearnerConfig, work_dir: Path,
                kept_valid: dict[str, pd.DataFrame] | None = None, parent_run_id: str | None = None) -> StageOutput:
    return _in_step("attention-distill-fusion", steps.fusion_step, parent_run_id, _log_stage,
                    adapter_dir, encoder, train, valid, translated, cfg, work_dir, kept_valid)


@task(name="re-distill-fusion", cache_key_fn=keyed_cache, persist_result=True)
def redistill_task(key: str, teacher_dir: str, encoder: EncoderRef, train: pd.DataFrame, valid: pd.DataFrame,
                   cfg: LearnerConfig, work_dir: Path, parent_run_id: str | None = None) -> StageOutput:
    return _in_step("re-distill-fusion", steps.redistill_step, parent_run_id, _log_stage,
                    teacher_dir, encoder, train, valid, cfg, work_dir)


def _log_joint(output: StageOutput) -> None:
    """What a reviewer compares a joint retraining by: per marketplace its best and final validation ROC-AUC, the
    step of its best, the step its loss switched to distillation, and the curves with the switch points marked."""
    joint = output.report["details"]["joint"]
    mlflow.log_params({"retrain_method": joint["method"], "stopped": joint["stopped"], "steps": joint["steps"],
                       **{f"switch_step.{m}": s for m, s in joint["switch_step"].items() if s is not None}})
    mlflow.log_metrics({**{f"best_valid_auc.{m}": v for m, v in joint["best"].items()},
                        **{f"final_valid_auc.{m}": v for m, v in joint["final"].items()},
                        **{f"best_step.{m}": v for m, v in joint["best_step"].items()}})
    for mid, curve in joint["curves"].items():
        for step, value in curve:
            mlflow.log_metric(f"valid_auc_curve.{mid}", value, step=int(step))
    mlflow.log_figure(reporting.joint_curves_figure(joint["curves"], joint["switch_step"], joint["method"]),
                      "joint_validation_curves.png")
    mlflow.log_table(pd.DataFrame(reporting.joint_rows(joint)), "joint_retrain.json")
    mlflow.log_dict(output.report, "stage_report.json")


@task(name="joint-retrain", cache_key_fn=keyed_cache, persist_result=True)
def joint_retrain_task(key: str, teacher_dir: str, encoder: EncoderRef, train: dict[str, pd.DataFrame],
                       valid: dict[str, pd.DataFrame], cfg: LearnerConfig, work_dir: Path,
                       parent_run_id: str | None = None) -> StageOutput:
    output = _in_step("joint-retrain", steps.joint_retrain_step, parent_run_id, _log_joint,
                      teacher_dir, encoder, train, valid, cfg, work_dir)
    create_table_artifact(table=reporting.joint_rows(output.report["details"]["joint"]), key="joint-retrain",
                          description=f"{cfg.retrain.method}: each marketplace's best and final validation ROC-AUC, "
                                      "the step of its best and the step its loss switched to distillation")
    return output


@task(name="evaluate", cache_key_fn=keyed_cache, persist_result=True)
def evaluate_task(key: str, model_dir: str, encoder: EncoderRef, tests: dict[str, pd.DataFrame],
                  valids: dict[str, pd.DataFrame], new_marketplace: str | None, device: str,
                  parent_run_id: str | None = None) -> Evaluation:
    def log_evaluation(ev: Evaluation) -> None:
        mlflow.log_metrics({f"test_auc.{k}": v for k, v in ev.aucs.items()})
        mlflow.log_metrics({f"valid_auc.{k}": v for k, v in ev.valid_aucs.items()})
        if ev.adapter_auc is not None:
            mlflow.log_metric(f"adapter_only_auc.{new_marketplace}", ev.adapter_auc)
        reporting.log_evaluation_figures(ev)

    return _in_step("evaluate", steps.evaluate_step, parent_run_id, log_evaluation, model_dir, encoder, tests,
                    valids, new_marketplace, device)


@task(name="register", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[10, 30, 60])
def register_task(request: registry.RegistrationRequest, parent_run_id: str | None = None) -> Registration:
    """``registry.register(request)`` into the parent run, then a nested ``register`` run with the gate's report.

    The versions are logged into the parent run (the arrival or retraining run), not the nested one: that is
    the run holding the plots and the model card, so the version page's "source run" link leads to them.
    Retried when the tracking server or the store fails mid-way (MLflow's client retries each request first): a
    retry looks the request's fingerprint up, so it never registers a second version; one cut after the version
    was created is completed (alias, adapter model), and one cut before leaves nothing registered."""
    with registry.in_run(parent_run_id):
        result = registry.register(request)
    with step_run("register", parent_run_id):
        if parent_run_id is not None:
            mlflow.log_params({"version": result.version, "alias": result.alias})
            mlflow.log_text("\n".join(result.checks) or "first version: nothing to compare", "gate.txt")
    return result


@task(name="fetch-teacher", retries=3, retry_delay_seconds=2, cache_policy=NO_CACHE)
def fetch_teacher_task(info: Any, dest: Path) -> tuple[str, dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """The teacher's model folder and its kept test and validation sets, from the registry's artifact store
    (retried: I/O)."""
    kept = f"v{info.version}-{info.run_id}"
    return (str(registry.model_folder(info, dest / "models")), registry.read_test_sets(info, dest / "test_sets" / kept),
            registry.read_valid_sets(info, dest / "valid_sets" / kept))


# ------------------------------------------------------------------ encoder adaptation (flows/adapt_encoder.py)
@task(name="extract-domain-text", cache_policy=NO_CACHE)
def extract_text_task(marketplaces: dict[str, Any], splits: list[str], descriptions: bool, pairs: bool,
                      parent_run_id: str | None = None) -> pd.DataFrame:
    """The deduplicated in-domain text of every marketplace (:func:`tasks.domain_text.domain_texts`)."""
    from tasks.domain_text import domain_texts

    def log_texts(texts: pd.DataFrame) -> None:
        counts = texts["kind"].value_counts()
        mlflow.log_metrics({"texts": len(texts), **{f"texts.{k}": int(n) for k, n in counts.items()}})
        mlflow.log_input(mlflow.data.from_pandas(texts, name="domain-text"), context="distillation")

    return _in_step("extract-domain-text", domain_texts, parent_run_id, log_texts, marketplaces, splits,
                    descriptions=descriptions, pairs=pairs)


@task(name="distil-encoder", cache_policy=NO_CACHE)
def distill_encoder_task(texts: list[DomainText], teacher: EncoderRef, out_dir: Path, cfg: EncoderDistillConfig,
                         work_dir: Path, parent_run_id: str | None = None) -> DistillResult:
    """:func:`models.encoder_distill.distill_encoder`. Not cached by Prefect: the step resumes by itself (a finished
    output folder is returned as it is, a checkpoint in ``work_dir`` is continued)."""
    from models.encoder_distill import distill_encoder

    def log_result(result: DistillResult) -> None:
        mlflow.log_params({"layers": ",".join(map(str, result.layers)), "losses": ",".join(result.losses),
                           "matched_layers": ",".join(map(str, result.matched_layers)),
                           "trained_layers": result.trained_text,
                           "resumed_at": result.resumed_at, "reused": result.reused})
        mlflow.log_metrics({"steps": result.steps, "seconds": result.seconds,
                            **({"final_loss": result.history[-1]["loss"]} if result.history else {})})

    return _in_step("distil-encoder", distill_encoder, parent_run_id, log_result, texts, teacher, out_dir, cfg,
                    work_dir=work_dir)


@task(name="evaluate-frozen-encoders", cache_key_fn=keyed_cache, persist_result=True)
def evaluate_encoder_task(key: str, student_dir: Path, teacher: EncoderRef, layers: list[int],
                          marketplaces: dict[str, Any], cfg: EncoderDistillConfig, learner: LearnerConfig,
                          work_dir: Path, student_is_copy: bool = False,
                          parent_run_id: str | None = None) -> EncoderEvaluation:
    """:func:`tasks.encoder_evaluation.evaluate_encoders`, cached by the student's checksum, the data and settings."""
    from tasks.encoder_evaluation import evaluate_encoders

    def log_evaluation(evaluation: EncoderEvaluation) -> None:
        mlflow.log_metrics(evaluation.metrics())
        mlflow.log_table(evaluation.table(), "frozen_evaluation.json")

    return _in_step("evaluate-frozen-encoders", evaluate_encoders, parent_run_id, log_evaluation, student_dir,
                    teacher, layers, marketplaces, cfg, learner, work_dir=work_dir, student_is_copy=student_is_copy)


@task(name="register-encoder", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[10, 30, 60])
def register_encoder_task(request: EncoderRegistrationRequest, parent_run_id: str | None = None) -> EncoderRegistration:
    """:func:`tasks.encoder_registry.register_encoder` into the parent run (the version's source run). Retried on
    tracking-server failures: a retry finds a version created by the try before by its checksum."""
    from tasks.encoder_registry import register_encoder

    with registry.in_run(parent_run_id):
        return register_encoder(request)


# ------------------------------------------------------------------ the serving student (flows/student.py)
@task(name="fetch-model", retries=3, retry_delay_seconds=2, cache_policy=NO_CACHE)
def fetch_model_task(info: Any, dest: Path, name: str = registry.MODEL_NAME) -> str:
    """A registered version's model folder from the artifact store (retried: I/O)."""
    return str(registry.model_folder(info, dest, name))


@task(name="choose-teachers", cache_key_fn=keyed_cache, persist_result=True)
def student_teachers_task(key: str, models: dict[str, str], encoder: EncoderRef, train: dict[str, pd.DataFrame],
                          valid: dict[str, pd.DataFrame], test: dict[str, pd.DataFrame], cfg: StudentConfig,
                          parent_run_id: str | None = None) -> StudentTeachers:
    """:func:`tasks.student_steps.teachers_step`, cached by the candidates' folders, the tables and the weights."""
    from tasks.student_steps import teachers_step

    def log_teachers(t: StudentTeachers) -> None:
        mlflow.log_params({f"teacher.{m}": name for m, name in t.teachers.items()})
        mlflow.log_metrics({f"teacher_valid_auc.{m}": v for m, v in t.teacher_aucs.items()})
        mlflow.log_dict(t.aucs, "teacher_candidates.json")

    return _in_step("choose-teachers", teachers_step, parent_run_id, log_teachers, models, encoder, train, valid,
                    test, cfg)


@task(name="distill-student", cache_key_fn=keyed_cache, persist_result=True)
def train_student_task(key: str, teachers: StudentTeachers, train: dict[str, pd.DataFrame],
                       valid: dict[str, pd.DataFrame], languages: dict[str, str], cfg: StudentConfig, work_dir: Path,
                       base: EncoderRef | None = None, text_from: str | None = None, parent_dir: str | None = None,
                       new_marketplace: str | None = None, parent_run_id: str | None = None) -> StageOutput:
    """:func:`tasks.student_steps.train_student_step`; every epoch's margins and active set go to the step's run."""
    from tasks.student_steps import train_student_step

    def log_student(output: StageOutput) -> None:
        for e in output.report["epochs"]:
            mlflow.log_metrics({"max_margin": e["max_margin"], **{f"margin.{m}": v for m, v in e["margin"].items()},
                                **{f"rank.{m}": v for m, v in e["rank"].items()},
                                **{f"active.{m}": float(m in e["trained_on"]) for m in e["margin"]}},
                               step=int(e["epoch"]))
        mlflow.log_param("stop_reason", output.report["stop_reason"][:500])

    return _in_step("distill-student", train_student_step, parent_run_id, log_student, teachers, train, valid,
                    languages, cfg, work_dir, base=base, text_from=text_from, parent_dir=parent_dir,
                    new_marketplace=new_marketplace)


@task(name="evaluate-student", cache_key_fn=keyed_cache, persist_result=True)
def evaluate_student_task(key: str, model_dir: str, valid: dict[str, pd.DataFrame], test: dict[str, pd.DataFrame],
                          device: str, parent_run_id: str | None = None) -> dict[str, dict[str, float]]:
    from tasks.student_steps import evaluate_student_step

    def log_scores(ev: dict[str, dict[str, float]]) -> None:
        mlflow.log_metrics({f"{split}_auc.{m}": v for split, scores in ev.items() for m, v in scores.items()})

    return _in_step("evaluate-student", evaluate_student_step, parent_run_id, log_scores, model_dir, valid, test,
                    device)


@task(name="register-student", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[10, 30, 60])
def register_student_task(request: StudentRegistrationRequest, parent_run_id: str | None = None) -> Registration:
    """:func:`tasks.student_registry.register_student` into the parent run (the version's source run); a retry finds
    a version created by the try before by its fingerprint."""
    from tasks.student_registry import register_student

    with registry.in_run(parent_run_id):
        return register_student(request)
