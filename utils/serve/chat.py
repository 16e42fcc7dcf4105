"""Stage 06, interactive mode: chat with a model in the terminal.

Answers stream as they are generated. The conversation is rendered with the prompt template on every turn; when it no
longer fits the context window (minus max_new_tokens for the answer), the oldest exchanges are dropped, with a
notice. Ctrl-C during an answer stops that answer (what was shown stays in the conversation); Ctrl-C or Ctrl-D at the
prompt quits. Commands: /help, /params [name=value ...], /reset, /exit.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import TextIO

from utils.lm.generation import GenerationParams, InvalidParam, TextGenerator, fresh_seed
from utils.lm.templates import Message, PromptTemplate, get_template
from utils.serve.config import ServeConfig, load_for_serving

USER_PROMPT = "You: "
ANSWER_PREFIX = "Lumi: "
STOPPED_MARK = " [stopped]"
SETTABLE = ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed")
HELP = """Commands:
  /help                      this list
  /params                    show the generation settings
  /params name=value ...     change them: max_new_tokens temperature top_k top_p repetition_penalty seed
                             (seed=random draws a new seed for every answer)
  /reset                     forget the conversation
  /exit                      quit (also Ctrl-D, or Ctrl-C at the prompt)
Ctrl-C while an answer streams stops that answer."""


class ContextFull(Exception):
    """The newest message alone does not fit the context with room for an answer."""


class ChatSession:
    """A conversation with one model: history, settings, commands and streamed answers, printed to `out`."""

    def __init__(self, generator: TextGenerator, template: PromptTemplate, params: GenerationParams,
                 seed: int | None, system_prompt: str | None = None, out: TextIO = sys.stdout) -> None:
        self.generator, self.template, self.params, self.seed = generator, template, params, seed
        self.system: list[Message] = [{"role": "system", "content": system_prompt}] if system_prompt else []
        self.history: list[Message] = []
        self.out = out

    def say(self, text: str = "", end: str = "\n") -> None:
        print(text, end=end, file=self.out, flush=True)

    def _encode(self, messages: list[Message]) -> list[int]:
        return self.generator.encode(self.template.render(self.system + messages, add_generation_prompt=True))

    def prompt_ids(self) -> list[int]:
        """The conversation as token ids, dropping the oldest exchanges until it leaves room for an answer."""
        budget = self.generator.context_length - self.params.max_new_tokens
        alone = len(self._encode(self.history[-1:]))
        if alone > budget:  # checked first, so that no exchange is dropped for a message that cannot be sent
            raise ContextFull(f"this message is {alone} tokens with the template; with max_new_tokens "
                              f"{self.params.max_new_tokens} the context of {self.generator.context_length} "
                              f"holds {max(budget, 0)}. Shorten it or lower max_new_tokens (/params).")
        dropped = 0
        while len(ids := self._encode(self.history)) > budget:
            del self.history[:2]  # the oldest user message and the answer to it
            dropped += 1
        if dropped:
            self.say(f"(context: dropped the oldest {dropped} exchange{'s' if dropped > 1 else ''} to stay within "
                     f"{self.generator.context_length} tokens)")
        return ids

    def answer(self, message: str) -> None:
        self.history.append({"role": "user", "content": message})
        try:
            prompt_ids = self.prompt_ids()
        except ContextFull as exc:
            self.history.pop()
            self.say(f"(not sent: {exc})")
            return
        seed = fresh_seed() if self.seed is None else self.seed
        params = dataclasses.replace(self.params, seed=seed, stop=self.template.stop)
        shown: list[str] = []
        self.say(ANSWER_PREFIX, end="")
        try:
            for delta in self.generator.stream(prompt_ids, params):
                shown.append(delta)
                self.say(delta, end="")
            self.say()
        except KeyboardInterrupt:
            self.say(STOPPED_MARK)
        self.history.append({"role": "assistant", "content": "".join(shown).strip()})

    def show_params(self) -> None:
        values = {name: getattr(self.params, name) for name in SETTABLE if name != "seed"}
        values["seed"] = "random" if self.seed is None else self.seed
        self.say("  ".join(f"{name}={value}" for name, value in values.items()) +
                 f"  (template {self.template.name}, context {self.generator.context_length})")

    def set_params(self, assignments: list[str]) -> None:
        changes: dict[str, int | float | None] = {}
        try:
            for item in assignments:
                name, sep, value = item.partition("=")
                if not sep or name not in SETTABLE:
                    raise InvalidParam(name or item, f"is not a setting; use name=value with name one of "
                                                     f"{', '.join(SETTABLE)}")
                changes[name] = _parse_value(name, value)
            seed = changes.pop("seed", self.seed)
            params = dataclasses.replace(self.params, **changes)  # range-checks every value
            if seed is not None:
                dataclasses.replace(params, seed=seed)  # range-checks the seed (answers draw theirs per turn)
        except InvalidParam as exc:
            self.say(f"(unchanged: {exc})")
            return
        self.params, self.seed = params, seed
        self.show_params()

    def command(self, line: str) -> bool:
        """Run a /command; False means quit."""
        name, *args = line.split()
        if name in ("/exit", "/quit"):
            return False
        if name == "/help":
            self.say(HELP)
        elif name == "/reset":
            self.history.clear()
            self.say("(conversation cleared)")
        elif name == "/params":
            if args:
                self.set_params(args)
            else:
                self.show_params()
        else:
            self.say(f"(unknown command {name}; /help lists the commands)")
        return True


def _parse_value(name: str, value: str) -> int | float | None:
    if name == "seed" and value == "random":
        return None
    kind = type(getattr(GenerationParams(), name))
    try:
        return kind(value)
    except ValueError:
        raise InvalidParam(name, f"must be a{'n integer' if kind is int else ' number'}, got '{value}'") from None


def chat_loop(session: ChatSession, read: Callable[[str], str] = input) -> None:
    """Read lines until /exit, Ctrl-D or Ctrl-C at the prompt."""
    while True:
        try:
            line = read(USER_PROMPT).strip()
        except (EOFError, KeyboardInterrupt):
            session.say("\nbye")
            return
        if not line:
            continue
        if line.startswith("/"):
            if not session.command(line):
                session.say("bye")
                return
        else:
            session.answer(line)


def run_chat(config: ServeConfig) -> None:
    template = get_template(config.template)
    loaded = load_for_serving(config)
    generator = TextGenerator(loaded.model, loaded.tokenizer)
    session = ChatSession(generator, template, config.default_params(seed=0), config.seed, config.system_prompt)
    session.say(f"Lumi chat with {config.model_path} ({generator.context_length} tokens of context, template "
                f"{template.name}). /help lists the commands; Ctrl-C stops an answer; /exit or Ctrl-D quits.")
    chat_loop(session)
