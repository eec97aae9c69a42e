"""Encoder distillation on tiny encoders: the student's copied layers, every loss by hand, the masking, a loss that
falls, a resumed run that ends where an uninterrupted one does, and the student under adapters."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

from models import distill_losses as L
from models import encoder_distill as D
from models.config import EncoderDistillConfig, LearnerConfig
from models.encoder_ref import EncoderRef
from models.tiny import build_tiny_encoder
from tests.conftest import WORDS, make_pairs

TEXTS = [f"{c} {t}" for colours, types in WORDS.values() for c in colours for t in types]
TEXTS += [f"{t} {c} deluxe edition" for colours, types in WORDS.values() for c in colours for t in types]
QUICK = {"batch_size": 8, "gradient_accumulation_steps": 2, "max_length": 16, "device": "cpu", "warmup_ratio": 0.0}


def teacher_ref(path: Path, name: str) -> EncoderRef:
    return EncoderRef(name=name, path=Path(path), checksum=f"{name}-checksum")


@pytest.fixture(scope="module")
def mlm_teacher(tmp_path_factory) -> EncoderRef:
    path = build_tiny_encoder(tmp_path_factory.mktemp("mlm-teacher"), TEXTS, hidden_size=32, num_layers=4,
                              mlm_head=True, seed=1)
    return teacher_ref(path, "tiny-mlm")


@pytest.fixture(scope="module")
def base_teacher(tmp_path_factory) -> EncoderRef:
    path = build_tiny_encoder(tmp_path_factory.mktemp("base-teacher"), TEXTS, hidden_size=32, num_layers=4, seed=2)
    return teacher_ref(path, "tiny-base")


# --------------------------------------------------------------------------------------------- the student
def test_half_depth_students_copy_the_bottom_and_the_last_layer_by_default_or_distilberts_spread():
    assert EncoderDistillConfig().layer_choice == "bottom-and-last"
    assert D.resolve_layers(12, None, "bottom-and-last") == [0, 1, 2, 3, 4, 11]
    assert D.resolve_layers(12, None, "evenly") == [0, 2, 4, 7, 9, 11]  # DistilBERT's and the paper's
    assert D.matched_layers(12, 6) == [1, 3, 5, 7, 9, 11]  # student layer k <-> teacher layer 2k + 1
    assert D.resolve_layers(4, None, "evenly") == D.resolve_layers(4, None, "bottom-and-last") == [0, 3]
    assert D.matched_layers(4, 2) == [1, 3]
    assert D.resolve_layers(24, None, "evenly") == [0, 2, 4, 6, 8, 10, 13, 15, 17, 19, 21, 23]
    assert D.resolve_layers(1, None, "evenly") == [0]
    assert D.resolve_layers(12, [3, 5], "evenly") == [3, 5], "configured layers win over the choice"
    with pytest.raises(ValueError, match=r"layers \[12\] do not exist in a teacher with 12 layers"):
        D.resolve_layers(12, [0, 12], "evenly")


def test_copied_layers_keep_the_bottom_ones_or_spread_them():
    assert D.copied_layers(12, 8, "bottom") == [0, 1, 2, 3, 4, 5, 6, 7]
    assert D.copied_layers(12, 4, "evenly") == [0, 4, 7, 11]
    assert D.copied_layers(12, 12, "bottom") == D.copied_layers(12, 12, "evenly") == list(range(12))
    assert D.copied_layers(12, 6, "bottom-and-last") == [0, 1, 2, 3, 4, 11]
    assert D.copied_layers(12, 12, "bottom-and-last") == list(range(12))
    with pytest.raises(ValueError, match="cannot take 13 layers from a teacher with 12"):
        D.copied_layers(12, 13, "bottom")
    with pytest.raises(ValueError, match="unknown layer choice 'top'"):
        D.copied_layers(12, 4, "top")


def test_twelve_layer_student_copies_layers_0_2_4_7_9_11_bit_for_bit(tmp_path):
    teacher_dir = build_tiny_encoder(tmp_path / "t12", TEXTS, hidden_size=16, num_layers=12, num_heads=2, seed=3)
    student_dir = D.build_student(teacher_dir, tmp_path / "student", D.resolve_layers(12, None, "evenly"))
    teacher, student = AutoModel.from_pretrained(teacher_dir), AutoModel.from_pretrained(student_dir)
    assert student.config.num_hidden_layers == 6 and type(student).__name__ == "BertModel"
    for k, src in enumerate([0, 2, 4, 7, 9, 11]):
        mine, theirs = student.encoder.layer[k].state_dict(), teacher.encoder.layer[src].state_dict()
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[key], theirs[key]) for key in mine), f"student layer {k} != teacher layer {src}"
    for key, value in teacher.embeddings.state_dict().items():
        assert torch.equal(student.embeddings.state_dict()[key], value)
    assert torch.equal(student.pooler.dense.weight, teacher.pooler.dense.weight)
    assert json.loads((student_dir / "tokenizer.json").read_text()) == json.loads(
        (teacher_dir / "tokenizer.json").read_text())


def test_student_of_an_mlm_teacher_is_a_plain_encoder_without_head_or_pooler(mlm_teacher, tmp_path):
    from safetensors import safe_open

    student_dir = D.build_student(mlm_teacher.path, tmp_path / "student", [1, 3])
    with safe_open(str(student_dir / "model.safetensors"), framework="pt") as fh:
        keys = set(fh.keys())
    assert not any(k.startswith(("cls.", "pooler.", "bert.")) for k in keys)
    assert {k.split(".")[2] for k in keys if k.startswith("encoder.layer.")} == {"0", "1"}
    assert json.loads((student_dir / "config.json").read_text())["architectures"] == ["BertModel"]
    teacher = AutoModelForMaskedLM.from_pretrained(mlm_teacher.path).bert
    student = AutoModel.from_pretrained(student_dir)
    assert torch.equal(student.encoder.layer[1].output.dense.weight, teacher.encoder.layer[3].output.dense.weight)
    assert D.teacher_has_mlm_head(mlm_teacher.path) and not D.teacher_has_mlm_head(student_dir)
    assert D.teacher_has_mlm_head(student_dir, "mlm") and not D.teacher_has_mlm_head(mlm_teacher.path, "none")


def test_the_students_mlm_head_is_the_teachers_tied_to_the_students_embeddings(mlm_teacher, tmp_path):
    teacher = AutoModelForMaskedLM.from_pretrained(mlm_teacher.path)
    student = AutoModel.from_pretrained(D.build_student(mlm_teacher.path, tmp_path / "s", [0, 3]))
    head = D.student_mlm_head(teacher, student)
    assert head.predictions.decoder.weight is student.get_input_embeddings().weight
    assert torch.equal(head.predictions.transform.dense.weight, teacher.cls.predictions.transform.dense.weight)
    assert head.predictions.transform.dense.weight is not teacher.cls.predictions.transform.dense.weight


# --------------------------------------------------------------------------------------------- the losses
def test_soft_target_loss_by_hand():
    zs = torch.tensor([[[1.0, 0.0, -1.0], [0.5, 0.5, 0.0], [9.0, 9.0, 9.0]]])
    zt = torch.tensor([[[0.0, 2.0, 0.0], [1.0, -1.0, 0.5], [-9.0, 0.0, 9.0]]])
    mask = torch.tensor([[1, 1, 0]])  # the third token is padding: it must not count
    T = 2.0
    expected = 0.0
    for i in range(2):
        ps = [math.exp(v / T) for v in zs[0, i].tolist()]
        pt = [math.exp(v / T) for v in zt[0, i].tolist()]
        ps, pt = [p / sum(ps) for p in ps], [p / sum(pt) for p in pt]
        expected += sum(b * (math.log(b) - math.log(a)) for a, b in zip(ps, pt, strict=True))
    expected = T * T * expected / 2
    assert L.soft_target_loss(zs, zt, mask, T).item() == pytest.approx(expected, rel=1e-6)


def test_mlm_loss_by_hand_counts_only_masked_tokens():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]]])
    labels = torch.tensor([[-100, 1, 2]])
    by_hand = [-(1.0 - math.log(math.exp(0) + math.exp(1) + math.exp(0))),
               -(3.0 - math.log(math.exp(0) + math.exp(0) + math.exp(3)))]
    assert L.mlm_loss(logits, labels).item() == pytest.approx(sum(by_hand) / 2, rel=1e-6)
    none = L.mlm_loss(logits.requires_grad_(), torch.full((1, 3), -100))
    assert none.item() == 0.0 and none.requires_grad  # no NaN when nothing was masked


def test_cosine_mse_and_attention_losses_by_hand():
    hs = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [5.0, 5.0]]])
    ht = torch.tensor([[[0.0, 1.0], [2.0, 2.0], [-5.0, 1.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert L.cosine_loss(hs, ht, mask).item() == pytest.approx(((1 - 0.0) + (1 - 1.0)) / 2)
    assert L.hidden_mse(hs, ht, mask).item() == pytest.approx((1 + 1 + 1 + 1) / 4)

    # one head, three query tokens (the last padding), three keys (the last padding: zero probability)
    a_t = torch.tensor([[[[0.5, 0.5, 0.0], [0.9, 0.1, 0.0], [0.3, 0.7, 0.0]]]])
    a_s = torch.tensor([[[[0.25, 0.75, 0.0], [0.5, 0.5, 0.0], [0.99, 0.01, 0.0]]]])
    kl0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    kl1 = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert L.attention_kl(a_s, a_t, mask).item() == pytest.approx((kl0 + kl1) / 2, rel=1e-5)


def test_sentence_vector_losses_by_hand_pool_over_real_tokens_only():
    mask = torch.tensor([[1, 1], [1, 0]])
    hs = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [9.0, 9.0]]])  # pooled: [1, 0], [0, 1]
    ht = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 1.0], [5.0, -5.0]]])  # pooled: [1, 0], [1, 1]
    assert L.pooled_mse(hs, ht, mask).item() == pytest.approx((0 + 0 + 1 + 0) / 4)
    # cosine matrices [[1, 0], [0, 1]] against [[1, √½], [√½, 1]]: the off-diagonal pair differs by √½
    assert L.similarity_mse(hs, ht, mask).item() == pytest.approx((0.5 + 0.5) / 4, rel=1e-6)
    # counting the padded token would have moved both pooled vectors (and the teacher's direction)
    assert L.similarity_mse(hs, ht, torch.ones_like(mask)).item() != pytest.approx(0.25, rel=1e-3)


def test_layer_and_attention_terms_match_student_layer_k_with_teacher_layer_2k_plus_1(base_teacher, tmp_path):
    cfg = EncoderDistillConfig(**QUICK)
    objective = D._Objective(False, cfg, D.matched_layers(4, 2))
    student_dir = D.build_student(base_teacher.path, tmp_path / "s", [0, 3])
    teacher, student, head = D._load(base_teacher.path, student_dir, objective, torch.device("cpu"))
    student.eval()  # no dropout: the by-hand forward passes below must see the same network
    tok = AutoTokenizer.from_pretrained(student_dir)
    batch = dict(tok(["red shoe", "zapato azul deluxe edition"], padding=True, return_tensors="pt"))
    parts = D.distillation_losses(objective, teacher, student, head, dict(batch))
    assert set(parts) == {"cos", "mse", "hidden", "attention", "similarity"} and head is None
    with torch.no_grad():
        t = teacher(**batch, output_hidden_states=True, output_attentions=True)
        s = student(**batch, output_hidden_states=True, output_attentions=True)
    mask = batch["attention_mask"]
    hidden = (L.hidden_mse(s.hidden_states[1], t.hidden_states[2], mask)
              + L.hidden_mse(s.hidden_states[2], t.hidden_states[4], mask)) / 2
    attention = (L.attention_kl(s.attentions[0], t.attentions[1], mask)
                 + L.attention_kl(s.attentions[1], t.attentions[3], mask)) / 2
    assert parts["hidden"].item() == pytest.approx(hidden.item(), rel=1e-5)
    assert parts["attention"].item() == pytest.approx(attention.item(), rel=1e-5)
    assert parts["mse"].item() == pytest.approx(L.hidden_mse(s.last_hidden_state, t.last_hidden_state, mask).item())
    assert parts["similarity"].item() == pytest.approx(
        L.similarity_mse(s.last_hidden_state, t.last_hidden_state, mask).item(), rel=1e-5)
    # the student starts with the teacher's last layer as its own: its last hidden states are not the teacher's
    # (layers 1 and 2 are gone), so there is something to learn
    assert parts["cos"].item() > 0


def test_copied_layer_match_asks_a_copied_block_only_to_keep_what_it_computes(base_teacher, tmp_path):
    assert D.layer_targets(12, [0, 1, 2, 3, 4, 11], "copied") == [0, 1, 2, 3, 4, 11]
    assert D.layer_targets(12, [0, 1, 2, 3, 4, 11], "uniform") == [1, 3, 5, 7, 9, 11]
    with pytest.raises(ValueError, match="unknown layer match 'nearest': uniform or copied"):
        D.layer_targets(12, [0, 11], "nearest")
    batch_texts = ["red shoe", "zapato azul deluxe edition", "blue lamp"]
    parts = {}
    for match in ("copied", "uniform"):
        objective = D._Objective(False, EncoderDistillConfig(**QUICK, layer_match=match),
                                 D.layer_targets(4, [0, 1], match))
        student_dir = D.build_student(base_teacher.path, tmp_path / match, [0, 1])
        teacher, student, head = D._load(base_teacher.path, student_dir, objective, torch.device("cpu"))
        student.eval()
        tok = AutoTokenizer.from_pretrained(student_dir)
        batch = dict(tok(batch_texts, padding=True, return_tensors="pt"))
        parts[match] = D.distillation_losses(objective, teacher, student, head, batch)
    # the bottom two layers, copied and matched to themselves, compute exactly the teacher's layers 0 and 1 ...
    assert parts["copied"]["hidden"].item() < 1e-10 and parts["copied"]["attention"].item() < 1e-6
    # ... where the uniform mapping asks them to be the teacher's layers 1 and 3; the output losses are the same
    assert parts["uniform"]["hidden"].item() > 1e-5 and parts["uniform"]["attention"].item() > 1e-5
    assert parts["copied"]["cos"].item() == pytest.approx(parts["uniform"]["cos"].item(), rel=1e-6)
    assert parts["copied"]["cos"].item() > 0, "layers 2 and 3 are gone: the output is not the teacher's"


def test_sentence_vector_losses_are_weighted_settings_of_a_teacher_without_mlm_head(base_teacher, tmp_path):
    assert set(D._Objective(True, EncoderDistillConfig(alpha_pooled=3.0), [1, 3]).losses) == {"ce", "mlm", "cos"}, \
        "an MLM teacher keeps DistilBERT's three losses"
    assert "pooled" not in D._Objective(False, EncoderDistillConfig(), [1, 3]).losses, "off by default"
    objective = D._Objective(False, EncoderDistillConfig(**QUICK, alpha_pooled=3.0, alpha_similarity=0.0),
                             D.matched_layers(4, 2))
    assert objective.weights["pooled"] == 3.0 and "similarity" not in objective.losses
    student_dir = D.build_student(base_teacher.path, tmp_path / "s", [0, 3])
    teacher, student, head = D._load(base_teacher.path, student_dir, objective, torch.device("cpu"))
    student.eval()
    tok = AutoTokenizer.from_pretrained(student_dir)
    batch = dict(tok(["red shoe", "zapato azul deluxe edition", "blue lamp"], padding=True, return_tensors="pt"))
    parts = D.distillation_losses(objective, teacher, student, head, dict(batch))
    assert "similarity" not in parts
    with torch.no_grad():
        t_last, s_last = teacher(**batch).last_hidden_state, student(**batch).last_hidden_state
    expected = L.pooled_mse(s_last, t_last, batch["attention_mask"]).item()
    assert parts["pooled"].item() == pytest.approx(expected, rel=1e-5) and expected > 0


def test_mlm_teacher_gets_distilberts_three_losses(mlm_teacher, tmp_path):
    cfg = EncoderDistillConfig(**QUICK)
    objective = D._Objective(True, cfg, D.matched_layers(4, 2))
    student_dir = D.build_student(mlm_teacher.path, tmp_path / "s", [0, 3])
    teacher, student, head = D._load(mlm_teacher.path, student_dir, objective, torch.device("cpu"))
    student.eval()
    head.eval()
    tok = AutoTokenizer.from_pretrained(mlm_teacher.path)
    collate = D._collator(tok, objective)
    torch.manual_seed(0)
    batch = collate([dict(f) for f in D._tokenise(tok, TEXTS[:8], 16, True)])
    labels = batch["labels"].clone()
    parts = D.distillation_losses(objective, teacher, student, head, dict(batch))
    assert set(parts) == {"ce", "mlm", "cos"}
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        t = teacher(**inputs, output_hidden_states=True)
        logits = head(student(**inputs).last_hidden_state)
    mask = inputs["attention_mask"]
    assert parts["ce"].item() == pytest.approx(L.soft_target_loss(logits, t.logits, mask, 2.0).item(), rel=1e-5)
    assert parts["mlm"].item() == pytest.approx(F.cross_entropy(logits[labels != -100], labels[labels != -100]).item(),
                                                rel=1e-5)


def test_masking_never_touches_padding_or_special_tokens_and_follows_80_10_10(mlm_teacher):
    tok = AutoTokenizer.from_pretrained(mlm_teacher.path)
    collate = D._collator(tok, D._Objective(True, EncoderDistillConfig(), [1, 3]))
    texts = ["red", "blue shoe deluxe edition with a very long title"] * 4 + TEXTS[:24]
    features = [dict(f) for f in D._tokenise(tok, texts, 32, True)]
    special = set(tok.all_special_ids)
    chosen = real = as_mask = unchanged = 0
    torch.manual_seed(0)
    for _ in range(300):
        batch = collate([dict(f) for f in features])
        original = tok.pad([{"input_ids": f["input_ids"]} for f in features], return_tensors="pt")["input_ids"]
        picked = batch["labels"] != -100
        protected = torch.isin(original, torch.tensor(sorted(special))) | (batch["attention_mask"] == 0)
        assert not (picked & protected).any(), "a padding or special token was chosen for masking"
        assert torch.equal(batch["input_ids"][protected], original[protected])
        assert torch.equal(batch["labels"][picked], original[picked])
        chosen += int(picked.sum())
        real += int((~protected).sum())
        as_mask += int((batch["input_ids"][picked] == tok.mask_token_id).sum())
        unchanged += int((batch["input_ids"][picked] == original[picked]).sum())
    assert chosen / real == pytest.approx(0.15, abs=0.01)
    assert as_mask / chosen == pytest.approx(0.8, abs=0.02)
    # 10 % kept as they are, plus the share of the 10 % random replacements that drew the same token
    assert unchanged / chosen == pytest.approx(0.1 + 0.1 / len(tok), abs=0.02)


# --------------------------------------------------------------------------------------------- the run
def training_objective(teacher: EncoderRef, student_dir: Path, mlm: bool) -> float:
    """The weighted distillation loss of ``student_dir`` on fixed batches, as training sees it (train mode: dropout,
    masking), averaged over five fixed seeds so the comparison is of the objective, not of one draw."""
    cfg = EncoderDistillConfig(**QUICK)
    objective = D._Objective(mlm, cfg, D.matched_layers(4, 2))
    t, s, head = D._load(teacher.path, student_dir, objective, torch.device("cpu"))
    tok = AutoTokenizer.from_pretrained(student_dir)
    features = [dict(f) for f in D._tokenise(tok, TEXTS[:32], 16, mlm)]
    total = 0.0
    for seed in range(5):
        torch.manual_seed(seed)
        batch = D._collator(tok, objective)([dict(f) for f in features])
        with torch.no_grad():
            parts = D.distillation_losses(objective, t, s, head, dict(batch))
        total += float(sum(objective.weights[k] * v for k, v in parts.items())) / 5
    return total


@pytest.mark.parametrize("kind", ["mlm", "base"])
def test_distillation_lowers_the_loss_and_saves_a_plain_encoder(kind, mlm_teacher, base_teacher, tmp_path):
    teacher = mlm_teacher if kind == "mlm" else base_teacher
    paper = {"train_layers": "all", "layer_match": "uniform"} if kind == "mlm" else {}  # the `paper` preset
    cfg = EncoderDistillConfig(**QUICK, epochs=4, learning_rate=2e-3, **paper)
    result = D.distill_encoder(TEXTS, teacher, tmp_path / "out", cfg, work_dir=tmp_path / "work")
    losses = [r["loss"] for r in result.history]
    assert result.steps == len(losses) == 4 * math.ceil(math.ceil(len(TEXTS) / 8) / 2)
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    without_head = ["cos", "mse", "hidden", "attention", "similarity"]
    assert result.losses == (["ce", "mlm", "cos"] if kind == "mlm" else without_head)
    expected = ([1, 3], [0, 1]) if kind == "mlm" else ([0, 3], [1])
    assert (result.layers, (result.matched_layers, result.trained_layers), result.texts) == ([0, 3], expected,
                                                                                            len(TEXTS))
    initial = D.build_student(teacher.path, tmp_path / "undistilled", [0, 3])
    assert training_objective(teacher, tmp_path / "out", kind == "mlm") < training_objective(teacher, initial,
                                                                                              kind == "mlm")
    assert not (tmp_path / "work" / D.CHECKPOINT).exists(), "the finished folder supersedes the checkpoint"
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["architectures"] == ["BertModel"] and saved["num_hidden_layers"] == 2
    assert D.read_result(tmp_path / "out").fingerprint == result.fingerprint
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [], "no temp folder left behind"


@pytest.mark.parametrize("train_layers", [1, "all"])
def test_distillation_trains_only_the_top_layers_it_is_told_to(train_layers, base_teacher, tmp_path):
    cfg = EncoderDistillConfig(**QUICK, max_steps=3, learning_rate=2e-3, train_layers=train_layers)
    result = D.distill_encoder(TEXTS, base_teacher, tmp_path / "out", cfg, work_dir=tmp_path / "work")
    assert result.trained_layers == ([1] if train_layers == 1 else [0, 1])
    teacher = AutoModel.from_pretrained(base_teacher.path, add_pooling_layer=False).state_dict()
    student = AutoModel.from_pretrained(tmp_path / "out", add_pooling_layer=False).state_dict()
    source = {"encoder.layer.0.": "encoder.layer.0.", "encoder.layer.1.": "encoder.layer.3."}

    def same(prefix: str) -> bool:
        keys = [k for k in student if k.startswith(prefix)]
        return bool(keys) and all(torch.equal(student[k], teacher[k.replace(prefix, source.get(prefix, prefix))])
                                  for k in keys)
    assert not same("encoder.layer.1."), "the top layer was distilled"
    assert same("encoder.layer.0.") == same("embeddings.") == (train_layers == 1), \
        "below the trained layers the student is the teacher's copy, bit for bit"


def test_layer_settings_that_do_not_fit_the_teacher_fail_before_anything_is_written(base_teacher, tmp_path):
    plan = D.plan_student(base_teacher.path, EncoderDistillConfig())
    assert (plan.teacher_layers, plan.layers, plan.trained, plan.matched) == (4, [0, 3], [1], [0, 3])
    for bad, message in (({"train_layers": 3}, "train_layers 3 does not fit a student of 2 layers"),
                         ({"layers": [0, 4]}, r"layers \[4\] do not exist in a teacher with 4 layers")):
        with pytest.raises(D.StudentPlanError, match=message):
            D.distill_encoder(TEXTS, base_teacher, tmp_path / "out", EncoderDistillConfig(**QUICK, **bad),
                              work_dir=tmp_path / "work")
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()
    with pytest.raises(ValueError, match="train_layers must be at least 1, or all"):
        EncoderDistillConfig(train_layers=0)


def test_a_resumed_run_ends_exactly_where_an_uninterrupted_one_does(mlm_teacher, tmp_path):
    cfg = EncoderDistillConfig(**QUICK, max_steps=6, checkpoint_steps=2)
    whole = D.distill_encoder(TEXTS, mlm_teacher, tmp_path / "whole", cfg, work_dir=tmp_path / "w1")

    class Crash(RuntimeError):
        pass

    def crash_at_step_4(step: int, record: dict) -> None:
        if step == 4:
            raise Crash("node lost")

    with pytest.raises(Crash):
        D.distill_encoder(TEXTS, mlm_teacher, tmp_path / "resumed", cfg, work_dir=tmp_path / "w2",
                          progress=crash_at_step_4)
    assert (tmp_path / "w2" / D.CHECKPOINT).is_file() and not (tmp_path / "resumed").exists()
    steps_seen = []
    resumed = D.distill_encoder(TEXTS, mlm_teacher, tmp_path / "resumed", cfg, work_dir=tmp_path / "w2",
                                progress=lambda step, record: steps_seen.append(step))
    assert resumed.resumed_at == 4 and steps_seen == [5, 6]
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in whole.history]
    a = AutoModel.from_pretrained(tmp_path / "whole", add_pooling_layer=False)
    b = AutoModel.from_pretrained(tmp_path / "resumed", add_pooling_layer=False)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), f"{name} differs after resuming"


def test_an_output_folder_is_reused_only_for_the_same_distillation(base_teacher, tmp_path):
    cfg = EncoderDistillConfig(**QUICK, max_steps=2)
    first = D.distill_encoder(TEXTS, base_teacher, tmp_path / "out", cfg, work_dir=tmp_path / "w")
    again = D.distill_encoder(TEXTS, base_teacher, tmp_path / "out", cfg, work_dir=tmp_path / "w",
                              progress=lambda *_: pytest.fail("a finished distillation was trained again"))
    assert again.reused and again.fingerprint == first.fingerprint and again.steps == 2
    other_evaluation = cfg.model_copy(update={"eval_seeds": 9, "latency_pairs": 3, "checkpoint_steps": 7})
    assert D.distill_encoder(TEXTS, base_teacher, tmp_path / "out", other_evaluation, work_dir=tmp_path / "w").reused
    with pytest.raises(D.DistillOutputError, match="holds another distilled encoder"):
        D.distill_encoder(TEXTS, base_teacher, tmp_path / "out", cfg.model_copy(update={"max_steps": 3}),
                          work_dir=tmp_path / "w")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(D.DistillOutputError, match="exists and is not a distilled encoder"):
        D.distill_encoder(TEXTS, base_teacher, tmp_path / "other", cfg, work_dir=tmp_path / "w")


def test_a_pair_is_one_sequence_cut_as_the_learner_cuts_it(base_teacher):
    from transformers import AutoTokenizer

    from models.encoder_distill import _tokenise

    tokenizer = AutoTokenizer.from_pretrained(str(base_teacher.path))
    long_title = " ".join(["charger"] * 40)
    features = _tokenise(tokenizer, ["usb charger", ("usb charger", long_title), "cable"], 16, False)
    assert features[0]["input_ids"] == tokenizer("usb charger")["input_ids"]
    assert features[2]["input_ids"] == tokenizer("cable")["input_ids"]
    pair = tokenizer("usb charger", long_title, truncation="longest_first", max_length=16)
    assert features[1]["input_ids"] == pair["input_ids"] and len(pair["input_ids"]) == 16
    assert features[1]["input_ids"].count(tokenizer.sep_token_id) == 2, "query and title in one sequence"


def test_length_grouped_batches_are_a_seeded_permutation_with_less_padding():
    from models.encoder_distill import _epoch_order

    rng = np.random.default_rng(0)
    features = [{"input_ids": [0] * int(n)} for n in rng.integers(3, 60, size=2000)]
    cfg = EncoderDistillConfig(batch_size=16)
    grouped = _epoch_order(features, cfg, epoch=0)
    plain = _epoch_order(features, cfg.model_copy(update={"group_by_length": False}), epoch=0)
    for order in (grouped, plain):
        assert sorted(order.tolist()) == list(range(len(features)))

    def padded_tokens(order):
        lengths = np.array([len(features[i]["input_ids"]) for i in order])
        return sum(int(lengths[i:i + 16].max()) * len(lengths[i:i + 16]) for i in range(0, len(lengths), 16))

    real = sum(len(f["input_ids"]) for f in features)
    assert padded_tokens(grouped) < 1.1 * real < padded_tokens(plain)
    assert np.array_equal(grouped, _epoch_order(features, cfg, epoch=0))  # a resumed run gets the same batches
    assert not np.array_equal(grouped, _epoch_order(features, cfg, epoch=1))


def test_max_steps_zero_registers_the_undistilled_copy_itself(base_teacher, tmp_path):
    from tasks.encoder_reporting import loss_figure, trained_phrase

    cfg = EncoderDistillConfig(**QUICK, max_steps=0)
    result = D.distill_encoder(TEXTS, base_teacher, tmp_path / "out", cfg, work_dir=tmp_path / "w")
    assert (result.steps, result.history, result.epochs, result.trained_layers) == (0, [], 0, [])
    copy = AutoModel.from_pretrained(D.build_student(base_teacher.path, tmp_path / "copy", result.layers))
    student = AutoModel.from_pretrained(tmp_path / "out")
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), copy.state_dict().values(),
                                                 strict=True))
    assert student.config.attention_probs_dropout_prob == copy.config.attention_probs_dropout_prob
    assert D.read_result(tmp_path / "out").steps == 0
    assert loss_figure(result.history, result.losses).axes[0].texts, "the loss plot says there was no training"
    assert "no distillation (max_steps = 0)" in trained_phrase(result) and result.trained_text == "none"
    older = D.DistillResult(**{**result.as_dict(), "trained_layers": None})  # a manifest from before the field
    assert (older.trained, older.trained_text, trained_phrase(older)) == ([0, 1], "0,1", "every layer distilled")


def test_frozen_word_embeddings_stay_the_teachers(base_teacher, tmp_path):
    cfg = EncoderDistillConfig(**QUICK, max_steps=3, train_layers="all", train_word_embeddings=False,
                               learning_rate=1e-2)
    D.distill_encoder(TEXTS, base_teacher, tmp_path / "out", cfg, work_dir=tmp_path / "w")
    student, teacher = AutoModel.from_pretrained(tmp_path / "out"), AutoModel.from_pretrained(base_teacher.path)
    assert torch.equal(student.embeddings.word_embeddings.weight, teacher.embeddings.word_embeddings.weight)
    assert not torch.equal(student.encoder.layer[0].output.dense.weight, teacher.encoder.layer[0].output.dense.weight)


def test_the_student_loads_under_adapters_and_trains_one(base_teacher, tmp_path):
    from adapters import AutoAdapterModel

    from models.pairs import TextFormat
    from models.relevance import MarketplaceSpec, RelevanceModel
    from models.stages import train_language_adapter

    D.distill_encoder(TEXTS, base_teacher, tmp_path / "student", EncoderDistillConfig(**QUICK, max_steps=2),
                      work_dir=tmp_path / "w")
    assert type(AutoAdapterModel.from_pretrained(tmp_path / "student")).__name__ == "BertAdapterModel"
    ref = EncoderRef("student", tmp_path / "student", "student-checksum")
    learner = LearnerConfig(adapter={"epochs": 2, "batch_size": 16}, max_length=16, device="cpu")
    model = RelevanceModel.create(ref, text=TextFormat.of(learner), device="cpu")
    base_before = {k: v.clone() for k, v in model.net.base_model.state_dict().items()}
    report = train_language_adapter(model, MarketplaceSpec("en", "en"), make_pairs("en", 64, 1),
                                    make_pairs("en", 32, 2), learner)
    assert report.fit.trainable_parameters > 0 and 0.0 <= report.fit.best_metric <= 1.0
    after = model.net.base_model.state_dict()
    frozen = [k for k in base_before if "adapter" not in k]
    assert frozen and all(torch.equal(base_before[k], after[k]) for k in frozen), "the distilled base must stay frozen"
    assert any("adapters.en" in k for k in after), "the adapter was added to the distilled encoder"
