"""The assessment rules: size classes, verdicts against expected ranges, recommendations."""

from __future__ import annotations

from utils.eval.assessment import load_expectations, recommendations, render_assessment, size_class, verdicts


def _results(params: int, **tasks: dict) -> dict:
    return {"model": {"params_total": params, "checkpoint_meta": {"tokens_seen": 1_000_000}}, "tasks": tasks,
            "smoke": {"mean_score": 0.3, "mean_signals": {"repetition": 0.4}}}


def test_size_classes_and_verdicts() -> None:
    expectations = load_expectations()
    assert size_class(3_500_000, expectations)["name"] == "tiny"
    assert size_class(124_000_000, expectations)["name"] == "base"
    results = _results(124_000_000, hellaswag={"acc_norm": 0.311}, arc_challenge={"acc_norm": 0.15},
                       wikitext={"word_perplexity": 500.0})
    found = {v.metric: v.verdict for v in verdicts(results, expectations)}
    assert found == {"hellaswag.acc_norm": "as expected", "arc_challenge.acc_norm": "below expected",
                     "wikitext.word_perplexity": "worse than expected"}


def test_recommendations_name_the_fix() -> None:
    expectations = load_expectations()
    results = _results(124_000_000, wikitext={"word_perplexity": 500.0}, boolq={"acc": 0.4, "majority_baseline": 0.62})
    advice = " ".join(recommendations(results, verdicts(results, expectations)))
    assert "train longer" in advice and "prepare-wt103" in advice and "majority-class baseline" in advice
    assert "--repetition_penalty" in advice and "SFT" in advice
    assert "| wikitext.word_perplexity | 500.00 | 25-80 | worse than expected |" in render_assessment(results, expectations)
