"""Round trip against llama.cpp itself (llama-cpp-python, which compiles llama.cpp): the exported file loads, its
tokenization equals ours on a fixed prompt set, its greedy continuation equals our engine's for f32, and its logits
equal ours within a stated tolerance for f16, bf16 and q8_0. CI installs it (make install-llama-cpp)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from utils.export.config import ExportConfig
from utils.export.writer import export_gguf
from utils.lm.generation import GenerationParams, TextGenerator
from utils.lm.loading import load_model

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python: make install-llama-cpp")

PROMPTS = ("Once upon a time, a fox", "  two leading spaces and  a double one ", "line one\nline two\n\n",
           "digits 1234567 and 3.14", "café, naïve, Ærø", "emoji 🙂 and 日本語", "tabs\tand\u00a0nbsp",
           "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n")
CONTINUATION = 24  # greedy tokens compared
# Largest |logit difference| allowed, as a fraction of the logits' spread (max - min) at each position.
# f32 differs only in summation order (measured 1.5e-4 of the spread at worst).
LOGIT_TOLERANCE = {"f32": 5e-4, "f16": 5e-3, "bf16": 4e-2, "q8_0": 2e-2}


@pytest.fixture(scope="module")
def ours(serve_model_dir: Path) -> Any:
    return load_model(serve_model_dir)


@pytest.fixture(scope="module")
def exported(serve_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("gguf")
    return {t: export_gguf(ExportConfig(model_path=str(serve_model_dir), outtype=t, output=str(out / f"m-{t}.gguf")))
            .path for t in LOGIT_TOLERANCE}


def _llama(path: Path) -> Any:
    return llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, logits_all=True, verbose=False)


def _our_logits(ours: Any, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return ours.model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


def test_llama_cpp_tokenizes_as_we_do(exported: dict[str, Path], ours: Any) -> None:
    llm = _llama(exported["f32"])
    for text in PROMPTS:
        expected = ours.tokenizer(text, add_special_tokens=False)["input_ids"]
        # special=True, as llama.cpp tokenizes a chat-templated prompt: it marks the end-of-turn marker as a control
        # token, which only then is matched in text (ours always matches both ChatML markers).
        assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) == expected, text
        assert llm.detokenize(expected, special=True).decode("utf-8") == ours.tokenizer.decode(expected), text


@pytest.mark.parametrize("outtype", list(LOGIT_TOLERANCE))
def test_llama_cpp_logits_match_ours(outtype: str, exported: dict[str, Path], ours: Any) -> None:
    llm = _llama(exported[outtype])
    for text in PROMPTS[:3]:
        ids = ours.tokenizer(text, add_special_tokens=False)["input_ids"]
        llm.reset()
        llm.eval(ids)
        theirs = np.array(llm.scores[:len(ids)])
        expected = _our_logits(ours, ids)
        spread = expected.max(axis=1) - expected.min(axis=1)
        worst = (np.abs(theirs - expected).max(axis=1) / spread).max()
        assert worst <= LOGIT_TOLERANCE[outtype], f"{outtype}: {worst:.2e} of the spread on {text!r}"


def test_llama_cpp_greedy_continuation_equals_our_engines_in_f32(exported: dict[str, Path], ours: Any) -> None:
    llm = _llama(exported["f32"])
    engine = TextGenerator(ours.model, ours.tokenizer)
    for text in PROMPTS:
        ids = engine.encode(text)
        expected = engine.generate(ids, GenerationParams(max_new_tokens=CONTINUATION)).token_ids
        llm.reset()
        theirs = []
        for token in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
            theirs.append(token)
            if len(theirs) == CONTINUATION:
                break
        assert theirs == expected, text
