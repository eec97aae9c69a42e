"""Random Marian (Opus-MT architecture) models built locally, for tests and benchmarks on a machine
that cannot download Helsinki-NLP weights. The folder has exactly the files an Opus-MT checkout has
(config.json, weights, source.spm, target.spm, vocab.json), so every real code path runs on it."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path

_CORPUS = [
    "zapatillas de correr para hombre", "running shoes for men", "chaussures de course pour homme",
    "funda para teléfono móvil negra", "black mobile phone case", "coque de téléphone portable noire",
    "botella de agua de acero inoxidable", "stainless steel water bottle", "bouteille d'eau en acier inoxydable",
    "lámpara de escritorio led regulable", "dimmable led desk lamp", "lampe de bureau led à intensité variable",
    "auriculares inalámbricos con cancelación de ruido", "wireless noise cancelling headphones",
    "casque sans fil à réduction de bruit", "camiseta de algodón para mujer talla m", "women's cotton t-shirt size m",
    "t-shirt en coton pour femme taille m", "mochila azul para portátil de 15 pulgadas", "blue 15 inch laptop backpack",
    "sac à dos bleu pour ordinateur portable 15 pouces", "juego de 4 cartuchos de tinta", "set of 4 ink cartridges",
]


def train_sentencepiece(texts: Iterable[str], vocab_size: int = 200) -> bytes:
    """A unigram sentencepiece model trained in memory; ``hard_vocab_limit`` off so tiny corpora work."""
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts) + _CORPUS), model_writer=buffer, vocab_size=vocab_size,
        model_type="unigram", hard_vocab_limit=False, character_coverage=1.0, minloglevel=2,
        unk_id=0, bos_id=-1, eos_id=1, pad_id=-1,
    )
    return buffer.getvalue()


def build_tiny_marian(
    out_dir: Path,
    texts: Iterable[str] = (),
    *,
    d_model: int = 32,
    layers: int = 1,
    heads: int = 2,
    ffn_dim: int | None = None,
    spm_vocab_size: int = 200,
    vocab_size: int | None = None,
    max_positions: int = 64,
    init_std: float = 0.5,
    seed: int = 0,
) -> Path:
    """Write a random MarianMTModel + MarianTokenizer folder to ``out_dir`` and return it.

    ``vocab_size`` larger than the sentencepiece vocabulary pads the embedding table with unused
    entries, so a benchmark model can have a realistic (~58k) output layer without a big corpus.
    ``init_std`` is large by default so that a random model's output depends on its input (at
    Marian's 0.02 every sentence decodes to the same tokens, and misaligned outputs would go unseen).
    """
    import sentencepiece as spm
    import torch
    from transformers import MarianConfig, MarianMTModel

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_bytes = train_sentencepiece(texts, spm_vocab_size)
    for name in ("source.spm", "target.spm"):
        (out_dir / name).write_bytes(model_bytes)
    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    vocab = {"</s>": 0, "<unk>": 1}
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    for i in range(max(0, (vocab_size or 0) - len(vocab) - 1)):
        vocab[f"<unused{i}>"] = len(vocab)
    vocab["<pad>"] = len(vocab)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "tokenizer_config.json").write_text(json.dumps({"model_max_length": max_positions}), encoding="utf-8")
    pad = vocab["<pad>"]
    config = MarianConfig(
        vocab_size=len(vocab), d_model=d_model, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=heads, decoder_attention_heads=heads,
        encoder_ffn_dim=ffn_dim or 4 * d_model, decoder_ffn_dim=ffn_dim or 4 * d_model,
        max_position_embeddings=max_positions, pad_token_id=pad, eos_token_id=0,
        decoder_start_token_id=pad, forced_eos_token_id=None, scale_embedding=True,
        share_encoder_decoder_embeddings=True, activation_function="swish", init_std=init_std,
    )
    torch.manual_seed(seed)
    MarianMTModel(config).save_pretrained(out_dir)
    return out_dir
