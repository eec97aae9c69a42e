"""The distill-student flow end to end on tiny models: a student distilled from a registered champion, then a
marketplace the champion learnt later added to it (forced into A, continued from the first student)."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
import torch

from models.pairs import TextFormat
from models.relevance import MarketplaceSpec, RelevanceModel
from tasks.student_steps import StudentRequestError
from tests.conftest import make_pairs

# A gate margin of 1 always passes: the teachers are untrained, so the test is about the flow, not the scores.
STUDENT = {"layers": 1, "top_k": 1, "epsilon": 0.0, "gate_margin": 1.0, "device": "cpu",
           "train": {"epochs": 2, "batch_size": 16, "eval_batch_size": 64}}


def write_root(root, langs=("en", "es", "fr")):
    for lang in langs:
        folder = root / lang
        folder.mkdir(parents=True)
        (folder / "marketplace.json").write_text(json.dumps({"id": lang, "language": lang}))
        for seed, (split, n) in enumerate((("train", 32), ("valid", 16), ("test", 16)), start=1):
            p = make_pairs(lang, n, seed)
            titles = [f"{t} {split} {i}" for i, t in enumerate(p.titles)]  # the contract refuses repeated pairs
            pd.DataFrame({"query": p.queries, "product_title": titles, "label": p.labels}).to_parquet(
                folder / f"{split}.parquet")
    return root


def register_champion(tiny_encoder, work, ids):
    """A relevance version as an arrival leaves it (untrained weights are enough to teach), @champion."""
    from mlflow.tracking import MlflowClient

    from tasks import registry
    from tasks.pyfunc import log_relevance_pyfunc

    from models.encoders import resolve_encoder
    from tasks.settings import get_settings

    encoder = resolve_encoder(str(tiny_encoder.path), get_settings().cache_dir)  # as the flow resolves it
    torch.manual_seed(len(ids))
    model = RelevanceModel.create(encoder, text=TextFormat.raw(16), device="cpu")
    for mid in ids:
        model.add_marketplace(MarketplaceSpec(mid, mid), reduction_factor=4)
    model.fusion = model.add_fusion(ids)
    folder = model.save(work / f"champion-{len(ids)}")
    with mlflow.start_run():
        version = log_relevance_pyfunc(folder, encoder, registered_name=registry.MODEL_NAME,
                                       tags={"marketplace_order": ",".join(ids), "languages": ",".join(ids)})
    MlflowClient().set_registered_model_alias(registry.MODEL_NAME, registry.CHAMPION, version)
    return version


def test_distill_then_add_a_marketplace(mcl, tiny_encoder):
    from mlflow.tracking import MlflowClient

    from flows.candidate import start_tracking
    from flows.student import distill_student
    from tasks.settings import get_settings

    start_tracking(get_settings())
    root = write_root(mcl / "data")
    register_champion(tiny_encoder, mcl, ["en", "es"])
    first = distill_student(data=str(root), student=STUDENT, encoder=str(tiny_encoder.path))
    assert (first["version"], first["alias"], first["marketplaces"]) == ("1", "champion", ["en", "es"])
    epochs = first["epochs"]
    assert epochs[1]["trained_on"] == ["en", "es"] and 2 <= len(epochs) <= 3
    if len(epochs) == 3:  # not converged after epoch 1: epoch 2 trains on the largest margin
        assert epochs[2]["trained_on"] == epochs[1]["next_active"] and len(epochs[2]["trained_on"]) == 1
    client = MlflowClient()
    tags = client.get_model_version("relevance-student", "1").tags
    assert tags["teacher_versions"] == "relevance v1" and tags["teacher.en"].startswith("relevance v1 ")
    assert tags["stop_reason"] == first["stop_reason"] and tags["marketplace_order"] == "en,es"
    assert tags["gate"] == "passed" and json.loads(tags["data_hashes"]).keys() == {"en", "es"}

    register_champion(tiny_encoder, mcl, ["en", "es", "fr"])
    second = distill_student(data=str(root), add_marketplace="fr", student=STUDENT, encoder=str(tiny_encoder.path))
    assert (second["version"], second["alias"]) == ("2", "champion")
    info = client.get_model_version("relevance-student", "2")
    assert (info.tags["kind"], info.tags["new_marketplace"], info.tags["parent_version"]) == ("student-add", "fr", "1")
    assert info.tags["marketplace_order"] == "en,es,fr" and info.tags["teacher_versions"] == "relevance v2"
    path = mlflow.artifacts.download_artifacts(run_id=info.run_id, artifact_path="student_report.json",
                                               dst_path=str(mcl / "dl"))
    report = json.loads(open(path).read())
    assert report["epochs"][0]["next_active"][0] == "fr" and report["epochs"][1]["trained_on"][0] == "fr"
    assert report["details"]["forced"] == ["fr"]
    with pytest.raises(StudentRequestError, match="marketplace 'fr' is already in relevance-student@champion"):
        distill_student(data=str(root), add_marketplace="fr", student=STUDENT, encoder=str(tiny_encoder.path))
