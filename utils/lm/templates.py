"""Prompt templates shared by SFT, DPO, evaluation and serving.

One module owns every template so that training and inference format conversations identically; a template that
drifts between SFT and serving silently costs quality.

- chatml:   "<|im_start|>user\\n…<|im_end|>\\n<|im_start|>assistant\\n…<|im_end|>\\n" — identical to the chat template
            baked into every Lumi tokenizer (CHATML_JINJA; a test holds them equal).
- instruct: "### Instruction:\\n…\\n\\n### Response:\\n…" (Alpaca style).
- chat:     "Human: …\\n\\nAssistant: …" (Anthropic HH style).

`render(messages, add_generation_prompt)` formats a conversation; `split_last_turn` gives the (prompt, completion)
pair that SFT/DPO train on, so the loss falls on the completion only. `stop` lists the strings that end an
assistant turn at generation time.
"""

from __future__ import annotations

from dataclasses import dataclass

from utils.core.errors import ConfigError

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

# Standard ChatML: "<|im_start|>{role}\n{content}<|im_end|>\n" per message; the generation prompt opens an assistant
# turn. Jinja, because transformers' `apply_chat_template` renders `tokenizer.chat_template` with it.
CHATML_JINJA = (
    "{% for message in messages %}"
    "{{ '" + IM_START + "' + message['role'] + '\\n' + message['content'] + '" + IM_END + "' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '" + IM_START + "assistant\\n' }}{% endif %}"
)
ROLES = ("system", "user", "assistant")

Message = dict[str, str]


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    system: str  # "{content}" formats a system message
    user: str
    assistant_open: str  # what opens an assistant turn (the generation prompt)
    assistant_close: str  # what closes a finished assistant turn
    stop: tuple[str, ...]  # strings that end an assistant turn when generating

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> str:
        parts = []
        for index, message in enumerate(messages):
            role, content = message.get("role"), message.get("content")
            if role not in ROLES or not isinstance(content, str):
                raise ConfigError(f"message {index} must have role in {ROLES} and string content, got {message!r}")
            if role == "assistant":
                parts.append(self.assistant_open + content + self.assistant_close)
            else:
                parts.append((self.system if role == "system" else self.user).format(content=content))
        if add_generation_prompt:
            parts.append(self.assistant_open)
        return "".join(parts)

    def split_last_turn(self, messages: list[Message]) -> tuple[str, str]:
        """(prompt, completion) for a conversation ending with an assistant message: the prompt is everything up to
        and including the generation prompt, the completion is the last answer and its closing marker."""
        if not messages or messages[-1].get("role") != "assistant":
            raise ConfigError("a training conversation must end with an assistant message")
        prompt = self.render(messages[:-1], add_generation_prompt=True)
        return prompt, messages[-1]["content"] + self.assistant_close


TEMPLATES: dict[str, PromptTemplate] = {
    "chatml": PromptTemplate("chatml", system=IM_START + "system\n{content}" + IM_END + "\n",
                             user=IM_START + "user\n{content}" + IM_END + "\n",
                             assistant_open=IM_START + "assistant\n", assistant_close=IM_END + "\n",
                             stop=(IM_END,)),
    "instruct": PromptTemplate("instruct", system="{content}\n\n", user="### Instruction:\n{content}\n\n",
                               assistant_open="### Response:\n", assistant_close="\n\n",
                               stop=("### Instruction:",)),
    "chat": PromptTemplate("chat", system="{content}\n\n", user="Human: {content}\n\n", assistant_open="Assistant: ",
                           assistant_close="\n\n", stop=("\nHuman:",)),
}


def get_template(name: str) -> PromptTemplate:
    if name not in TEMPLATES:
        raise ConfigError(f"unknown prompt template '{name}'; known templates: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]
