"""The generation engine: KV cache against HF generate, seeded sampling, streaming of multi-byte characters, stop
strings and tokens, length and context limits, cancellation, parameter ranges."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from utils.lm.generation import (
    GenerationParams,
    IncrementalDecoder,
    InvalidParam,
    TextGenerator,
    find_stop,
    generate_ids,
    partial_stop_length,
)

PROMPT = "Once upon a time, a little fox"


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


class ScriptedModel(torch.nn.Module):
    """Answers any prompt with a fixed token sequence (a stand-in that makes a model 'say' chosen text)."""

    def __init__(self, config: Any, script: list[int]) -> None:
        super().__init__()
        self.config, self.script, self.step = config, script, 0
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the engine a device to read

    def forward(self, input_ids: torch.Tensor, **_: Any) -> SimpleNamespace:
        self.step = 0 if input_ids.shape[1] > 1 else self.step + 1  # a prompt (>1 token) starts the script again
        logits = torch.full((1, 1, self.config.vocab_size), -1e4)
        logits[0, 0, self.script[self.step]] = 0.0
        return SimpleNamespace(logits=logits)


def scripted(gen: TextGenerator, text: str, end: list[int] | None = None) -> TextGenerator:
    script = gen.tokenizer(text, add_special_tokens=False)["input_ids"] + (end or [gen.tokenizer.eos_token_id])
    return TextGenerator(ScriptedModel(gen.model.config, script), gen.tokenizer)


def stream_all(gen: TextGenerator, params: GenerationParams, prompt: str = PROMPT,
               cancel: threading.Event | None = None) -> tuple[list[str], Any]:
    stream = gen.stream(gen.encode(prompt), params, cancel)
    return list(stream), stream.result


def test_kv_cached_greedy_matches_hf_generate(gen: TextGenerator) -> None:
    ids = gen.encode(PROMPT)
    params = GenerationParams(max_new_tokens=24, repetition_penalty=1.3)
    ours = generate_ids(gen.model, ids, params, gen.tokenizer.eos_token_id, gen.tokenizer.pad_token_id)
    reference = gen.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                   max_new_tokens=24, do_sample=False, repetition_penalty=1.3,
                                   eos_token_id=gen.tokenizer.eos_token_id, pad_token_id=gen.tokenizer.pad_token_id)
    assert ours == reference[0, len(ids):].tolist()


def test_generate_ids_restores_training_mode(gen: TextGenerator) -> None:
    gen.model.train()
    try:
        assert len(generate_ids(gen.model, gen.encode(PROMPT), GenerationParams(max_new_tokens=3), 2)) == 3
        assert gen.model.training
    finally:
        gen.model.eval()


def test_seeded_sampling_is_reproducible_and_leaves_global_rng_alone(gen: TextGenerator) -> None:
    params = GenerationParams(max_new_tokens=20, temperature=1.0, top_k=50, top_p=0.95, seed=11)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = gen.generate(gen.encode(PROMPT), params)
    assert torch.equal(torch.rand(3), expected_next)  # sampling drew nothing from the global generator
    assert gen.generate(gen.encode(PROMPT), params).token_ids == first.token_ids
    other = gen.generate(gen.encode(PROMPT), GenerationParams(max_new_tokens=20, temperature=1.0, seed=12))
    assert other.token_ids != first.token_ids


@pytest.mark.parametrize("filters", [{"top_k": 1}, {"top_p": 1e-6}])
def test_top_k_1_and_tiny_top_p_sample_the_greedy_token(gen: TextGenerator, filters: dict[str, Any]) -> None:
    greedy = gen.generate(gen.encode(PROMPT), GenerationParams(max_new_tokens=12))
    sampled = gen.generate(gen.encode(PROMPT), GenerationParams(max_new_tokens=12, temperature=1.5, seed=3,
                                                                **filters))
    assert sampled.token_ids == greedy.token_ids


@pytest.mark.parametrize("temperature", [2.6e-250, 1e-6])
def test_a_vanishing_temperature_is_greedy_not_a_crash(gen: TextGenerator, temperature: float) -> None:
    """The API fuzzer sent 2.6e-250: logits / T overflowed to inf, the probabilities to NaN, and sampling raised."""
    greedy = gen.generate(gen.encode(PROMPT), GenerationParams(max_new_tokens=12))
    tiny = gen.generate(gen.encode(PROMPT), GenerationParams(max_new_tokens=12, temperature=temperature, seed=3))
    assert tiny.token_ids == greedy.token_ids


def test_streamed_deltas_join_to_the_result(gen: TextGenerator) -> None:
    deltas, result = stream_all(gen, GenerationParams(max_new_tokens=40, temperature=1.0, seed=5))
    assert len(deltas) > 1 and "".join(deltas) == result.text
    assert result.finish_reason == "length" and result.completion_tokens == 40
    assert result.prompt_tokens == len(gen.encode(PROMPT))


def test_decoder_releases_each_character_as_soon_as_it_is_complete(gen: TextGenerator) -> None:
    text = "a\nb 🙂 你好"
    ids = gen.tokenizer(text, add_special_tokens=False)["input_ids"]
    decoder = IncrementalDecoder(gen.tokenizer)
    released = [decoder.add(token) for token in ids]
    assert "".join(released) + decoder.flush() == text == decoder.text
    assert not any("\ufffd" in part for part in released)
    pieces = gen.tokenizer.convert_ids_to_tokens(ids)
    assert released[pieces.index("<0x0A>")] == "\n"  # a newline is one byte token: out at once
    emoji = pieces.index("<0xF0>")
    assert released[emoji: emoji + 4] == ["", "", "", "🙂"]  # out with its fourth byte, not before


@pytest.mark.parametrize("text", ["Hi 🙂 there 你好, ok", "🙂🙂你好世界"])
def test_streaming_never_splits_a_multibyte_character(gen: TextGenerator, text: str) -> None:
    ids = gen.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert any(gen.tokenizer.convert_ids_to_tokens(i).startswith("<0x") for i in ids)  # byte-fallback pieces
    deltas, result = stream_all(scripted(gen, text), GenerationParams(max_new_tokens=64))
    assert not any("\ufffd" in delta for delta in deltas)
    assert "".join(deltas) == result.text == text and result.finish_reason == "stop"


def test_stop_string_is_cut_and_never_streamed(gen: TextGenerator) -> None:
    model = scripted(gen, "one ST two STOP three")
    deltas, result = stream_all(model, GenerationParams(max_new_tokens=64, stop=("STOP", "never")))
    assert result.text == "".join(deltas) == "one ST two " and result.finish_reason == "stop"
    assert all("STO" not in delta for delta in deltas)


def test_special_stop_token_ends_generation_by_id(gen: TextGenerator) -> None:
    im_end = gen.tokenizer.convert_tokens_to_ids("<|im_end|>")
    model = scripted(gen, "Hello there", end=[im_end, *gen.encode(" more text")])
    deltas, result = stream_all(model, GenerationParams(max_new_tokens=64, stop=("<|im_end|>",)))
    assert result.text == "".join(deltas) == "Hello there"
    assert result.finish_reason == "stop" and result.token_ids[-1] == im_end


def test_eos_stops_with_reason_stop(gen: TextGenerator) -> None:
    _, result = stream_all(scripted(gen, "The end."), GenerationParams(max_new_tokens=64))
    assert result.text == "The end." and result.finish_reason == "stop"
    assert result.token_ids[-1] == gen.tokenizer.eos_token_id


def test_generation_stops_at_the_context_window(gen: TextGenerator) -> None:
    room = 3
    prompt = [5 + i % 300 for i in range(gen.context_length - room)]
    result = gen.generate(prompt, GenerationParams(max_new_tokens=50))
    assert result.completion_tokens == room and result.finish_reason == "length"
    with pytest.raises(ValueError, match="fills the model's context"):
        gen.generate(prompt + [5] * room, GenerationParams(max_new_tokens=1))


def test_cancel_stops_within_one_token(gen: TextGenerator) -> None:
    cancel = threading.Event()
    stream = gen.stream(gen.encode(PROMPT), GenerationParams(max_new_tokens=1000), cancel)
    received = []
    for delta in stream:
        received.append(delta)
        if len(received) == 3:
            cancel.set()
    assert stream.result is not None and stream.result.finish_reason == "cancelled"
    assert stream.result.completion_tokens < 10 and "".join(received) == stream.result.text


def test_empty_prompt_starts_from_bos(gen: TextGenerator) -> None:
    assert gen.encode("") == [gen.tokenizer.bos_token_id]
    assert gen.generate(gen.encode(""), GenerationParams(max_new_tokens=2)).completion_tokens == 2


@pytest.mark.parametrize("field, value", [("temperature", -0.1), ("temperature", 2.5), ("top_p", 0.0),
                                          ("top_p", 1.1), ("top_k", -1), ("max_new_tokens", 0),
                                          ("repetition_penalty", 0.0), ("seed", -1), ("stop", ("",))])
def test_out_of_range_params_name_the_field(field: str, value: Any) -> None:
    with pytest.raises(InvalidParam, match=field) as info:
        GenerationParams(**{field: value})
    assert info.value.param == field


def test_stop_helpers() -> None:
    assert find_stop("abc STOP x END", ("END", "STOP")) == 4 and find_stop("abc", ("x",)) is None
    assert partial_stop_length("one ST", ("STOP",)) == 2 and partial_stop_length("one", ("STOP",)) == 0
    assert partial_stop_length("x <|im", ("<|im_end|>", "mx")) == 4
