"""The SentencePiece vocabulary as llama.cpp reads it: every piece with its score and token type, in id order.

llama.cpp's `llama` tokenizer (SentencePiece BPE) merges the highest-scoring adjacent pair first and falls back to
the `<0xNN>` byte pieces for anything else, as SentencePiece does, so pieces and scores are copied unchanged. Our
tokenizers are trained without SentencePiece's dummy "▁" prefix: the file says `add_space_prefix = false`, or
llama.cpp would put one in front of every prompt and every id would differ from ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from utils.core.errors import ConfigError, DataError
from utils.lm.templates import IM_END, IM_START
from utils.lm.tokenizer import BOS_ID, EOS_ID, PAD_ID, SPM_MODEL_FILE, UNK_ID

# gguf.TokenType values, spelled out so that this module needs no gguf import to be read.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
CHAT_MARKERS = (IM_START, IM_END)  # user-defined pieces: matched in any text, as our tokenizer matches them


@dataclass
class GGUFVocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID
    pad_id: int = PAD_ID
    unk_id: int = UNK_ID
    eot_id: int | None = None  # <|im_end|>: where a chat turn ends


def find_sentencepiece(*directories: Path) -> Path:
    """The tokenizer.model of the first directory that has one (an adapter falls back to its base model)."""
    for directory in directories:
        if directory is not None and (directory / SPM_MODEL_FILE).is_file():
            return directory / SPM_MODEL_FILE
    raise ConfigError(f"no {SPM_MODEL_FILE} in {', '.join(str(d) for d in directories if d is not None)}: GGUF export "
                      f"writes SentencePiece vocabularies only (a byte-level BPE tokenizer has none); prepare the "
                      f"data with tokenizer_type sentencepiece, the default")


def _token_type(processor: object, index: int, piece: str) -> int:
    if processor.is_unknown(index):
        return UNKNOWN
    if processor.is_control(index):
        return CONTROL
    if processor.is_byte(index):
        return BYTE
    if processor.is_unused(index):
        return UNUSED
    return USER_DEFINED if piece in CHAT_MARKERS else NORMAL


def sentencepiece_vocab(model_file: Path, vocab_size: int) -> GGUFVocab:
    """Pieces, scores and types of `model_file`; its size must equal the model's embedding rows."""
    import sentencepiece as spm

    try:
        processor = spm.SentencePieceProcessor(model_file=str(model_file))
    except (OSError, RuntimeError) as exc:
        raise DataError(f"{model_file} is not a readable SentencePiece model: {exc}") from exc
    size = processor.get_piece_size()
    if size != vocab_size:
        raise ConfigError(f"vocab mismatch: {model_file} has {size} pieces but the model has {vocab_size} embedding "
                          f"rows; export the directory the model was trained with, whose tokenizer matches")
    tokens = [processor.id_to_piece(i) for i in range(size)]
    types = [_token_type(processor, i, piece) for i, piece in enumerate(tokens)]
    scores = [float(processor.get_score(i)) for i in range(size)]
    eot = processor.piece_to_id(IM_END)
    return GGUFVocab(tokens, scores, types, eot_id=eot if tokens[eot] == IM_END else None)
