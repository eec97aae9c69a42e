"""Tiny random encoders built on the fly.

The fast test suite and quick smoke runs need a real Hugging Face encoder folder
(BertModel + fast tokenizer) without any download: a random ``BertConfig`` and a
WordPiece vocabulary built in milliseconds from the text at hand.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertForMaskedLM, BertModel, BertTokenizerFast

_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# Enough multilingual text that a tokenizer trained on it alone covers common scripts.
_FALLBACK_CORPUS = [
    "wireless phone charger", "cargador inalámbrico para teléfono", "chargeur sans fil pour téléphone",
    "kabelloses Ladegerät für Handy", "ワイヤレス充電器", "无线充电器", "running shoes for men",
    "zapatillas de correr para hombre", "chaussures de course pour homme", "Laufschuhe für Herren",
    "ランニングシューズ", "跑步鞋", "stainless steel water bottle", "botella de agua de acero inoxidable",
    "bouteille d'eau en acier inoxydable", "Edelstahl Trinkflasche", "ステンレスボトル", "不锈钢水瓶",
]


def wordpiece_vocab(texts: Iterable[str], vocab_size: int = 2000) -> dict[str, int]:
    """Every character of ``texts`` (alone and as a ``##`` continuation, so no seen text is unknown), then whole
    words by frequency, ties alphabetical: the same vocabulary in every process.

    Why not the library's WordPiece trainer: it breaks frequency ties in hash-map order, which changes from process to
    process, so a tiny model's tokenizer, and every figure a test measures on it, changed from one run to the next.
    """
    normalizer, pre = _normalizer(), pre_tokenizers.BertPreTokenizer()
    counts = Counter(word for text in texts for word, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for word in counts for c in word})
    tokens = [*_SPECIALS, *chars, *(f"##{c}" for c in chars)]
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1]
    tokens += words[:max(vocab_size - len(tokens), 0)]
    return {token: i for i, token in enumerate(dict.fromkeys(tokens))}


def _normalizer() -> normalizers.Normalizer:
    return normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])


def train_wordpiece(texts: Iterable[str], vocab_size: int = 2000) -> BertTokenizerFast:
    """A lowercasing WordPiece tokenizer with BERT's special tokens and pair template, on :func:`wordpiece_vocab`."""
    tok = Tokenizer(models.WordPiece(wordpiece_vocab([*texts, *_FALLBACK_CORPUS], vocab_size), unk_token="[UNK]"))
    tok.normalizer = _normalizer()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return BertTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=512,
    )


def build_tiny_encoder(
    out_dir: Path,
    texts: Iterable[str] = (),
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    vocab_size: int = 2000,
    seed: int = 0,
    mlm_head: bool = False,
) -> Path:
    """Write a random BertModel and a tokenizer trained on ``texts`` to ``out_dir``.

    ``mlm_head`` writes a ``BertForMaskedLM`` instead (the encoder plus its masked-LM head, as mBERT's hub folder
    has it): the kind of teacher whose logits the encoder distillation matches.
    """
    out_dir = Path(out_dir)
    tokenizer = train_wordpiece(texts, vocab_size=vocab_size)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=hidden_size * 4,
        max_position_embeddings=128,
        type_vocab_size=2,
    )
    torch.manual_seed(seed)
    (BertForMaskedLM(config) if mlm_head else BertModel(config)).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
