"""Tokenizers, trained once, frozen, and exported as Hugging Face fast tokenizers: SentencePiece BPE (the default) or
a GPT-2-style byte-level BPE (`tokenizers`), or any Hugging Face tokenizer by hub id.

    from utils.lm.tokenizer import train_tokenizer, load_tokenizer, SentencePieceEncoder
    train_tokenizer(Path("sample.txt"), Path("out/tokenizer"), vocab_size=8000)
    tok = load_tokenizer(Path("out/tokenizer"))          # SFT, DPO, evaluation, serving
    enc = SentencePieceEncoder(Path("out/tokenizer"))    # pretraining data pipeline

Why this recipe:
- BPE with byte fallback: any UTF-8 text (emoji, CJK, rare accents) encodes losslessly with no <unk>, so
  decode(encode(x)) == x; no case folding, no normalization ("identity"), whitespace kept verbatim
  (remove_extra_whitespaces=False, whitespace-only pieces allowed) so code and poetry keep their layout.
- add_dummy_prefix=False: SentencePiece's default prepends "▁" to every input, which no HF pipeline reproduces and
  which makes every line's ids differ between the two libraries.
- split_digits: numbers tokenize digit by digit, which helps small models with arithmetic.
- The HF tokenizer is built here from the SentencePiece vocabulary (BPE model, merges ranked by piece id, " " -> "▁"
  normalizer, byte-fallback decoder, no pre-tokenizer), not by `PreTrainedTokenizerFast.from_pretrained` on a
  folder holding only tokenizer.model: in transformers 5.23 that conversion parses the model with protobuf, which is
  not in our pins, and it then falls back to the tiktoken reader and fails. The result is saved as tokenizer.json, so
  loading never converts again. Known broken alternatives: `LlamaTokenizer(vocab_file=...)` yields a 4-token vocab and
  `LlamaTokenizer.from_pretrained` mangles leading whitespace.
- HF ids equal `SentencePieceProcessor.encode` ids on all text except the literal strings "<s>", "</s>", "<pad>",
  "<unk>": HF maps them to their control ids (TRL appends `eos_token` as text, so HF must recognise it), SentencePiece
  to plain pieces. The data pipeline uses SentencePiece ids and adds BOS/EOS itself; the HF tokenizer never adds them.
  Round trips are exact except for a literal "▁" (U+2581), which both libraries decode as a space.

Byte-level BPE (`tokenizer_type: bytelevel`, as GPT-2 and most peers use): `tokenizers`' BPE over the 256 byte
symbols with the ByteLevel pre-tokenizer (no prefix space) and decoder, the same special tokens at the same ids
(0-5); there is no tokenizer.model, so its identity is the sha256 of tokenizer.json and the data pipeline encodes
with the `tokenizers` batch encoder.
"""

import hashlib
import io
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import sentencepiece as spm

from utils.core.errors import ConfigError, DataError
from utils.lm.templates import CHATML_JINJA, IM_END, IM_START

if TYPE_CHECKING:  # transformers takes seconds to import; CLIs that only train or encode should not pay for it
    from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

SPECIAL_PIECES = (IM_START, IM_END)
UNK_PIECE, BOS_PIECE, EOS_PIECE, PAD_PIECE = "<unk>", "<s>", "</s>", "<pad>"
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
SPM_MODEL_FILE = "tokenizer.model"
HF_TOKENIZER_FILE = "tokenizer.json"
HF_REQUIRED_FILES = (HF_TOKENIZER_FILE, "tokenizer_config.json")
TOKENIZER_TYPES = ("sentencepiece", "bytelevel")
ORDERED_SPECIALS = (UNK_PIECE, BOS_PIECE, EOS_PIECE, PAD_PIECE, *SPECIAL_PIECES)  # ids 0..5 in both kinds
# With byte fallback a character left out of the vocabulary still round-trips as UTF-8 bytes, so covering 99.95% of
# the sample's characters is lossless and spares a small vocab (512 = 262 reserved pieces + 250) from spending slots on
# one-off symbols; 1.0 fails outright on a sample with more distinct characters than free slots.
CHARACTER_COVERAGE = 0.9995
SPM_ERROR_LOG_LEVEL = 2  # 0 info, 1 warning, 2 error: SentencePiece's training chatter goes to stderr otherwise
DEFAULT_NUM_THREADS = 2


def _read_lines(sample_path: Path) -> Iterator[str]:
    """Yield the sample's lines without their newline; universal newlines also drop the "\\r" of CRLF files."""
    with sample_path.open(encoding="utf-8") as f:
        for line in f:
            yield line.rstrip("\n")


def _translate_spm_error(error: RuntimeError, vocab_size: int, sample_path: Path) -> ConfigError | None:
    """Turn SentencePiece's vocabulary-size errors into advice that names the flag to change; None for other errors."""
    message = str(error)
    if "Vocabulary size too high" in message:
        limit = re.search(r"<= (\d+)", message)
        hint = f" (at most {limit.group(1)} for this sample)" if limit else ""
        return ConfigError(
            f"The sample {sample_path} is too small for vocab_size={vocab_size}: SentencePiece cannot learn that many "
            f"pieces from it{hint}. Use a smaller --vocab_size or a larger sample."
        )
    if "smaller than required_chars" in message:
        needed = re.search(r"(\d+) vs (\d+)", message)
        hint = f" (at least {needed.group(2)})" if needed else ""
        return ConfigError(
            f"vocab_size={vocab_size} cannot hold the reserved pieces (specials + 256 bytes) and the characters of "
            f"{sample_path}{hint}. Use a larger --vocab_size."
        )
    return None


def _train_spm(sample_path: Path, vocab_size: int, num_threads: int, max_sentence_length: int) -> bytes:
    """Train SentencePiece BPE in memory and return the serialized model.

    Determinism: every line is used (input_sentence_size=0) in file order (no shuffle), and the lines are streamed from
    Python rather than passed as a path, because the model stores its trainer options and a path would make the bytes
    depend on where the sample lives. num_threads is stored too: the same sample, vocab_size and num_threads give
    byte-identical models. (seed_sentencepiece_size only seeds the unigram trainer, so BPE has no seed to fix.)
    """
    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_read_lines(sample_path),
            model_writer=writer,
            vocab_size=vocab_size,
            model_type="bpe",
            add_dummy_prefix=False,
            byte_fallback=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            user_defined_symbols=list(SPECIAL_PIECES),
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            pad_id=PAD_ID,
            unk_piece=UNK_PIECE,
            bos_piece=BOS_PIECE,
            eos_piece=EOS_PIECE,
            pad_piece=PAD_PIECE,
            character_coverage=CHARACTER_COVERAGE,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            max_sentence_length=max_sentence_length,
            num_threads=num_threads,
            minloglevel=SPM_ERROR_LOG_LEVEL,
        )
    except RuntimeError as error:
        translated = _translate_spm_error(error, vocab_size, sample_path)
        if translated is None:
            raise
        raise translated from error
    return writer.getvalue()


def _bpe_merges(vocab: dict[str, int], mergeable: set[str]) -> list[tuple[str, str]]:
    """Every split of a piece into two vocabulary pieces, ranked by the piece's id.

    SentencePiece BPE encodes by repeatedly merging the adjacent pair whose union has the best score (ties: leftmost),
    and its scores fall with the id; HF BPE merges by rank (ties: leftmost), so ranking by id reproduces it. Control,
    byte and user-defined pieces never take part in merges.
    """
    merges = []
    for piece in sorted(mergeable, key=vocab.__getitem__):
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in mergeable and right in mergeable:
                merges.append((left, right))
    return merges


def _hf_tokenizer_from_spm(model_proto: bytes) -> "PreTrainedTokenizerFast":
    """Build the HF fast tokenizer that encodes exactly like the SentencePiece model (see the module docstring)."""
    from tokenizers import Tokenizer, decoders, normalizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    sp = spm.SentencePieceProcessor(model_proto=model_proto)
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    mergeable = {
        piece
        for piece, i in vocab.items()
        if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i)) and piece not in SPECIAL_PIECES
    }
    backend = Tokenizer(
        BPE(vocab=vocab, merges=_bpe_merges(vocab, mergeable), unk_token=UNK_PIECE, fuse_unk=True, byte_fallback=True)
    )
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_PIECE,
        eos_token=EOS_PIECE,
        unk_token=UNK_PIECE,
        pad_token=PAD_PIECE,
        # Special so that decode(skip_special_tokens=True) drops them in serving; they stay matched in text.
        extra_special_tokens=list(SPECIAL_PIECES),
        add_bos_token=False,
        add_eos_token=False,
    )
    tok.chat_template = CHATML_JINJA
    return tok


def train_tokenizer(
    sample_path: Path,
    out_dir: Path,
    vocab_size: int,
    num_threads: int = DEFAULT_NUM_THREADS,
    max_sentence_length: int = 16384,
    kind: str = "sentencepiece",
) -> Path:
    """Train on a UTF-8 text file (one sentence/paragraph per line; the caller writes it) and write an HF fast
    tokenizer (+ tokenizer.model for SentencePiece) into out_dir. Deterministic: same sample + vocab_size (+
    num_threads, which the model records) => byte-identical files. Lines longer than max_sentence_length bytes are
    skipped by SentencePiece. Returns out_dir."""
    if not sample_path.is_file():
        raise DataError(f"Tokenizer training sample {sample_path} does not exist")
    if kind not in TOKENIZER_TYPES:
        raise ConfigError(f"unknown tokenizer_type '{kind}'; choose from {', '.join(TOKENIZER_TYPES)}")
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    if kind == "bytelevel":
        _train_bytelevel(sample_path, vocab_size).save_pretrained(out_dir)
    else:
        model_proto = _train_spm(sample_path, vocab_size, num_threads, max_sentence_length)
        (out_dir / SPM_MODEL_FILE).write_bytes(model_proto)
        _hf_tokenizer_from_spm(model_proto).save_pretrained(out_dir)
    logger.info(
        "Trained a %d-piece tokenizer on %s in %.1f s -> %s (sha256 %s)",
        vocab_size, sample_path, time.perf_counter() - start, out_dir, tokenizer_sha256(out_dir)[:12],
    )
    return out_dir


def _train_bytelevel(sample_path: Path, vocab_size: int) -> "PreTrainedTokenizerFast":
    """GPT-2-style byte-level BPE: every byte is a symbol, so any text encodes without <unk>."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(ORDERED_SPECIALS):
        raise ConfigError(f"vocab_size={vocab_size} cannot hold the {len(alphabet)} byte symbols and "
                          f"{len(ORDERED_SPECIALS)} special tokens of a byte-level BPE: use a larger --vocab_size")
    backend = Tokenizer(BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(vocab_size=vocab_size, special_tokens=list(ORDERED_SPECIALS), initial_alphabet=alphabet,
                         show_progress=False)
    backend.train_from_iterator(_read_lines(sample_path), trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS_PIECE, eos_token=EOS_PIECE,
                                  unk_token=UNK_PIECE, pad_token=PAD_PIECE, extra_special_tokens=list(SPECIAL_PIECES),
                                  add_bos_token=False, add_eos_token=False)
    tok.chat_template = CHATML_JINJA
    return tok


def _require_files(path: Path, names: tuple[str, ...]) -> None:
    if not path.is_dir():
        raise DataError(f"Tokenizer directory {path} does not exist (train one with train_tokenizer)")
    missing = [name for name in names if not (path / name).is_file()]
    if missing:
        raise DataError(
            f"Tokenizer directory {path} lacks {', '.join(missing)}; it must hold the output of train_tokenizer"
        )


def load_tokenizer(path: Path) -> "PreTrainedTokenizerFast":
    """Load the HF fast tokenizer saved by train_tokenizer (ids, special tokens and ChatML template included).

    Its save_pretrained writes tokenizer.json/config/template but not tokenizer.model: copy that file yourself when
    exporting a tokenizer (e.g. into a checkpoint), since its sha256 is the tokenizer's identity.
    """
    from transformers import PreTrainedTokenizerFast

    _require_files(path, HF_REQUIRED_FILES)
    return PreTrainedTokenizerFast.from_pretrained(path)


def tokenizer_sha256(path: Path) -> str:
    """The identity of a frozen tokenizer, recorded in shards and checkpoints: sha256 of tokenizer.model
    (SentencePiece), else of tokenizer.json (byte-level BPE, hub tokenizers)."""
    identity = SPM_MODEL_FILE if (path / SPM_MODEL_FILE).is_file() else HF_TOKENIZER_FILE
    _require_files(path, (identity,))
    return hashlib.sha256((path / identity).read_bytes()).hexdigest()


def make_encoder(path: Path) -> "SentencePieceEncoder | FastTokenizerEncoder":
    """The data pipeline's batch encoder for a tokenizer directory: SentencePiece's where it has tokenizer.model."""
    return SentencePieceEncoder(path) if (path / SPM_MODEL_FILE).is_file() else FastTokenizerEncoder(path)


class FastTokenizerEncoder:
    """Batch encoding through `tokenizers` (Rust, parallel) for tokenizers without a SentencePiece model."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        tok = load_tokenizer(path)
        self._backend = Tokenizer.from_file(str(path / HF_TOKENIZER_FILE))
        self.vocab_size: int = len(tok)
        if tok.eos_token_id is None:
            raise DataError(f"the tokenizer at {path} has no EOS token: documents cannot be separated")
        self.eos_id: int = tok.eos_token_id
        self.bos_id: int = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._backend.encode_batch(texts, add_special_tokens=False)]


class SentencePieceEncoder:
    """Fast batch encoding for the data pipeline: SentencePiece's C++ batch encoder, threads outside the GIL."""

    def __init__(self, path: Path, num_threads: int = DEFAULT_NUM_THREADS):
        _require_files(path, (SPM_MODEL_FILE,))
        self._sp = spm.SentencePieceProcessor(model_file=str(path / SPM_MODEL_FILE))
        self._num_threads = num_threads
        self.vocab_size: int = self._sp.get_piece_size()
        self.bos_id: int = self._sp.bos_id()
        self.eos_id: int = self._sp.eos_id()

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Plain ids per text, no BOS/EOS (the caller frames documents); identical to the HF tokenizer's ids."""
        return self._sp.encode(texts, out_type=int, num_threads=self._num_threads)
