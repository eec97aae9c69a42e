"""Baselines of the benchmark: every method under one protocol, and each method's defining property."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModel

from models.config import BaselinesConfig, LearnerConfig, TrainConfig
from models.methods import METHODS, run_method
from models.methods.fine_tuning import Replay, SequentialFineTuning
from models.methods.full_model import FullModel
from models.methods.hat import HardAttentionToTask
from models.methods.protocol import concat_pairs, subsample_pairs
from models.methods.regularizers import EWCPenalty, lwf_loss
from models.pairs import Pairs, TextFormat
from models.relevance import RelevanceModel
from tasks.benchmark import method_learner
from tests.conftest import make_pairs

FAST = TrainConfig(epochs=1, batch_size=16, learning_rate=1e-3)
LEARNER = LearnerConfig(adapter=FAST, fusion=FAST, max_length=24, device="cpu")
BASELINES = BaselinesConfig(full=FAST, replay_per_marketplace=16, ewc_fisher_examples=32)


def _run(name, encoder, marketplaces, translated_for=None, seed=13, one_epoch=False, **kwargs):
    """``run_method`` as the benchmark calls it: the method's preset on the learner, the run's seed (``one_epoch``:
    the stages' epochs back to one, for a test of shapes rather than of a preset's training length)."""
    learner = method_learner(LEARNER, name).model_copy(update={"seed": seed})
    if one_epoch:
        learner = learner.model_copy(update={"adapter": FAST, "fusion": FAST})
    return run_method(name, encoder, marketplaces, learner, BASELINES, translated_for, **kwargs)


def _translated_for(calls):
    def translated_for(data, old):
        calls.append((data.spec.id, [o.id for o in old]))
        return [make_pairs(data.spec.id, 16, 4, source=f"translated:{o.language}") for o in old]

    return translated_for


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_fills_a_lower_triangular_matrix(name, tiny_encoder, marketplaces):
    calls, rows = [], []
    result = _run(name, tiny_encoder, marketplaces, _translated_for(calls), seed=5, one_epoch=True,
                  on_arrival=lambda t, scores: rows.append((t, sorted(scores))))
    r = result.metrics.matrix
    assert r.shape == (3, 3)
    assert np.isfinite(r[np.tril_indices(3)]).all() and np.isnan(r[np.triu_indices(3, k=1)]).all()
    assert rows == [(0, ["en"]), (1, ["en", "es"]), (2, ["en", "es", "fr"])]
    assert result.method == name and result.seed == 5 and result.order == ["en", "es", "fr"]
    assert len(result.arrival_seconds) == 3 and all(s > 0 for s in result.arrival_seconds)
    assert 0 < result.trainable_parameters <= result.total_parameters
    assert result.breaks_no_replay == (name in {"replay", "joint-fusion"})
    assert {r.marketplace for r in result.reports} == {"en", "es", "fr"}
    # Only the method that distils on translations is given them, from the second arrival on.
    translates = METHODS[name].uses_translation and method_learner(LEARNER, name).translation.fraction > 0
    assert translates == (name in {"ad", "ad-paper"})
    assert calls == ([("es", ["en"]), ("fr", ["en", "es"])] if translates else [])


def test_unknown_method_lists_the_known_ones(tiny_encoder, marketplaces):
    with pytest.raises(ValueError, match="unknown method 'ewc2'.*seq-ft.*hat"):
        run_method("ewc2", tiny_encoder, marketplaces, LEARNER)


def _full_parameter_count(encoder) -> int:
    base = AutoModel.from_pretrained(str(encoder.path), add_pooling_layer=False)
    return sum(p.numel() for p in base.parameters()) + base.config.hidden_size * 2 + 2


def test_trainable_parameters_per_method(tiny_encoder, marketplaces):
    two = marketplaces[:2]
    probe = RelevanceModel.create(tiny_encoder, text=TextFormat.raw(24), device="cpu")
    for spec in (m.spec for m in two):
        probe.add_marketplace(spec, LEARNER.reduction_factor)
    adapter_and_head = sum(p.numel() for p in probe.parameters_of(adapters_=["es"], heads=["es"]))
    fusion = probe.add_fusion(["en", "es"])
    fusion_and_head = sum(p.numel() for p in probe.parameters_of(fusion=fusion, heads=[fusion]))
    full = _full_parameter_count(tiny_encoder)

    assert _run("adapter-only", tiny_encoder, two).trainable_parameters == adapter_and_head
    assert _run("ad", tiny_encoder, two).trainable_parameters == adapter_and_head + fusion_and_head
    seq = _run("seq-ft", tiny_encoder, two)
    assert seq.trainable_parameters == seq.total_parameters == full
    assert all(r.fit.trainable_parameters == full for r in seq.reports), "reports count the unpruned model"
    sm = _run("sm", tiny_encoder, two)
    assert sm.trainable_parameters == full and sm.total_parameters == 2 * full


@pytest.mark.parametrize("name", ["sm", "adapter-only"])
def test_separate_models_never_change_old_scores(name, tiny_encoder, marketplaces):
    r = _run(name, tiny_encoder, marketplaces).metrics.matrix
    for k in range(3):
        for t in range(k + 1, 3):
            assert r[t, k] == r[k, k]


def test_seq_ft_moves_the_earlier_marketplace(tiny_encoder, marketplaces):
    method = SequentialFineTuning(tiny_encoder, LEARNER, BASELINES)
    en, es = marketplaces[:2]
    method.learn(en, [])
    before = method.predict_proba("en", en.test)
    method.learn(es, [])
    after = method.predict_proba("en", en.test)
    assert np.abs(after - before).max() > 1e-4


def test_ewc_penalty_is_zero_at_the_anchor_and_pulls_back_with_lambda_f():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    fisher = {n: torch.rand_like(p) for n, p in net.named_parameters()}
    penalty = EWCPenalty(lam=7.0)
    penalty.consolidate(net.named_parameters(), fisher)
    assert float(penalty(net.named_parameters()).detach()) == 0.0
    anchor = {n: p.detach().clone() for n, p in net.named_parameters()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    penalty(net.named_parameters()).backward()
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.grad, 7.0 * fisher[n] * (p.detach() - anchor[n]))
    # A second marketplace adds its Fisher and re-anchors at the current parameters.
    penalty.consolidate(net.named_parameters(), fisher)
    torch.testing.assert_close(penalty.fisher["weight"], 2 * fisher["weight"])
    assert float(penalty(net.named_parameters()).detach()) == 0.0


def test_ewc_rows_follow_a_growing_vocabulary():
    penalty = EWCPenalty(lam=1.0)
    table = torch.nn.Parameter(torch.ones(2, 3))
    penalty.consolidate([("emb", table)], {"emb": torch.full((2, 3), 5.0)})
    grown = torch.zeros(4, 3)
    penalty.remap_rows("emb", torch.tensor([0, 2]), grown)
    assert penalty.fisher["emb"][:, 0].tolist() == [5.0, 0.0, 5.0, 0.0]
    assert penalty.anchor["emb"][:, 0].tolist() == [1.0, 0.0, 1.0, 0.0]


def test_lwf_loss_is_zero_when_the_model_has_not_moved(tiny_encoder, marketplaces):
    torch.manual_seed(0)
    model = FullModel(tiny_encoder, text=TextFormat.raw(24), device="cpu")
    model.cover(marketplaces[0].train)
    data = model.encode(marketplaces[0].train)
    previous = model.predict_logits(data)
    current = previous.clone().requires_grad_(True)
    loss = lwf_loss(current, previous, temperature=2.0)
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-7)
    loss.backward()
    assert float(current.grad.abs().max()) < 1e-6
    assert float(lwf_loss(previous + torch.tensor([1.0, -1.0]), previous, 2.0)) > 0.01


def test_hat_protects_earlier_marketplaces_bitwise(tiny_encoder, marketplaces):
    learner = LEARNER.model_copy(update={"seed": 3, "adapter": TrainConfig(epochs=2, batch_size=16, learning_rate=1e-2)})
    hat = HardAttentionToTask(tiny_encoder, learner, BASELINES)
    en, es = marketplaces[:2]
    hat.learn(en, [])
    before = hat.predict_proba("en", en.test)
    adapter_before = [p.detach().clone() for p in hat.adapter_parameters()]
    hat.learn(es, [])
    assert np.array_equal(hat.predict_proba("en", en.test), before)
    assert any(not torch.equal(a, p) for a, p in zip(adapter_before, hat.adapter_parameters(), strict=True)) or \
        bool(hat.gates.masks["en"].all()), "free units must still learn unless task 1 used them all"

    # The gradient of every weight of a unit used by task 1 is masked to zero.
    used = hat.gates.masks["en"]
    assert used.sum() > 0
    hat.gates.task, hat.gates.s = "es", 1.0  # a soft gate: free units get a gradient
    data = hat.tokenizer(list(es.train.queries[:8]), list(es.train.titles[:8]), padding=True, return_tensors="pt")
    hat.net.zero_grad(set_to_none=True)
    for p in hat.adapter_parameters():
        p.requires_grad_(True)
    out = hat.net(**data, head="es")
    torch.nn.functional.cross_entropy(out.logits, torch.tensor(es.train.labels[:8])).backward()
    hat.gates.mask_gradients()
    free_gradient = 0.0
    for i in range(len(hat.gates.layers)):
        down, up = hat.gates.linears(i)
        rows = used[i].bool()
        assert down.weight.grad[rows].abs().sum() == 0 and down.bias.grad[rows].abs().sum() == 0
        assert up.weight.grad[:, rows].abs().sum() == 0 and up.bias.grad.abs().sum() == 0
        free_gradient += float(down.weight.grad[~rows].abs().sum())
    assert free_gradient > 0 or bool(used.all()), "units task 1 left free still learn"


def test_replay_mixes_the_buffer_into_training(tiny_encoder, marketplaces):
    method = Replay(tiny_encoder, LEARNER, BASELINES)
    en, es, fr = marketplaces
    method.learn(en, [])
    assert len(method.buffer["en"]) == 16 and sorted(set(method.buffer["en"].labels)) == [0, 1]
    (report,) = method.learn(es, [])
    assert report.details["replayed_examples"] == 16
    assert report.fit.train_examples == (len(es.train) + 16) * report.fit.epochs_run
    (report,) = method.learn(fr, [])
    assert report.details["replayed_examples"] == 32 and report.details["replayed_from"] == ["en", "es"]


def test_subsample_is_stratified_and_concat_keeps_order():
    pairs = make_pairs("en", 40, 1)
    sub = subsample_pairs(pairs, 10, seed=0)
    assert len(sub) == 10 and sum(sub.labels) == 5
    both = concat_pairs([pairs.head(3), sub])
    assert list(both.queries[:3]) == list(pairs.queries[:3]) and len(both) == 13


E5_TEXT = TextFormat(24, "mean", "query: ", "passage: ")


@pytest.mark.parametrize("text", [TextFormat.raw(24), E5_TEXT], ids=["cls", "e5-input"])
def test_vocabulary_pruning_keeps_logits_identical(tiny_encoder, marketplaces, text):
    """With e5's recipe the prefixes' tokens must be kept too: a prefix read as the unknown token would change
    every logit."""
    en, es = marketplaces[:2]
    torch.manual_seed(0)
    pruned = FullModel(tiny_encoder, text=text, device="cpu", prune_vocabulary=True)
    torch.manual_seed(0)
    full = FullModel(tiny_encoder, text=text, device="cpu", prune_vocabulary=False)
    pruned.cover(en.train)
    pruned.cover(es.train)  # grows; the en rows keep their values
    assert pruned.vocabulary.num_embeddings < full.net.encoder.get_input_embeddings().num_embeddings
    assert pruned.full_parameters() == full.held_parameters() > pruned.held_parameters()
    for split in (en.train, es.train):
        data = pruned.encode(split)
        assert torch.equal(pruned.predict_logits(data), full.predict_logits(data))

    # Training the pruned model matches training the full one on the same data.
    cfg = TrainConfig(epochs=1, batch_size=16, learning_rate=1e-3)
    pruned.train(en.train, en.valid, cfg, seed=1, desc="pruned")
    full.train(en.train, en.valid, cfg, seed=1, desc="full")
    data = pruned.encode(en.train)
    torch.testing.assert_close(pruned.predict_logits(data), full.predict_logits(data), atol=1e-5, rtol=1e-4)

    # A token outside the kept set reads the unknown token's row.
    unseen = Pairs(["zebra xylophone"], ["quokka"], [1])
    ids = pruned.encode(unseen).input_ids[0]
    kept = set(pruned.vocabulary.kept_ids.tolist())
    unk = pruned.tokenizer.unk_token_id
    as_unk = [i if i in kept else unk for i in ids]
    assert as_unk != ids, "the probe text must contain tokens outside the kept set"
    lookup = pruned.vocabulary.lookup
    assert torch.equal(lookup[torch.tensor(ids)], lookup[torch.tensor(as_unk)])


def test_ad_under_run_method_is_learn_sequence(tiny_encoder, marketplaces):
    from models.sequence import learn_sequence

    two = marketplaces[:2]
    sequence = learn_sequence(tiny_encoder, two, LEARNER, _translated_for([]))
    method = _run("ad", tiny_encoder, two, _translated_for([]), seed=LEARNER.seed)
    np.testing.assert_array_equal(method.metrics.matrix, sequence.metrics.matrix)


def test_adapter_methods_share_identical_adapters_and_still_pay_for_them(tiny_encoder, marketplaces):
    """adapter-only and ad (same seed, same data) train the same A_k: the second run copies it from the
    bank, gets the same adapter scores, and its arrival time still includes the original training time."""
    from models.methods.adapter_bank import SHARED

    two = marketplaces[:2]
    first = _run("adapter-only", tiny_encoder, two, seed=31)
    banked = len(SHARED)
    second = _run("adapter-only", tiny_encoder, two, seed=31)
    assert len(SHARED) == banked  # nothing new was trained
    np.testing.assert_array_equal(second.metrics.matrix, first.metrics.matrix)
    reused = [r.details["reused_seconds"] for r in second.reports]
    assert len(reused) == 2 and all(s > 0 for s in reused)
    assert all(a >= s for a, s in zip(second.arrival_seconds, reused, strict=True))
    other_seed = _run("adapter-only", tiny_encoder, two, seed=32)
    assert len(SHARED) == banked + 2 and "reused_seconds" not in other_seed.reports[0].details


def test_a_bank_kept_in_a_folder_gives_another_process_the_same_adapter_without_training_it(
        tiny_encoder, marketplaces, tmp_path, monkeypatch):
    """What a benchmark worker process sees: a bank of its own on the folder another one filled. It loads the
    adapter (same weights, the original report with ``reused_seconds``) and trains nothing; a torn file never
    appears, only whole ones."""
    from models.methods import adapter_bank

    data, cfg = marketplaces[0], LEARNER.model_copy(update={"seed": 41})

    def new_model() -> RelevanceModel:
        return RelevanceModel.create(tiny_encoder, text=TextFormat.of(cfg), device="cpu")

    first_model = new_model()
    trained = adapter_bank.AdapterBank(tmp_path / "bank").train(first_model, data.spec, data.train, data.valid, cfg)
    assert sorted(p.suffix for p in (tmp_path / "bank").iterdir()) == [".lock", ".pt"]

    def no_training(*args, **kwargs):
        raise AssertionError("the adapter was trained again")

    monkeypatch.setattr(adapter_bank, "train_language_adapter", no_training)
    other_model = new_model()
    loaded = adapter_bank.AdapterBank(tmp_path / "bank").train(other_model, data.spec, data.train, data.valid, cfg)
    assert loaded.fit == trained.fit and loaded.details["reused_seconds"] == trained.fit.train_seconds > 0
    for mine, theirs in zip(other_model.marketplace_state("en"), first_model.marketplace_state("en"), strict=True):
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    with pytest.raises(AssertionError, match="trained again"):  # another seed is another adapter
        adapter_bank.AdapterBank(tmp_path / "bank").train(new_model(), data.spec, data.train, data.valid,
                                                          cfg.model_copy(update={"seed": 42}))


def test_probe_fits_a_separable_problem_and_scores_each_marketplace_with_its_own_head(tiny_encoder, marketplaces):
    from models.methods.probe import fit_logistic, pair_features

    gen = torch.Generator().manual_seed(0)
    q, p = torch.randn(64, 4, generator=gen), torch.randn(64, 4, generator=gen)
    y = (q[:, 0] * p[:, 0] > 0).long()  # only the product feature q·p separates it
    head = fit_logistic(pair_features(q, p), y)
    scores = torch.sigmoid(head(pair_features(q, p)).squeeze(-1)).detach().numpy()
    from models.metrics import roc_auc

    assert roc_auc(y.tolist(), scores) > 0.99
    result = _run("probe", tiny_encoder, marketplaces[:2])
    assert result.trainable_parameters == 4 * 32 + 1 and [r.stage for r in result.reports] == ["probe", "probe"]
    r = result.metrics.matrix
    assert r[1, 0] == r[0, 0], "a new marketplace's probe leaves the old one's alone"


def test_full_fine_tuning_reads_the_learners_text_format(tiny_encoder, marketplaces):
    """sm and the other full fine-tuning baselines get the learner's prefixes and pooling, so the comparison with
    the adapters is on one input recipe."""
    learner = LEARNER.model_copy(update={"pooling": "mean", "query_prefix": "query: ", "title_prefix": "passage: "})
    model = METHODS["sm"](tiny_encoder, learner, BASELINES)._new_model()
    assert model.text == TextFormat.of(learner) and model.net.pooling == "mean"
    test = marketplaces[0].test
    prefixed, raw = model.encode(test).input_ids[0], TextFormat.raw(24).encode(test, model.tokenizer).input_ids[0]
    assert len(prefixed) > len(raw) and "passage" in model.tokenizer.decode(prefixed)
    torch.manual_seed(0)
    cls = FullModel(tiny_encoder, text=TextFormat.raw(24), device="cpu", prune_vocabulary=False)
    torch.manual_seed(0)
    mean = FullModel(tiny_encoder, text=TextFormat(24, "mean", "", ""), device="cpu", prune_vocabulary=False)
    data = cls.encode(marketplaces[0].test)
    assert not torch.allclose(cls.predict_logits(data), mean.predict_logits(data))
