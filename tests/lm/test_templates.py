"""Templates render exactly, ChatML equals the tokenizer's chat template, and the completion split is right."""

from __future__ import annotations

import pytest
from jinja2 import Template

from utils.core.errors import ConfigError
from utils.lm.templates import CHATML_JINJA, get_template

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Where is Tom?"}]


def test_exact_renderings() -> None:
    messages = [{"role": "user", "content": "Where is Tom?"}, {"role": "assistant", "content": "At the park."}]
    assert get_template("chatml").render(messages) == \
        "<|im_start|>user\nWhere is Tom?<|im_end|>\n<|im_start|>assistant\nAt the park.<|im_end|>\n"
    assert get_template("instruct").render(messages) == \
        "### Instruction:\nWhere is Tom?\n\n### Response:\nAt the park.\n\n"
    assert get_template("chat").render(messages) == "Human: Where is Tom?\n\nAssistant: At the park.\n\n"


@pytest.mark.parametrize("generation_prompt", [True, False])
def test_chatml_matches_the_tokenizer_template(generation_prompt: bool) -> None:
    expected = Template(CHATML_JINJA).render(messages=CONVERSATION, add_generation_prompt=generation_prompt)
    assert get_template("chatml").render(CONVERSATION, generation_prompt) == expected


def test_split_last_turn_puts_only_the_answer_in_the_completion() -> None:
    messages = CONVERSATION + [{"role": "assistant", "content": "At the park."}]
    prompt, completion = get_template("chat").split_last_turn(messages)
    assert prompt.endswith("Human: Where is Tom?\n\nAssistant: ") and completion == "At the park.\n\n"
    with pytest.raises(ConfigError, match="end with an assistant message"):
        get_template("chat").split_last_turn(CONVERSATION)


def test_unknown_template_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="known templates: chatml, instruct, chat"):
        get_template("alpaca")
    with pytest.raises(ConfigError, match="role in"):
        get_template("chatml").render([{"role": "robot", "content": "x"}])
