"""Growing, saving and loading the relevance model."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from models.config import LearnerConfig
from models.methods.adapter_fusion import learn_marketplace
from models.pairs import Pairs, TextFormat
from models.relevance import MarketplaceSpec, ModelFormatError, RelevanceModel
from models.sequence import learn_sequence
from tests.conftest import make_pairs

FAST = LearnerConfig(adapter={"epochs": 1, "batch_size": 16, "learning_rate": 1e-3},
                     fusion={"epochs": 1, "batch_size": 16, "learning_rate": 1e-3}, max_length=24, device="cpu")


def _fusion_names(model: RelevanceModel) -> set[str]:
    return {n.split("adapter_fusion_layer.")[1].split(".")[0]
            for n, _ in model.net.named_parameters() if "adapter_fusion_layer." in n}


def test_three_marketplace_sequence_grows_adapters_and_fusion(tiny_encoder, marketplaces):
    seen = []

    def translated_for(data, old):
        return [make_pairs(data.spec.id, 16, 4, source=f"translated:{o.language}") for o in old]

    def on_step(t, model, scores):
        seen.append((list(model.adapter_names), model.fusion, _fusion_names(model), sorted(model.net.heads),
                     sorted(scores)))

    result = learn_sequence(tiny_encoder, marketplaces, FAST, translated_for, on_step=on_step)
    assert seen == [
        (["en"], None, set(), ["en"], ["en"]),
        (["en", "es"], "en,es", {"en,es"}, ["en", "en,es", "es"], ["en", "es"]),
        (["en", "es", "fr"], "en,es,fr", {"en,es,fr"}, ["en", "en,es,fr", "es", "fr"], ["en", "es", "fr"]),
    ]
    stages = [(r.stage, r.marketplace) for r in result.reports]
    assert stages == [("adapter", "en"), ("adapter", "es"), ("fusion", "es"), ("adapter", "fr"), ("fusion", "fr")]
    fusion_fr = result.reports[-1]
    assert fusion_fr.details["translated_sources"] == ["translated:en", "translated:es"]
    assert fusion_fr.details["teacher"] == "en,es"
    r = result.metrics.matrix
    assert np.isnan(r[0, 1]) and np.isnan(r[0, 2]) and np.isnan(r[1, 2])
    assert np.all((r[np.tril_indices(3)] >= 0) & (r[np.tril_indices(3)] <= 1))
    assert set(result.attention) == {"en", "es", "fr"}
    for shares in result.attention.values():
        assert list(shares) == ["en", "es", "fr"] and sum(shares.values()) == pytest.approx(1.0, abs=1e-4)


@pytest.fixture()
def trained_pair(tiny_encoder, marketplaces):
    model, _ = learn_marketplace(None, tiny_encoder, marketplaces[0], [], FAST)
    model, _ = learn_marketplace(model, tiny_encoder, marketplaces[1], [], FAST)
    return model, marketplaces


def test_save_load_predicts_identically_in_a_fresh_process(trained_pair, tiny_encoder, tmp_path):
    model, mks = trained_pair
    folder = model.save(tmp_path / "model")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [m["id"] for m in manifest["marketplaces"]] == ["en", "es"]
    assert manifest["fusion"] == "en,es"
    assert manifest["encoder"] == {"name": "tiny-test", "checksum": "tiny-checksum-1"}
    assert set(manifest["libraries"]) == {"torch", "transformers", "adapters"}
    assert (folder / "adapters" / "es" / "adapter_config.json").is_file()
    assert (folder / "fusion" / "adapter_fusion_config.json").is_file()
    test = mks[1].test
    expected = model.predict_proba(test)
    np.save(tmp_path / "expected.npy", expected)
    script = f"""
import numpy as np, sys
from pathlib import Path
sys.path.insert(0, {str(tmp_path.parent)!r})
from models.encoders import EncoderRef
from models.relevance import RelevanceModel
from models.pairs import Pairs, TextFormat
enc = EncoderRef(name="tiny-test", path=Path({str(tiny_encoder.path)!r}), checksum="tiny-checksum-1")
m = RelevanceModel.load(Path({str(folder)!r}), enc)
p = m.predict_proba(Pairs({list(test.queries)!r}, {list(test.titles)!r}, {list(test.labels)!r}))
np.save({str(tmp_path / 'got.npy')!r}, p)
"""
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=120)
    assert np.array_equal(np.load(tmp_path / "got.npy"), expected)


def test_load_takes_the_configured_device_spelling_auto(trained_pair, tiny_encoder, tmp_path):
    """A learner or student configuration says ``device="auto"``; loading with it lands where ``create`` would."""
    model, mks = trained_pair
    folder = model.save(tmp_path / "model")
    loaded = RelevanceModel.load(folder, tiny_encoder, device="auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert loaded.device.type == expected
    assert np.allclose(loaded.predict_proba(mks[1].test), model.predict_proba(mks[1].test), atol=1e-5)


def test_adapter_only_predictions_and_unknown_marketplace(trained_pair):
    model, mks = trained_pair
    fused = model.predict_proba(mks[0].test)
    adapter_only = model.predict_proba(mks[0].test, setup="en")
    assert fused.shape == adapter_only.shape == (32,)
    assert not np.allclose(fused, adapter_only)
    with pytest.raises(ModelFormatError, match="unknown marketplace 'xx': this model knows en, es"):
        model.predict_proba(mks[0].test, setup="xx")


def test_loading_on_another_encoder_is_refused(trained_pair, tiny_encoder, tmp_path):
    model, _ = trained_pair
    folder = model.save(tmp_path / "model")
    other = dataclasses.replace(tiny_encoder, name="other", checksum="0" * 64)
    with pytest.raises(ModelFormatError, match="was trained on encoder 'tiny-test'.*load it with the encoder"):
        RelevanceModel.load(folder, other)
    with pytest.raises(ModelFormatError, match="manifest.json is missing"):
        RelevanceModel.load(tmp_path, tiny_encoder)


def test_a_failed_save_keeps_the_previous_model(trained_pair, tmp_path, monkeypatch):
    model, _ = trained_pair
    folder = model.save(tmp_path / "model")
    before = (folder / "manifest.json").read_text()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(model.net, "save_adapter_fusion", broken)
    with pytest.raises(OSError, match="disk full"):
        model.save(folder)
    assert (folder / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"], "no temp folder may be left behind"


def test_duplicate_marketplace_and_bad_ids(tiny_encoder):
    model = RelevanceModel.create(tiny_encoder, text=TextFormat.raw(64), device="cpu")
    model.add_marketplace(MarketplaceSpec("en", "en"))
    with pytest.raises(ModelFormatError, match="already has an adapter"):
        model.add_marketplace(MarketplaceSpec("en", "en"))
    with pytest.raises(ValueError, match="without commas"):
        MarketplaceSpec("en,es", "en")


def test_trainable_parameters_are_only_the_new_adapter_and_head(tiny_encoder, marketplaces):
    model, reports = learn_marketplace(None, tiny_encoder, marketplaces[0], [], FAST)
    expected = sum(p.numel() for p in model.parameters_of(adapters_=["en"], heads=["en"]))
    assert reports[0].fit.trainable_parameters == expected
    assert reports[0].trainable_fraction < 0.2
    assert all(not p.requires_grad for p in model.net.parameters())


def test_fusion_warm_start_and_head_initialisation(tiny_encoder):
    import torch

    model = RelevanceModel.create(tiny_encoder, text=TextFormat.raw(64), device="cpu")
    for lang in ("en", "es", "fr"):
        model.add_marketplace(MarketplaceSpec(lang, lang))
    teacher = model.add_fusion(["en", "es"], head_from="en")
    torch.testing.assert_close(model.net.heads[teacher].state_dict(), model.net.heads["en"].state_dict())
    random_head = model.add_fusion(["en", "es", "fr"])
    assert not torch.equal(next(iter(model.net.heads[random_head].parameters())),
                           next(iter(model.net.heads[teacher].parameters())))
    model.remove_fusion(random_head)
    warm = model.add_fusion(["en", "es", "fr"], warm_start_from=teacher, head_from=teacher)
    params = dict(model.net.named_parameters())
    copied = [k for k in params if f"adapter_fusion_layer.{warm}." in k]
    assert copied and all(torch.equal(params[k], params[k.replace(warm, teacher)]) for k in copied)


def test_fusion_blocks_read_contiguous_inputs_and_compute_what_the_library_computes(trained_pair, tmp_path):
    from adapters.methods.modeling import BertFusion

    from models.contiguous_fusion import ContiguousFusion
    from models.fusion_attention import FusionAttentionRecorder, fusion_modules
    from models.pairs import batches

    model, mks = trained_pair
    blocks = fusion_modules(model.net, model.fusion)
    assert blocks and all(type(b) is ContiguousFusion for b in blocks)
    loaded = RelevanceModel.load(model.save(tmp_path / "model"), model.encoder)
    assert all(type(b) is ContiguousFusion for b in fusion_modules(loaded.net, loaded.fusion))

    torch.manual_seed(0)
    for p in model.net.parameters():  # every weight non-trivial, so a wrong product cannot hide behind zeros
        p.data.add_(0.2 * torch.randn_like(p))
    params = [p for b in blocks for p in b.parameters()]
    batch = next(iter(batches(model.encode(mks[1].test), 16, model.tokenizer.pad_token_id, shuffle=False)))
    recorder = FusionAttentionRecorder(model.net, model.fusion)
    head = model.activate(None)
    model.net.eval()

    def forward() -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        with recorder.record() as scores:
            logits = model.logits(batch, head)
        grads = torch.autograd.grad(logits.pow(2).sum(), params)
        return logits.detach(), [s.detach() for s in scores], list(grads)

    for p in params:
        p.requires_grad_(True)
    fast = forward()
    for b in blocks:
        b.__class__ = BertFusion  # the library's own forward
    library = forward()
    assert fast[0].abs().max() > 0.1 and len(fast[1]) == len(blocks)
    for got, expected in zip((fast[0], *fast[1], *fast[2]), (library[0], *library[1], *library[2]), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_adapter_capacity_and_distinct_initialisation_are_settings(tiny_encoder, marketplaces):
    import torch

    from models.stages import train_language_adapter

    def first_adapter(**settings):
        learner = FAST.model_copy(update={**settings, "adapter": FAST.adapter.model_copy(update={"epochs": 1})})
        model = RelevanceModel.create(tiny_encoder, text=TextFormat.raw(24), device="cpu")
        en, es = marketplaces[:2]
        train_language_adapter(model, en.spec, en.train.head(16), en.valid, learner.model_copy(
            update={"adapter": learner.adapter.model_copy(update={"learning_rate": 0.0})}))
        train_language_adapter(model, es.spec, es.train.head(16), es.valid, learner.model_copy(
            update={"adapter": learner.adapter.model_copy(update={"learning_rate": 0.0})}))
        return model

    same = first_adapter()
    a, b = (same.parameters_of(adapters_=[m]) for m in ("en", "es"))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)), "one seed: A_en and A_es start identical"
    distinct = first_adapter(seed_per_marketplace=True)
    a, b = (distinct.parameters_of(adapters_=[m]) for m in ("en", "es"))
    assert not all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    default, paper, big = first_adapter(), first_adapter(reduction_factor=16), first_adapter(reduction_factor=4)
    units = {m: m.parameters_of(adapters_=["en"])[0].shape[0] for m in (default, paper, big)}  # down projection rows
    assert (units[default], units[paper], units[big]) == (32 // 8, 32 // 16, 32 // 4)


def test_mean_pooling_and_prefixes_belong_to_the_saved_model(tiny_encoder, marketplaces, tmp_path):
    learner = FAST.model_copy(update={"pooling": "mean", "query_prefix": "query: ", "title_prefix": "passage: "})
    model, _ = learn_marketplace(None, tiny_encoder, marketplaces[0], [], learner)
    model, _ = learn_marketplace(model, tiny_encoder, marketplaces[1], [], learner)
    test = marketplaces[1].test
    prefixed = Pairs([f"query: {q}" for q in test.queries], [f"passage: {t}" for t in test.titles], test.labels)
    assert model.encode(test).input_ids == TextFormat.raw(24).encode(prefixed, model.tokenizer).input_ids
    assert model.encode(test).input_ids != TextFormat.raw(24).encode(test, model.tokenizer).input_ids

    expected = model.predict_proba(test)
    one = Pairs(test.queries[:1], test.titles[:1], test.labels[:1])
    with_long = Pairs([test.queries[0], "x " * 40], [test.titles[0], "y " * 40], [1, 0])
    assert model.predict_proba(one)[0] == pytest.approx(model.predict_proba(with_long)[0], abs=1e-5), \
        "padding must not enter the mean"

    folder = model.save(tmp_path / "model")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["text_format"] == {"max_length": 24, "pooling": "mean", "query_prefix": "query: ",
                                       "title_prefix": "passage: "}
    loaded = RelevanceModel.load(folder, tiny_encoder)
    assert loaded.text == model.text
    np.testing.assert_allclose(loaded.predict_proba(test), expected, atol=1e-6)
    loaded.text = dataclasses.replace(loaded.text, pooling="cls")
    # a barely trained tiny model scores near 0.5 either way: the read-outs differ by ~1e-4, far above float noise
    assert np.abs(loaded.predict_proba(test) - expected).max() > 1e-5, "the heads must read the mean"

    del manifest["text_format"]  # a model saved before the text format existed: raw texts read at [CLS]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert RelevanceModel.load(folder, tiny_encoder).text == TextFormat.raw(24)


@pytest.mark.parametrize("trains", ["fusion", "adapters"])
def test_a_joint_retraining_trains_only_the_parts_it_names(trained_pair, trains):
    from models.stages import retrain_jointly

    model, mks = trained_pair
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    learner = LearnerConfig.model_validate({**FAST.model_dump(), "retrain": {
        "method": "uniform", "trains": trains, "eval_every": 2, "patience": 3, "max_steps": 6}})
    report = retrain_jointly(model, {m.spec.id: m.train for m in mks[:2]}, {m.spec.id: m.valid for m in mks[:2]},
                             learner)
    after = model.net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    adapters = {k for k in changed if ".adapters." in k}
    fusion = {k for k in changed if "adapter_fusion_layer." in k or k.startswith("heads.en,es.")}
    assert changed == adapters | fusion and changed
    assert (bool(adapters), bool(fusion)) == ((False, True) if trains == "fusion" else (True, False))
    joint = report.details["joint"]
    assert report.stage == "joint-retrain" and joint["method"] == "uniform" and joint["steps"] <= 6
    assert set(joint["best"]) == {"en", "es"} and model.fusion == "en,es"
