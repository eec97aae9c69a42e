"""L_AD: its value, its masking, and where its gradient goes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import logit

from models.adapter_parts import head_module
from models.config import DistillConfig, LearnerConfig
from models.fusion_attention import (
    FusionAttentionRecorder, attention_restricted, fusion_attention_by_layer, fusion_attention_profile)
from models.losses import attention_distillation_loss
from models.pairs import PadCollator, TextFormat, encode_pairs
from models.relevance import MarketplaceSpec, RelevanceModel
from models.stages import distillation_loss
from models.teacher import TeacherAttention
from tests.conftest import make_pairs


def test_kl_matches_hand_computation():
    teacher = [torch.tensor([[[0.25, 0.75]]])]  # 1 example, 1 token, 2 old adapters
    student = [torch.tensor([[[0.2, 0.5, 0.3]]])]
    mask = torch.ones(1, 1)
    expected_slice = 0.25 * math.log(0.25 / 0.2) + 0.75 * math.log(0.75 / 0.5)
    expected_renorm = 0.25 * math.log(0.25 / (0.2 / 0.7)) + 0.75 * math.log(0.75 / (0.5 / 0.7))
    assert attention_distillation_loss(teacher, student, mask, "slice", "sum").item() == pytest.approx(expected_slice, rel=1e-5)
    assert attention_distillation_loss(teacher, student, mask, "renorm", "sum").item() == pytest.approx(expected_renorm, abs=1e-6)


def test_layers_are_summed_and_tokens_averaged():
    t = torch.tensor([[[0.5, 0.5], [0.9, 0.1]]])
    s = torch.tensor([[[0.25, 0.25, 0.5], [0.9, 0.1, 0.0]]])
    mask = torch.ones(1, 2)
    one_layer = attention_distillation_loss([t], [s], mask, "slice", "sum").item()
    per_token = [0.5 * math.log(2) * 2, 0.0]
    assert one_layer == pytest.approx(sum(per_token) / 2, rel=1e-5)
    assert attention_distillation_loss([t, t], [s, s], mask, "slice", "sum").item() == pytest.approx(2 * one_layer, rel=1e-5)


def test_zero_when_student_agrees_on_old_adapters():
    teacher = torch.softmax(torch.randn(3, 5, 2), dim=-1)
    agree_slice = torch.cat([teacher, torch.zeros(3, 5, 1)], dim=-1)
    agree_renorm = torch.cat([teacher * 0.6, torch.full((3, 5, 1), 0.4)], dim=-1)
    mask = torch.ones(3, 5)
    assert attention_distillation_loss([teacher], [agree_slice], mask, "slice", "sum").item() == pytest.approx(0.0, abs=1e-6)
    assert attention_distillation_loss([teacher], [agree_renorm], mask, "renorm", "sum").item() == pytest.approx(0.0, abs=1e-6)
    # the raw slice counts the new adapter's share as divergence: -log(0.6) per token
    assert attention_distillation_loss([teacher], [agree_renorm], mask, "slice", "sum").item() == pytest.approx(-math.log(0.6), rel=1e-5)


def test_padding_is_excluded():
    teacher = torch.softmax(torch.randn(2, 4, 2), dim=-1)
    student = torch.softmax(torch.randn(2, 4, 3), dim=-1)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    base = attention_distillation_loss([teacher], [student], mask, "slice", "sum").item()
    garbage = student.clone()
    garbage[0, 3] = torch.tensor([0.98, 0.01, 0.01])
    garbage[1, 2:] = torch.tensor([0.01, 0.01, 0.98])
    assert attention_distillation_loss([teacher], [garbage], mask, "slice", "sum").item() == pytest.approx(base, rel=1e-6)
    # and the masked mean equals the mean over the five real tokens only
    kl = (teacher * (teacher.log() - student[..., :2].log())).sum(-1)
    assert base == pytest.approx(float(kl[mask.bool()].mean()), rel=1e-5)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="fusion layers"):
        attention_distillation_loss([torch.ones(1, 1, 2)], [], torch.ones(1, 1), "slice", "sum")
    with pytest.raises(ValueError, match="does not extend"):
        attention_distillation_loss([torch.full((1, 1, 3), 1 / 3)], [torch.full((1, 1, 2), 0.5)], torch.ones(1, 1), "slice", "sum")


def _three_adapter_model(tiny_encoder) -> RelevanceModel:
    model = RelevanceModel.create(tiny_encoder, text=TextFormat.raw(24), device="cpu")
    for lang in ("en", "es", "fr"):
        model.add_marketplace(MarketplaceSpec(lang, lang))
    model.fusion = model.add_fusion(["en", "es"])  # the teacher Ψ_{t-1}
    return model


def _batch(model: RelevanceModel, source: str, n: int = 6):
    enc = encode_pairs(make_pairs("es", n, 5, source=source), model.tokenizer, model.max_length)
    return PadCollator(model.tokenizer.pad_token_id, source)([enc[i] for i in range(n)])


def _distillation_setup(tiny_encoder):
    """t = 3: teacher Ψ(en, es), a trainable student Ψ(en, es, fr), routing on the student."""
    model = _three_adapter_model(tiny_encoder)
    student = model.add_fusion(model.adapter_names)
    recorder = FusionAttentionRecorder(model.net, student)
    teacher = TeacherAttention(model, "en,es", recorder.num_layers)
    model.set_trainable(model.parameters_of(fusion=student, heads=[student]))
    model.activate(student)
    model.net.train()
    return model, student, recorder, teacher


def test_gradient_reaches_student_query_and_key_and_nothing_frozen(tiny_encoder):
    model, student, recorder, teacher = _distillation_setup(tiny_encoder)
    loss_fn = distillation_loss(model, student, recorder, teacher, DistillConfig(regularization=False), False)
    loss, parts = loss_fn(_batch(model, "translated:en"))
    assert set(parts) == {"ad"} and parts["ad"] > 0
    loss.backward()
    grads = {n: p.grad for n, p in model.net.named_parameters()}
    for kind in ("query", "key"):
        layer_grads = [g for n, g in grads.items() if f"adapter_fusion_layer.{student}.{kind}.weight" in n]
        assert len(layer_grads) == recorder.num_layers
        assert all(g is not None and g.abs().sum() > 0 for g in layer_grads)
    frozen = [n for n, p in model.net.named_parameters() if not p.requires_grad]
    assert any("adapter_fusion_layer.en,es." in n for n in frozen) and any(".adapters.en." in n for n in frozen)
    assert all(grads[n] is None for n in frozen), "a frozen parameter received a gradient"


def test_batches_are_routed_by_source(tiny_encoder):
    model, student, recorder, teacher = _distillation_setup(tiny_encoder)
    with_translations = distillation_loss(model, student, recorder, teacher, DistillConfig(), distill_task=False)
    without = distillation_loss(model, student, recorder, teacher, DistillConfig(), distill_task=True)
    _, task_parts = with_translations(_batch(model, "task"))
    _, translated_parts = with_translations(_batch(model, "translated:en"))
    _, variant_parts = without(_batch(model, "task"))
    assert set(task_parts) == {"ce", "reg"}
    assert set(translated_parts) == {"ad", "reg"}
    assert set(variant_parts) == {"ce", "ad", "reg"}
    labelled = distillation_loss(model, student, recorder, teacher, DistillConfig(translated_ce=True), False)
    assert set(labelled(_batch(model, "translated:en"))[1]) == {"ce", "ad", "reg"}
    assert set(labelled(_batch(model, "task"))[1]) == {"ce", "reg"}


def test_teacher_cache_equals_recomputation(tiny_encoder):
    model = _three_adapter_model(tiny_encoder)
    student = model.add_fusion(model.adapter_names)
    recorder = FusionAttentionRecorder(model.net, student)
    translated = encode_pairs(make_pairs("es", 10, 9, source="translated:en"), model.tokenizer, model.max_length)
    fresh = TeacherAttention(model, "en,es", recorder.num_layers)
    cached = TeacherAttention(model, "en,es", recorder.num_layers)
    cached.build_cache([translated], batch_size=4)
    assert cached.cached("translated:en") and not fresh.cached("translated:en")
    model.activate(student)
    model.net.eval()
    batch = PadCollator(model.tokenizer.pad_token_id, "translated:en")([translated[i] for i in (7, 2, 5)])
    with recorder.record() as student_scores:
        model.logits(batch, student)
    recomputed = attention_distillation_loss(fresh.for_batch(batch), student_scores, batch.attention_mask, "slice", "sum")
    from_cache = attention_distillation_loss(cached.for_batch(batch), student_scores, batch.attention_mask, "slice", "sum")
    assert from_cache.item() == pytest.approx(recomputed.item(), rel=2e-3)
    assert recomputed.item() > 0
    assert model.net.active_adapters.name == student, "the teacher pass must hand routing back to the student"


def _fused_two_marketplace_model(tiny_encoder) -> RelevanceModel:
    model = RelevanceModel.create(tiny_encoder, text=TextFormat.raw(24), device="cpu")
    for lang in ("en", "es"):
        model.add_marketplace(MarketplaceSpec(lang, lang))
    model.fusion = model.add_fusion(["en", "es"])
    torch.manual_seed(3)
    with torch.no_grad():  # a teacher fusion that is not at its initialisation
        for name, p in model.net.named_parameters():
            if "adapter_fusion_layer.en,es." in name and (".query." in name or ".key." in name):
                p.add_(0.5 * torch.randn_like(p))  # sharp, non-uniform attention
            elif name.startswith("heads.en,es."):
                p.add_(0.05 * torch.randn_like(p))
    return model


def test_redistillation_keeps_adapters_and_distils_the_current_fusion(tiny_encoder):
    from models.stages import redistill_fusion

    model = _fused_two_marketplace_model(tiny_encoder)
    fresh, valid = make_pairs("es", 24, 21), make_pairs("es", 12, 22)
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    teacher_scores = model.predict_proba(valid)
    learner = LearnerConfig(fusion={"epochs": 1, "batch_size": 8, "learning_rate": 1e-2},
                            distill={"regularization": False})
    report = redistill_fusion(model, fresh, valid, learner)
    after = model.net.state_dict()
    assert model.fusion == "en,es" and report.stage == "refusion"
    assert all(torch.equal(before[k], after[k]) for k in before if ".adapters." in k), "an adapter changed"
    assert any(not torch.equal(before[k], after[k]) for k in before if "adapter_fusion_layer.en,es." in k)
    history = report.fit.history[0]
    assert history["ad"] > 0 and history["ce"] > 0  # every fresh batch: CE + λ·L_AD against the old fusion
    assert not (model.predict_proba(valid) == teacher_scores).all()


def test_redistillation_from_a_warm_start_begins_at_the_teacher(tiny_encoder):
    """Warm start + the previous head + a zero learning rate: the student is the teacher."""
    from models.stages import redistill_fusion

    model = _fused_two_marketplace_model(tiny_encoder)
    valid = make_pairs("es", 12, 22)
    teacher_scores = model.predict_proba(valid)
    teacher_state = {k: v.clone() for k, v in model.net.state_dict().items() if "en,es" in k}
    redistill_fusion(model, make_pairs("es", 16, 21), valid,
                     LearnerConfig(fusion={"epochs": 1, "batch_size": 8, "learning_rate": 0.0, "warmup_ratio": 0.0},
                                   distill={"warm_start": True, "regularization": False}))
    student_state = model.net.state_dict()
    assert len(teacher_state) > 4 and all(torch.equal(v, student_state[k]) for k, v in teacher_state.items())
    assert model.predict_proba(valid) == pytest.approx(teacher_scores, abs=1e-6)


def test_redistillation_needs_a_fusion(tiny_encoder):
    from models.stages import redistill_fusion

    model = RelevanceModel.create(tiny_encoder, text=TextFormat.raw(24), device="cpu")
    model.add_marketplace(MarketplaceSpec("en", "en"))
    with pytest.raises(ValueError, match="nothing to re-distil"):
        redistill_fusion(model, make_pairs("en", 8, 1), make_pairs("en", 8, 2), LearnerConfig())


def test_per_source_omega_makes_the_no_translation_variant_at_t2_plain_fusion(tiny_encoder):
    """At t = 2 the teacher is one adapter (Ω = 1). With ω renormalised on D_t batches, L_AD on the new
    language asks nothing of the fusion, so the §4.2 variant trains exactly what fusion without distillation
    trains; with the raw slice it would pull the new language away from its own adapter."""
    from models.stages import distill_fusion

    def trained(distill: dict) -> dict:
        model = RelevanceModel.create(tiny_encoder, text=TextFormat.raw(24), device="cpu")
        torch.manual_seed(0)
        for lang in ("en", "es"):
            model.add_marketplace(MarketplaceSpec(lang, lang))
        learner = LearnerConfig(fusion={"epochs": 1, "batch_size": 8, "learning_rate": 1e-2}, distill=distill)
        report = distill_fusion(model, make_pairs("es", 24, 5), make_pairs("es", 12, 6), [], learner)
        return {"state": {k: v.clone() for k, v in model.net.state_dict().items()}, "history": report.fit.history}

    per_source = trained({"omega": "per-source"})
    plain = trained({"weight": 0.0})
    slice_ = trained({"omega": "slice"})
    assert per_source["state"].keys() == plain["state"].keys()
    assert all(torch.equal(per_source["state"][k], plain["state"][k]) for k in plain["state"])
    assert "ad" not in per_source["history"][0] and slice_["history"][0]["ad"] > 0
    fused = [k for k in plain["state"] if "adapter_fusion_layer.en,es." in k]
    assert any(not torch.equal(slice_["state"][k], plain["state"][k]) for k in fused)


def test_layer_mean_is_the_sum_over_the_number_of_layers():
    t = torch.tensor([[[0.7], [0.2]]]).expand(1, 2, 1).clone()
    s = torch.tensor([[[0.5, 0.5], [0.9, 0.1]]])
    mask = torch.ones(1, 2)
    total = attention_distillation_loss([t, t, t], [s, s, s], mask, "slice", "sum")
    assert attention_distillation_loss([t, t, t], [s, s, s], mask, "slice", "mean").item() == pytest.approx(
        total.item() / 3, rel=1e-6)


def test_early_stopping_can_watch_every_kept_validation_set(tiny_encoder):
    from models.metrics import roc_auc
    from models.stages import distill_fusion

    model = RelevanceModel.create(tiny_encoder, text=TextFormat.raw(24), device="cpu")
    for lang in ("en", "es"):
        model.add_marketplace(MarketplaceSpec(lang, lang))
    valid, kept = make_pairs("es", 12, 6), {"en": make_pairs("en", 12, 7)}
    learner = LearnerConfig(fusion={"epochs": 1, "batch_size": 8}, early_stopping="kept")
    report = distill_fusion(model, make_pairs("es", 24, 5), valid, [], learner, kept_valid=kept)
    expected = np.mean([roc_auc(p.labels, model.predict_proba(p)) for p in (valid, kept["en"])])
    assert report.fit.best_metric == pytest.approx(expected, abs=1e-9)
    assert report.fit.best_metric != pytest.approx(roc_auc(valid.labels, model.predict_proba(valid)), abs=1e-9)


def test_new_share_sets_part_of_the_target_aside_for_the_new_adapter():
    """ρ = 0 is eq. 9 to the bit; ρ > 0 is the KL to [(1 − ρ)·Ω, ρ], zero exactly when the student gives the new
    adapter ρ and the old adapters the teacher's weighting of the rest, and the new adapter's share is pulled
    towards ρ from both sides instead of towards 0."""
    teacher = [torch.tensor([[[0.25, 0.75]]])]
    student = [torch.tensor([[[0.2, 0.5, 0.3]]])]
    mask = torch.ones(1, 1)
    eq9 = attention_distillation_loss(teacher, student, mask, "slice", "sum")
    assert attention_distillation_loss(teacher, student, mask, "slice", "sum", new_share=0.0).item() == eq9.item()
    rho = 0.2
    target = [0.25 * (1 - rho), 0.75 * (1 - rho), rho]
    by_hand = sum(p * math.log(p / q) for p, q in zip(target, [0.2, 0.5, 0.3], strict=True))
    assert attention_distillation_loss(teacher, student, mask, "slice", "sum", new_share=rho).item() == pytest.approx(
        by_hand, rel=1e-5)
    agree = [torch.tensor([[target]])]
    assert attention_distillation_loss(teacher, agree, mask, "slice", "sum", new_share=rho).item() == pytest.approx(
        0.0, abs=1e-6)

    def share_gradient(share: float) -> float:
        logits = torch.log(torch.tensor([[[0.25 * (1 - share), 0.75 * (1 - share), share]]])).requires_grad_()
        attention_distillation_loss(teacher, [logits.softmax(-1)], mask, "slice", "sum", new_share=rho).backward()
        return float(logits.grad[0, 0, 2])

    assert share_gradient(0.05) < 0 < share_gradient(0.5)  # descent raises a share below ρ and lowers one above it


def test_new_share_needs_the_raw_slice():
    teacher, student, mask = [torch.full((1, 1, 2), 0.5)], [torch.full((1, 1, 3), 1 / 3)], torch.ones(1, 1)
    with pytest.raises(ValueError, match="renorm has none"):
        attention_distillation_loss(teacher, student, mask, "renorm", "sum", new_share=0.2)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        attention_distillation_loss(teacher, student, mask, "slice", "sum", new_share=1.0)
    with pytest.raises(ValueError, match="omega='renorm' has none"):
        DistillConfig(omega="renorm", new_share=0.2)
    assert DistillConfig(omega="per-source", new_share=0.2).new_share == 0.2


def test_new_share_reaches_translated_batches_and_not_the_renormalised_task_batches(tiny_encoder):
    model, student, recorder, teacher = _distillation_setup(tiny_encoder)
    cfg = DistillConfig(regularization=False)
    aside = cfg.model_copy(update={"new_share": 0.25})
    translated, task = _batch(model, "translated:en"), _batch(model, "task")
    model.net.eval()  # no dropout: the same forward pass under both configurations

    def ad(distill: DistillConfig, batch, distill_task: bool = False) -> float:
        return distillation_loss(model, student, recorder, teacher, distill, distill_task)(batch)[1]["ad"]

    with torch.no_grad(), recorder.record() as scores:
        model.logits(translated, student)
    expected = attention_distillation_loss(teacher.for_batch(translated), scores, translated.attention_mask,
                                           "slice", cfg.layer_reduction, new_share=0.25)
    assert ad(aside, translated) == pytest.approx(expected.item(), rel=1e-5)
    assert ad(aside, translated) != pytest.approx(ad(cfg, translated), rel=1e-3)
    assert ad(aside, task, distill_task=True) == pytest.approx(ad(cfg, task, distill_task=True), rel=1e-6)


def test_output_distillation_follows_l_ad_and_compares_with_the_teachers_own_predictions(tiny_encoder):
    from models.distill_losses import soft_target_loss
    from models.teacher import TeacherPredictions

    model, student, recorder, teacher = _distillation_setup(tiny_encoder)
    predictions = TeacherPredictions(model, "en,es")
    translated = encode_pairs(make_pairs("es", 10, 9, source="translated:en"), model.tokenizer, model.max_length)
    predictions.build_cache([translated], batch_size=4)
    batch = PadCollator(model.tokenizer.pad_token_id, "translated:en")([translated[i] for i in (7, 2, 5)])
    assert model.net.active_adapters.name == student and model.net.training, "the teacher must hand routing back"
    model.net.eval()
    torch.manual_seed(1)
    with torch.no_grad():  # a student head far from the teacher's, so the divergence is not rounding noise
        for name, param in model.net.named_parameters():
            if name.startswith(f"heads.{student}."):
                param.add_(torch.randn_like(param))
    head = model.activate("en,es")
    with torch.no_grad():
        own = model.logits(batch, head).float()
        model.activate(student)
        student_logits = model.logits(batch, student).float()
    assert predictions.for_batch(batch) == pytest.approx(own, abs=1e-5)  # cached rows = the teacher run now
    cfg = DistillConfig(output_weight=0.5, output_temperature=2.0, regularization=False)
    loss_fn = distillation_loss(model, student, recorder, teacher, cfg, False, predictions)
    total, parts = loss_fn(batch)
    expected = soft_target_loss(student_logits, own, torch.ones(3), 2.0)
    p, q = torch.softmax(own.double() / 2, -1), torch.softmax(student_logits.double() / 2, -1)
    assert expected.item() == pytest.approx(4 * float((p * (p / q).log()).sum(-1).mean()), rel=1e-4)
    assert expected.item() > 1e-3 and parts["kd"] == pytest.approx(expected.item(), rel=1e-4)
    assert total.item() == pytest.approx(parts["ad"] + 0.5 * parts["kd"], rel=1e-5)
    assert "kd" not in loss_fn(_batch(model, "task"))[1]  # D_t batches: cross-entropy, as for L_AD


def test_an_arrival_with_output_distillation_records_it_and_leaves_the_teacher_out(tiny_encoder):
    from models.stages import distill_fusion

    model = RelevanceModel.create(tiny_encoder, text=TextFormat.raw(24), device="cpu")
    for lang in ("en", "es"):
        model.add_marketplace(MarketplaceSpec(lang, lang))
    learner = LearnerConfig(fusion={"epochs": 1, "batch_size": 8, "learning_rate": 1e-2},
                            distill={"output_weight": 1.0})
    report = distill_fusion(model, make_pairs("es", 16, 5), make_pairs("es", 8, 6),
                            [make_pairs("en", 16, 7, source="translated:en")], learner)
    assert report.fit.history[0]["kd"] > 0 and report.details["distill"]["output_weight"] == 1.0
    assert model.fusion == "en,es" and model.adapter_names == ["en", "es"]


def test_restricted_attention_serves_an_old_marketplace_through_its_own_adapter_alone(tiny_encoder):
    """bench_routing.py's instrument: restricted to A_1, a fusion whose value matrices are the identity and whose
    head is A_1's scores exactly as A_1 alone; outside the block the learned attention is back."""
    torch.manual_seed(5)  # the adapters' initial weights too, so the gap checked below does not depend on test order
    model = _fused_two_marketplace_model(tiny_encoder)
    with torch.no_grad():
        for name, p in model.net.named_parameters():
            if "adapter_fusion_layer.en,es." in name and ".value." in name:
                p.copy_(torch.eye(p.shape[0]))
            elif ".adapters.en." in name or ".adapters.es." in name or name.startswith("heads.en."):
                p.add_(0.5 * torch.randn_like(p))  # adapters that change the output, and differ
    head_module(model.net, model.fusion).load_state_dict(head_module(model.net, "en").state_dict())
    pairs = make_pairs("en", 8, 5)
    learned = fusion_attention_by_layer(model, {"en": pairs})["en"]
    assert learned.shape == (model.net.config.num_hidden_layers, 2)
    assert torch.allclose(learned.sum(dim=-1), torch.ones(learned.shape[0], dtype=learned.dtype))
    assert learned[:, 1].min() > 0.01  # the fusion gives es a share
    assert fusion_attention_profile(model, {"en": pairs})["en"]["es"] == pytest.approx(float(learned[:, 1].mean()))
    alone = model.predict_proba(pairs, setup="en")
    fused = model.predict_proba(pairs)
    gap = np.abs(logit(fused) - logit(alone)).max()  # in log-odds: a saturated head would hide it in probabilities
    assert gap > 0.1, gap
    with attention_restricted(model, 1):
        restricted = fusion_attention_by_layer(model, {"en": pairs})["en"]
        np.testing.assert_allclose(model.predict_proba(pairs), alone, atol=1e-5)
    assert torch.equal(restricted[:, 1], torch.zeros_like(restricted[:, 1]))
    assert torch.allclose(fusion_attention_by_layer(model, {"en": pairs})["en"], learned)
