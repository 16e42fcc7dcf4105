"""Tests for utils/lm/scoring.py against hand-computed log-probabilities and lm-eval 0.4.13's rules.

Most tests use a bigram stub: the next-token logits are a fixed table row chosen by the current token, so every
expected loglikelihood is a sum of log_softmax(table row)[token] terms computed here with `math`. A real trained
tokenizer checks `_encode_pair`'s whitespace rule, and a tiny random LlamaForCausalLM checks that batching,
padding and truncation give what one unbatched forward per request gives.

    .venv/bin/python -m pytest -q tests/lm/test_scoring.py
"""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import story_texts
from utils.core.errors import DataError
from utils.lm.documents import MultipleChoiceItem
from utils.lm.model import ModelConfig, build_model
from utils.lm.scoring import ItemResult, LoglikelihoodScorer, aggregate, item_result, mean_stderr, score_multiple_choice
from utils.lm.tokenizer import load_tokenizer, train_tokenizer

BOS, EOS = 0, 1
CHARS = " :.Qabcdexyz"
VOCAB = 2 + len(CHARS)
STUB_MAX_POSITIONS = 64
SPECIAL_LOGIT = -6.0  # keeps BOS/EOS out of every argmax, so greedy continuations are plain text
TOLERANCE = 1e-5


class CharTokenizer:
    """One token per character; ids 0/1 are BOS/EOS and are never added (like Lumi's tokenizer)."""

    bos_token_id, eos_token_id = BOS, EOS

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [2 + CHARS.index(ch) for ch in text]

    def decode(self, ids: int | list[int]) -> str:
        ids = [ids] if isinstance(ids, int) else ids
        return "".join({BOS: "<s>", EOS: "</s>"}.get(i) or CHARS[i - 2] for i in ids)


TOK = CharTokenizer()


def _table() -> list[list[float]]:
    rng = random.Random(0)
    table = [[rng.uniform(-2.0, 2.0) for _ in range(VOCAB)] for _ in range(VOCAB)]
    for row in table:
        row[BOS] = row[EOS] = SPECIAL_LOGIT
    # Built so that length normalisation flips the choice after "Q:": " a" is likelier in total, but " bbbb"
    # spends little per extra character ("b" almost surely follows "b").
    space, colon, a, b = (TOK.encode(ch)[0] for ch in " :ab")
    table[colon] = [SPECIAL_LOGIT] * VOCAB
    table[colon][space] = 4.0
    table[space] = [0.0] * VOCAB
    table[space][a], table[space][b] = 2.0, 0.5
    table[b] = [0.0] * VOCAB
    table[b][b] = 9.0
    return table


TABLE = _table()


def logp(prev: int, nxt: int) -> float:
    row = TABLE[prev]
    return row[nxt] - math.log(sum(math.exp(v) for v in row))


def hand_ll(prev_text: str, continuation: str, prev_id: int | None = None) -> float:
    """Bigram loglikelihood of continuation after the last character of prev_text (or after prev_id)."""
    ids = TOK.encode(continuation)
    prev = prev_id if prev_id is not None else TOK.encode(prev_text)[-1]
    total = 0.0
    for token in ids:
        total += logp(prev, token)
        prev = token
    return total


class BigramStub(torch.nn.Module):
    """logits[b, t] = TABLE[input_ids[b, t]]; records what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(TABLE, dtype=torch.float32), requires_grad=False)
        self.config = SimpleNamespace(max_position_embeddings=STUB_MAX_POSITIONS)
        self.calls: list[torch.Tensor] = []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> SimpleNamespace:
        self.calls.append(input_ids.clone())
        return SimpleNamespace(logits=self.table[input_ids])


def stub_scorer(batch_size: int = 4, max_length: int | None = None) -> LoglikelihoodScorer:
    return LoglikelihoodScorer(BigramStub(), TOK, batch_size=batch_size, max_length=max_length)


MIXED_REQUESTS = [("Q:", " a"), ("Q:", " bbbb"), ("abc", "de"), ("x", "yzzyx"), ("Q: ", "abc"), ("dd", "."),
                  ("a.b.c", " xyz"), ("", "abc"), ("zz zz", " z"), ("Q:ab", "cdexyz. Q"), ("e", "e"),
                  ("y", " "), ("cab", "bac"), ("Qx:", ":x")]


def test_sums_equal_hand_computed_log_probs() -> None:
    results = stub_scorer().score(MIXED_REQUESTS)
    for (context, continuation), (ll, _) in zip(MIXED_REQUESTS, results, strict=True):
        stripped = context.rstrip()  # _encode_pair: the context's trailing space is scored with the continuation
        expected = hand_ll(stripped, context[len(stripped):] + continuation, prev_id=BOS if context == "" else None)
        assert ll == pytest.approx(expected, abs=TOLERANCE), (context, continuation)


def test_trailing_context_space_moves_to_continuation() -> None:
    scorer = stub_scorer()
    assert scorer.encode_pair("Q: ", "abc") == (TOK.encode("Q:"), TOK.encode(" abc"))
    # The space is scored as part of the continuation, conditioned on ":".
    (ll, _), = scorer.score([("Q: ", "abc")])
    assert ll == pytest.approx(hand_ll("Q:", " abc"), abs=TOLERANCE)


def test_empty_context_conditions_on_the_prefix_token() -> None:
    scorer = stub_scorer()
    assert scorer.prefix_token_id == BOS
    assert scorer.encode_pair("", "ab") == ([BOS], TOK.encode("ab"))


def _greedy_text(prev_char: str, steps: int) -> str:
    prev, out = TOK.encode(prev_char)[0], []
    for _ in range(steps):
        prev = max(range(VOCAB), key=TABLE[prev].__getitem__)
        out.append(TOK.decode(prev))
    return "".join(out)


def test_is_greedy_flags_argmax_continuations_only() -> None:
    greedy = _greedy_text("x", 4)
    wrong_last = greedy[:-1] + next(ch for ch in CHARS if ch != greedy[-1])
    (_, first), (_, second), (_, third) = stub_scorer().score([("x", greedy), ("x", wrong_last), ("Q:", " bbbb")])
    assert first is True and second is False
    assert third is False  # "a", not "b", is the argmax after " "


def test_acc_norm_divides_by_characters_without_the_delimiter() -> None:
    item = MultipleChoiceItem(id="0", context="ctx", choices=["a", "bbb"], gold=1)
    # ll / len(choice): -2/1 < -5.5/3, so "bbb" wins; dividing by len(" " + choice) would pick "a" (-1 > -1.375).
    result = item_result(item, [(-2.0, False), (-5.5, False)])
    assert (result.pred, result.pred_norm, result.correct, result.correct_norm) == (0, 1, False, True)


def test_acc_bytes_divides_by_utf8_bytes() -> None:
    item = MultipleChoiceItem(id="0", context="ctx", choices=["éé", "abc"], gold=0)
    # per character: -1.5 < -1.33 picks "abc"; per byte ("éé" is 4 bytes): -0.75 > -1.33 picks "éé".
    result = item_result(item, [(-3.0, False), (-4.0, False)])
    assert (result.pred_norm, result.pred_bytes, result.correct_bytes) == (1, 0, True)


def test_ties_go_to_the_first_choice_like_argmax() -> None:
    item = MultipleChoiceItem(id="0", context="ctx", choices=["ab", "cd"], gold=1)
    result = item_result(item, [(-1.0, False), (-1.0, False)])
    assert result.pred == result.pred_norm == result.pred_bytes == 0


def test_multiple_choice_end_to_end_where_acc_and_acc_norm_disagree() -> None:
    items = [MultipleChoiceItem(id="q", context="Q:", choices=["a", "bbbb"], gold=1)]
    (result,) = score_multiple_choice(items, stub_scorer())
    expected = [hand_ll("Q:", " a"), hand_ll("Q:", " bbbb")]
    assert result.lls == pytest.approx(expected, abs=TOLERANCE)
    assert expected[0] > expected[1] and expected[0] / 1 < expected[1] / 4  # the table does what it was built for
    assert (result.pred, result.pred_norm, result.correct, result.correct_norm) == (0, 1, False, True)


def test_batch_size_and_request_order_do_not_change_results() -> None:
    reference = stub_scorer(batch_size=1).score(MIXED_REQUESTS)
    batched_scorer = stub_scorer(batch_size=7)
    assert batched_scorer.score(MIXED_REQUESTS) == reference
    assert batched_scorer.stats.forward_passes == math.ceil(len(MIXED_REQUESTS) / 7)
    order = list(range(len(MIXED_REQUESTS)))
    random.Random(1).shuffle(order)
    shuffled = stub_scorer(batch_size=7).score([MIXED_REQUESTS[i] for i in order])
    assert [shuffled[order.index(i)] for i in range(len(MIXED_REQUESTS))] == reference


def test_batches_are_longest_first_and_right_padded() -> None:
    scorer = stub_scorer(batch_size=7)
    scorer.score(MIXED_REQUESTS)
    # Each model input is context + continuation without its last token, longest first, then zeros (lm-eval's pad).
    wholes = sorted((c + x for c, x in map(lambda r: scorer.encode_pair(*r), MIXED_REQUESTS)),
                    key=lambda tokens: (-len(tokens), tuple(tokens)))
    inputs = [whole[:-1] for whole in wholes]
    batches = [inputs[:7], inputs[7:]]
    assert len(scorer.model.calls) == len(batches)
    for call, batch in zip(scorer.model.calls, batches, strict=True):
        width = len(batch[0])
        assert call.tolist() == [tokens + [0] * (width - len(tokens)) for tokens in batch]


def test_left_truncation_keeps_the_last_max_length_plus_one_tokens() -> None:
    max_length = 6
    scorer = stub_scorer(max_length=max_length)
    context, continuation = "abcabcabcab", "ca"
    (ll, _), = scorer.score([(context, continuation)])
    whole = TOK.encode(context + continuation)
    (input_ids,) = scorer.model.calls
    assert input_ids[0].tolist() == whole[-(max_length + 1):-1]
    assert ll == pytest.approx(hand_ll(context, continuation), abs=TOLERANCE)


def test_continuation_longer_than_max_length_is_an_error() -> None:
    with pytest.raises(DataError, match="max_length"):
        stub_scorer(max_length=3).score([("a", "bcdab")])


def test_stderr_is_lm_eval_mean_stderr() -> None:
    def result(correct: bool) -> ItemResult:
        return ItemResult(id="", lls=[], is_greedy=[], pred=0, pred_norm=0, pred_bytes=0, gold=0, correct=correct,
                          correct_norm=True, correct_bytes=False)

    summary = aggregate([result(c) for c in (True, False, True, True)])
    # mean 0.75; sample variance (3 * 0.25^2 + 0.75^2) / 3 = 0.25; stderr sqrt(0.25) / sqrt(4) = 0.25
    assert summary["acc"] == 0.75 and summary["acc_stderr"] == pytest.approx(0.25)
    assert summary["acc_norm"] == 1.0 and summary["acc_norm_stderr"] == 0.0
    assert summary["acc_bytes"] == 0.0 and summary["n"] == 4
    assert mean_stderr([1.0]) is None  # lm-eval reports "N/A" for a single item


# ---------------------------------------------------------------- real tokenizer and model


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("tok")
    sample = root / "sample.txt"
    sample.write_text("\n".join(story_texts(200)) + "\n", encoding="utf-8")
    return load_tokenizer(train_tokenizer(sample, root / "tokenizer", vocab_size=400))


def test_encode_pair_whitespace_rule_with_a_real_tokenizer(tokenizer) -> None:
    scorer = LoglikelihoodScorer(BigramStub(), tokenizer, batch_size=1)
    context_enc, continuation_enc = scorer.encode_pair("Anna went to the ", "park.")
    assert context_enc == tokenizer.encode("Anna went to the")
    assert context_enc + continuation_enc == tokenizer.encode("Anna went to the park.")
    assert tokenizer.decode(continuation_enc) == " park."
    # Encoding the two strings apart would leave a lone "▁" in the context and "park" without its space.
    naive = tokenizer.encode("Anna went to the ")
    assert naive != context_enc and continuation_enc != tokenizer.encode("park.")
    assert scorer.prefix_token_id == tokenizer.bos_token_id
    assert scorer.tok_encode("Anna")[0] != tokenizer.bos_token_id  # Lumi's tokenizer adds no BOS


def _reference_ll(model, context_enc: list[int], continuation_enc: list[int], max_length: int) -> float:
    """Straightforward: one unpadded forward of the (left-truncated) sequence, gather the continuation."""
    whole = (context_enc + continuation_enc)[-(max_length + 1):]
    with torch.no_grad():
        logits = model(torch.tensor([whole[:-1]])).logits[0]
    log_probs = logits[-len(continuation_enc):].log_softmax(dim=-1)
    return float(log_probs.gather(1, torch.tensor(continuation_enc)[:, None]).sum())


def test_batched_scorer_equals_unbatched_forward_on_a_tiny_llama(tokenizer) -> None:
    torch.manual_seed(0)
    config = ModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         vocab_size=len(tokenizer), max_position_embeddings=64)
    model = build_model(config).eval()
    stories = story_texts(4, seed=3)
    requests = [("Anna went to the", " park."), ("Anna went to the", " zoo."), ("Anna went to the ", "museum"),
                ("", "Once upon a time"), (stories[0][:40], stories[0][40:60]), (stories[1], " The end."),
                ("Question: Who did Tom meet?\nAnswer:", " Lucy"), ("Question: Who did Tom meet?\nAnswer:", " no"),
                (stories[2][:200], stories[2][200:230]), ("Hi", "!"), (stories[3][:10], stories[3][10:90]),
                ("Tom", " gave the red ball to Emma.")]
    max_length = 48  # below the longest requests, so left truncation is exercised too
    scorer = LoglikelihoodScorer(model, tokenizer, batch_size=5, max_length=max_length)
    assert max(len(c) + len(x) for c, x in map(lambda r: scorer.encode_pair(*r), requests)) > max_length + 1
    results = scorer.score(requests)
    for (context, continuation), (ll, _) in zip(requests, results, strict=True):
        expected = _reference_ll(model, *scorer.encode_pair(context, continuation), max_length)
        assert ll == pytest.approx(expected, abs=1e-4), (context[:20], continuation)
    assert scorer.stats.forward_passes == math.ceil(len(requests) / 5)
    assert scorer.stats.requests_per_second > 0
