"""Prompt templates shared by SFT, DPO, evaluation and serving.

One module owns every template so that training and inference format conversations identically; a template that
drifts between SFT and serving silently costs quality. For now it holds ChatML, the chat template baked into the
tokenizer (see utils/tokenizer.py); instruct/chat templates for later stages belong here too.
"""

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
