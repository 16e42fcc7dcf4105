"""Interactive mode: the real program driven in a pseudo-terminal as a person would (streamed answers, commands,
Ctrl-C, the history notice), plus the session's history trimming and settings in process."""

from __future__ import annotations

import io
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pexpect
import pytest

from utils.lm.generation import GenerationParams, TextGenerator, TextStream
from utils.lm.templates import get_template
from utils.serve.chat import ANSWER_PREFIX, USER_PROMPT, ChatSession, chat_loop

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 90  # importing torch and transformers on a busy 2-core machine
LONG_MESSAGE = "The fox ran to the river and saw a bird. " * 6


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def session(gen: TextGenerator, max_new_tokens: int = 8) -> tuple[ChatSession, io.StringIO]:
    out = io.StringIO()
    chat = ChatSession(gen, get_template("chatml"), GenerationParams(max_new_tokens=max_new_tokens), seed=0, out=out)
    return chat, out


def rendered_tokens(gen: TextGenerator, messages: list[dict[str, str]]) -> int:
    return len(gen.encode(get_template("chatml").render(messages, add_generation_prompt=True)))


def _default_sigint() -> None:
    # A test run started in the background of a non-interactive shell (`make test &`) ignores SIGINT, and an ignored
    # signal stays ignored across exec: the chat would never see the Ctrl-C these tests send.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn(model_dir: Path, *flags: str) -> pexpect.spawn:
    return pexpect.spawn(sys.executable, ["scripts/06_serve.py", "--model_path", str(model_dir), "--cpu_threads",
                                          "1", *flags], cwd=str(REPO), encoding="utf-8",
                         timeout=STARTUP_TIMEOUT_S, env={**os.environ, "HF_HUB_OFFLINE": "1"}, dimensions=(50, 200),
                         preexec_fn=_default_sigint)


def test_interactive_session_in_a_terminal(serve_model_dir: Path, gen: TextGenerator) -> None:
    message_tokens = rendered_tokens(gen, [{"role": "user", "content": LONG_MESSAGE}])
    fits_one_message = gen.context_length - message_tokens - 5  # max_new_tokens leaving room for this message only
    child = spawn(serve_model_dir, "--temperature", "0", "--max_new_tokens", "12")
    try:
        child.expect("Lumi chat with")
        child.expect_exact(USER_PROMPT)
        child.timeout = 30
        child.sendline("Hello there")
        child.expect_exact(ANSWER_PREFIX)
        child.expect_exact(USER_PROMPT)  # the answer streamed and ended by itself
        assert "[stopped]" not in child.before
        child.sendline("/params")
        child.expect(r"max_new_tokens=12\s+temperature=0\.0 .*seed=random")
        child.sendline(f"/params max_new_tokens={fits_one_message}")
        child.expect(f"max_new_tokens={fits_one_message}")
        child.sendline("/params temperature=9")
        child.expect(r"unchanged: temperature must be in \[0, 2\]")
        child.sendline(LONG_MESSAGE)  # with the first exchange it no longer fits: that exchange is dropped
        child.expect(r"context: dropped the oldest 1 exchange to stay within 2048 tokens")
        child.expect_exact(ANSWER_PREFIX)
        child.expect("\n")  # the answer is streaming (this random model says newlines): ~2,000 tokens, seconds
        child.sendintr()
        child.expect_exact("[stopped]")
        child.expect_exact(USER_PROMPT)  # Ctrl-C stopped the answer, not the program
        child.sendline("/reset")
        child.expect_exact("(conversation cleared)")
        child.sendline("/help")
        child.expect("Commands:.*/params.*/reset.*/exit")
        child.sendline("/bogus")
        child.expect("unknown command /bogus")
        child.sendline("/exit")
        child.expect_exact("bye")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_ctrl_c_at_the_prompt_quits_cleanly(serve_model_dir: Path) -> None:
    child = spawn(serve_model_dir, "--max_new_tokens", "4")
    try:
        child.expect_exact(USER_PROMPT)
        child.sendintr()
        child.expect_exact("bye")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0 and "Traceback" not in (child.before or "")


def test_oldest_exchanges_are_dropped_to_fit_the_context(gen: TextGenerator) -> None:
    message_tokens = rendered_tokens(gen, [{"role": "user", "content": LONG_MESSAGE}])
    chat, out = session(gen, max_new_tokens=gen.context_length - message_tokens - 5)
    old = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "one"},
           {"role": "user", "content": "second"}, {"role": "assistant", "content": "two"}]
    chat.history = [*old, {"role": "user", "content": LONG_MESSAGE}]
    ids = chat.prompt_ids()
    assert chat.history == [{"role": "user", "content": LONG_MESSAGE}] and len(ids) == message_tokens
    assert "dropped the oldest 2 exchanges" in out.getvalue()


def test_a_message_longer_than_the_context_is_not_sent_and_drops_nothing(gen: TextGenerator) -> None:
    chat, out = session(gen)
    earlier = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    chat.history = list(earlier)
    chat.answer("fox " * 2000)
    assert chat.history == earlier and "not sent" in out.getvalue() and "Shorten it" in out.getvalue()


class RecordingGenerator:
    """The generator, keeping the prompt of every answer it is asked for."""

    def __init__(self, gen: TextGenerator) -> None:
        self.gen = gen
        self.prompts: list[list[int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.gen, name)

    def stream(self, prompt_ids: list[int], params: GenerationParams) -> TextStream:
        self.prompts.append(list(prompt_ids))
        return self.gen.stream(prompt_ids, params)


def test_reset_then_a_question_sends_no_earlier_turn(gen: TextGenerator) -> None:
    recorder = RecordingGenerator(gen)
    chatml = get_template("chatml")
    chat = ChatSession(recorder, chatml, GenerationParams(max_new_tokens=4), seed=0, out=io.StringIO())
    chat.answer("My name is Ada.")
    chat.command("/reset")
    chat.answer("What is my name?")
    question = [{"role": "user", "content": "What is my name?"}]
    assert recorder.prompts[1] == gen.encode(chatml.render(question, add_generation_prompt=True))
    assert "Ada" in gen.tokenizer.decode(recorder.prompts[0]) and chat.history[:1] == question


def test_answers_join_the_history(gen: TextGenerator) -> None:
    chat, out = session(gen, max_new_tokens=6)
    chat.answer("Hello")
    assert [m["role"] for m in chat.history] == ["user", "assistant"]
    assert out.getvalue().startswith(ANSWER_PREFIX) and chat.history[1]["content"] in out.getvalue()


def test_params_command_sets_validates_and_keeps_values(gen: TextGenerator) -> None:
    chat, out = session(gen)
    chat.command("/params top_k=40 top_p=0.5 seed=random")
    assert chat.params.top_k == 40 and chat.params.top_p == 0.5 and chat.seed is None
    for bad in ("top_k=many", "top_p=0", "speed=3", "seed=-1"):
        chat.command(f"/params {bad}")
    assert chat.params.top_k == 40 and chat.params.top_p == 0.5 and out.getvalue().count("unchanged") == 4


@pytest.mark.parametrize("ending", [EOFError, KeyboardInterrupt])
def test_ctrl_d_and_ctrl_c_at_the_prompt_end_the_loop(gen: TextGenerator, ending: type[BaseException]) -> None:
    chat, out = session(gen)

    def read(_: str) -> str:
        raise ending

    chat_loop(chat, read)
    assert out.getvalue().strip().endswith("bye")
