"""Verdicts on evaluation results against published expectations for the model's size class, with advice.

`evaluation/evaluation_config.json` holds, per size class, the expected range of each metric (percent for
accuracies, raw for perplexities). A metric below its range gets "below expected", inside "as expected", above
"above expected" (for perplexity, lower is better, so the directions swap). Recommendations are rules over those
verdicts and the smoke-prompt signals; each says what to change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.core.artifacts import read_json
from utils.core.errors import ConfigError

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "evaluation" / "evaluation_config.json"
LOWER_IS_BETTER = ("perplexity", "bits_per_byte")
LOW_SMOKE_SCORE = 0.5
LOW_REPETITION_SIGNAL = 0.6
TOKENS_PER_PARAM = 20  # Chinchilla's compute-optimal ratio


@dataclass(frozen=True)
class Verdict:
    metric: str
    value: float
    low: float
    high: float
    verdict: str


def load_expectations(path: Path = DEFAULT_CONFIG) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"evaluation config not found: {path}")
    return read_json(path)


def size_class(params_total: int, expectations: dict[str, Any]) -> dict[str, Any]:
    classes = sorted(expectations["size_classes"], key=lambda c: c["max_params_millions"])
    for entry in classes:
        if params_total / 1e6 <= entry["max_params_millions"]:
            return entry
    return classes[-1]


def _metric_value(results: dict[str, Any], metric: str) -> float | None:
    task, name = metric.split(".", 1)
    value = results.get("tasks", {}).get(task, {}).get(name)
    if value is None:
        return None
    return value if any(k in name for k in LOWER_IS_BETTER) else 100.0 * value  # accuracies in percent


def verdicts(results: dict[str, Any], expectations: dict[str, Any]) -> list[Verdict]:
    found = []
    for metric, (low, high) in size_class(results["model"]["params_total"], expectations)["ranges"].items():
        value = _metric_value(results, metric)
        if value is None:
            continue
        lower_better = any(k in metric for k in LOWER_IS_BETTER)
        if value < low:
            verdict = "better than expected" if lower_better else "below expected"
        elif value > high:
            verdict = "worse than expected" if lower_better else "above expected"
        else:
            verdict = "as expected"
        found.append(Verdict(metric, value, low, high, verdict))
    return found


def recommendations(results: dict[str, Any], found: list[Verdict]) -> list[str]:
    advice = []
    params = results["model"]["params_total"]
    bad = {v.metric for v in found if v.verdict in ("below expected", "worse than expected")}
    tokens = (results["model"].get("checkpoint_meta") or {}).get("tokens_seen")
    if bad and tokens is not None and tokens < TOKENS_PER_PARAM * params:
        advice.append(f"The model saw {tokens:,} tokens, under the compute-optimal ~{TOKENS_PER_PARAM * params:,} "
                      f"({TOKENS_PER_PARAM} per parameter): train longer (--max_steps) or on more data.")
    if "demo_mc.acc" in bad:
        advice.append("The demo multiple-choice set is below range: pretraining on demo_tiny did not converge; "
                      "check loss.png and train more steps.")
    if any(m.startswith("wikitext") for m in bad):
        advice.append("WikiText perplexity is high: the pretraining data is far from Wikipedia prose. Prepare "
                      "wikitext103, wikipedia_en or fineweb_edu (make prepare-wt103 / prepare-wiki).")
    boolq = results.get("tasks", {}).get("boolq")
    if boolq and boolq.get("acc") is not None and boolq["acc"] < boolq.get("majority_baseline", 0.0):
        advice.append("BoolQ is below its majority-class baseline: at this scale that reflects a bias toward "
                      "' no', not comprehension; do not read it as a reasoning score.")
    smoke = results.get("smoke") or {}
    if smoke.get("mean_score") is not None and smoke["mean_score"] < LOW_SMOKE_SCORE:
        signals = smoke.get("mean_signals", {})
        if signals.get("repetition", 1.0) < LOW_REPETITION_SIGNAL:
            advice.append("Responses loop: serve with --repetition_penalty 1.1-1.3 and train longer.")
        advice.append("Smoke responses score low: fine-tune with stage 03 (SFT) on instruction data so the model "
                      "answers in format.")
    if not advice:
        advice.append("Every assessed metric is where a model of this size should be; to move them, scale data "
                      "and parameters together (next preset up).")
    return advice


def render_assessment(results: dict[str, Any], expectations: dict[str, Any]) -> str:
    entry = size_class(results["model"]["params_total"], expectations)
    found = verdicts(results, expectations)
    lines = [f"## Assessment ({entry['name']} class: {entry['description']})", "",
             "| metric | value | expected | verdict |", "|---|---:|---:|---|"]
    lines += [f"| {v.metric} | {v.value:.2f} | {v.low:g}-{v.high:g} | {v.verdict} |" for v in found]
    if not found:
        lines.append("| (no metric with an expected range was evaluated) | | | |")
    lines += ["", "### Recommendations", ""] + [f"- {a}" for a in recommendations(results, found)]
    return "\n".join(lines) + "\n"
