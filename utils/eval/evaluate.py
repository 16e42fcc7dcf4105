"""Stage 05: zero-shot benchmarks scored as lm-evaluation-harness scores them, smoke prompts, assessment, report.

Outputs in evaluation_results/<run>/: results.json (metrics with n and stderr, model path, tokenizer sha,
checkpoint meta, timing), <task>.jsonl per-item predictions, smoke.jsonl, report.md, config.resolved.json.
Everything is deterministic (greedy smoke generation, fixed item order), so a second run gives identical results.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.core.artifacts import atomic_directory, read_json, write_json
from utils.core.config import save_resolved_config
from utils.core.errors import DataError
from utils.core.hub import check_available, mirror_root
from utils.eval.assessment import load_expectations, render_assessment
from utils.eval.quality import WEIGHTS, assess_response
from utils.eval.tasks import TASKS, baseline_accuracy, load_task, task_dataset
from utils.eval.wikitext import load_wikitext_documents
from utils.lm.generation import GenerationParams, generate_ids
from utils.lm.loading import LoadedModel, load_model
from utils.lm.perplexity import rolling_loglikelihood
from utils.lm.scoring import LoglikelihoodScorer, aggregate, score_multiple_choice
from utils.lm.templates import TEMPLATES, PromptTemplate, get_template

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
SMOKE_PROMPTS = REPO_ROOT / "evaluation" / "smoke_prompts.json"
QUICK_PROMPTS = REPO_ROOT / "evaluation" / "quick_prompts.json"
ALL_TASKS = ("wikitext", *TASKS, "smoke")
FAST_MODE_LIMIT = 200
CHAT_STAGES = ("sft", "dpo")


@dataclass
class EvalConfig:
    model_path: str = "checkpoints/pretrain/tiny/final"
    output_dir: str = "evaluation_results"
    run_name: str | None = None  # default: derived from the model path
    tasks: list[str] = field(default_factory=lambda: list(ALL_TASKS))
    data_dir: str | None = None
    hellaswag_path: str | None = None
    arc_easy_path: str | None = None
    arc_challenge_path: str | None = None
    boolq_path: str | None = None
    demo_mc_path: str | None = None
    wikitext_path: str | None = None
    limit: int | None = None
    max_boolq_samples: int | None = None
    batch_size: int = 16
    fast_mode: bool = False
    skip_perplexity: bool = False
    detailed_output: bool = False
    custom_prompts: str | None = None
    template: str = "auto"  # auto: chatml for SFT/DPO models, plain text otherwise; none; or a template name
    max_new_tokens: int = 64
    device: str = "auto"

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in ALL_TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; choose from {', '.join(ALL_TASKS)}")
        if self.template not in ("auto", "none", *TEMPLATES):
            raise ValueError(f"unknown template '{self.template}'; choose auto, none, {', '.join(TEMPLATES)}")


def _device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def _task_path(config: EvalConfig, task: str, loaded: LoadedModel) -> Path | None:
    """--<task>_path, else (demo_mc) the set that travels with the model's dataset, else --data_dir, else the hub."""
    explicit = getattr(config, f"{task}_path")
    if explicit:
        return Path(explicit)
    if task == "demo_mc":
        dataset = loaded.meta.get("dataset")
        if dataset and (Path(dataset) / "demo" / "mc_validation.jsonl").is_file():
            return Path(dataset) / "demo" / "mc_validation.jsonl"
    data_dir = _data_dir(config)
    if data_dir:
        wikitext_dir = data_dir / "wikitext-2"
        return wikitext_dir if task == "wikitext" and wikitext_dir.is_dir() else data_dir
    return None


def _data_dir(config: EvalConfig) -> Path | None:
    """--data_dir, else the LUMI_DATA_DIR mirror, else None (the hub)."""
    return Path(config.data_dir) if config.data_dir else mirror_root()


def check_task_data(config: EvalConfig) -> None:
    """Before the model loads: every public dataset the tasks need can be had, or one error naming them all."""
    needed = []
    for task in config.tasks:
        dataset = task_dataset(task) if task in TASKS or task == "wikitext" else None
        if dataset is None or getattr(config, f"{task}_path") or (task == "wikitext" and config.skip_perplexity):
            continue
        needed.append(dataset)
    try:
        check_available(needed, _data_dir(config))
    except DataError as exc:
        raise DataError(f"{exc}\nOr pass local files with --data_dir DIR or --<task>_path FILE.") from exc


def _limit(config: EvalConfig, task: str) -> int | None:
    limits = [config.limit, FAST_MODE_LIMIT if config.fast_mode else None,
              config.max_boolq_samples if task == "boolq" else None]
    limits = [x for x in limits if x is not None]
    return min(limits) if limits else None


def run_multiple_choice(task: str, config: EvalConfig, scorer: LoglikelihoodScorer, loaded: LoadedModel,
                        out: Path) -> dict[str, Any]:
    items = load_task(task, _task_path(config, task, loaded), _limit(config, task))
    start = time.perf_counter()
    results = score_multiple_choice(items, scorer)
    seconds = time.perf_counter() - start
    metrics = aggregate(results)
    metrics.update(baseline=baseline_accuracy(task, items), seconds=round(seconds, 3),
                   items_per_s=round(len(items) / seconds, 2) if seconds else None)
    if task == "boolq":
        metrics["majority_baseline"] = metrics["baseline"]
    with (out / f"{task}.jsonl").open("w") as fh:
        for item, result in zip(items, results):
            fh.write(json.dumps({"id": item.id, "gold": result.gold, "pred": result.pred,
                                 "pred_norm": result.pred_norm, "lls": result.lls}) + "\n")
    log.info("%s: acc %.4f ± %.4f, acc_norm %.4f (n=%d, baseline %.4f, %.1f items/s)", task, metrics["acc"],
             metrics["acc_stderr"] or 0.0, metrics["acc_norm"], metrics["n"], metrics["baseline"],
             metrics["items_per_s"] or 0.0)
    return metrics


def run_perplexity(config: EvalConfig, scorer: LoglikelihoodScorer, loaded: LoadedModel) -> dict[str, Any]:
    path = _task_path(config, "wikitext", loaded)
    documents = load_wikitext_documents(path)
    if config.limit is not None or config.fast_mode:
        documents = documents[: _limit(config, "wikitext")]
    start = time.perf_counter()
    result = rolling_loglikelihood(scorer, documents)
    seconds = time.perf_counter() - start
    metrics = {"token_perplexity": result.token_perplexity, "word_perplexity": result.word_perplexity,
               "byte_perplexity": result.byte_perplexity, "bits_per_byte": result.bits_per_byte,
               "documents": len(documents), "tokens": sum(result.tokens), "source": str(path or "hub"),
               "seconds": round(seconds, 3)}
    log.info("wikitext: word ppl %.2f, byte ppl %.4f, bits/byte %.4f (%d documents)", metrics["word_perplexity"],
             metrics["byte_perplexity"], metrics["bits_per_byte"], len(documents))
    return metrics


def _smoke_template(config: EvalConfig, loaded: LoadedModel) -> PromptTemplate | None:
    """The template smoke prompts are wrapped in: a fine-tuned model's own, a forced one, or none (raw text)."""
    if config.template == "none":
        return None
    if config.template != "auto":
        return get_template(config.template)
    if loaded.meta.get("stage") in CHAT_STAGES:
        return get_template(loaded.meta.get("template", "chatml"))
    return None


def _load_prompts(config: EvalConfig) -> dict[str, list[dict[str, Any]]]:
    path = Path(config.custom_prompts) if config.custom_prompts else (QUICK_PROMPTS if config.fast_mode
                                                                       else SMOKE_PROMPTS)
    if not path.is_file():
        raise DataError(f"prompt file not found: {path}")
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("categories"), dict):
        raise DataError(f"{path}: expected {{\"categories\": {{name: [{{\"prompt\": ...}}, ...]}}}}")
    return data["categories"]


def run_smoke(config: EvalConfig, loaded: LoadedModel, out: Path) -> dict[str, Any]:
    tokenizer = loaded.tokenizer
    template = _smoke_template(config, loaded)
    params = GenerationParams(max_new_tokens=config.max_new_tokens, temperature=0.0, repetition_penalty=1.1)
    categories: dict[str, Any] = {}
    records = []
    for category, prompts in _load_prompts(config).items():
        scores = []
        for entry in prompts:
            prompt = entry["prompt"]
            text = template.render([{"role": "user", "content": prompt}], add_generation_prompt=True) \
                if template else prompt
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            new = generate_ids(loaded.model, ids, params, tokenizer.eos_token_id, tokenizer.pad_token_id)
            response = tokenizer.decode(new, skip_special_tokens=True).strip()
            signals = assess_response(prompt, response, entry.get("min_words", 5), entry.get("max_words", 200))
            scores.append(signals.score)
            records.append({"category": category, "prompt": prompt, "response": response,
                            "score": round(signals.score, 4), "signals": dataclasses.asdict(signals)})
        categories[category] = {"mean_score": sum(scores) / len(scores), "n": len(scores)}
    with (out / "smoke.jsonl").open("w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    mean_signals = {name: sum(r["signals"][name] for r in records) / len(records) for name in WEIGHTS}
    mean = sum(r["score"] for r in records) / len(records)
    name = template.name if template else "none"
    log.info("smoke prompts: mean quality %.3f over %d prompts (template: %s)", mean, len(records), name)
    return {"mean_score": mean, "mean_signals": mean_signals, "categories": categories, "template": name,
            "responses": records}


def _model_record(loaded: LoadedModel) -> dict[str, Any]:
    tokenizer_model = loaded.path / "tokenizer.model"
    if not tokenizer_model.is_file() and loaded.base_path is not None:
        tokenizer_model = loaded.base_path / "tokenizer.model"
    sha = hashlib.sha256(tokenizer_model.read_bytes()).hexdigest() if tokenizer_model.is_file() else None
    return {"path": str(loaded.path), "base_path": str(loaded.base_path) if loaded.base_path else None,
            "params_total": loaded.params_total, "tokenizer_sha256": sha, "checkpoint_meta": loaded.meta}


def evaluate_model(config: EvalConfig) -> Path:
    """Run the configured tasks and write evaluation_results/<run>/; returns that directory."""
    model_path = Path(config.model_path)
    run_name = config.run_name or "-".join(model_path.resolve().parts[-2:])
    out_dir = Path(config.output_dir) / run_name
    check_task_data(config)
    loaded = load_model(model_path, device=_device(config.device))
    scorer = LoglikelihoodScorer(loaded.model, loaded.tokenizer, batch_size=config.batch_size)
    started = time.perf_counter()
    with atomic_directory(out_dir) as out:
        tasks: dict[str, Any] = {}
        for task in config.tasks:
            if task == "wikitext" and not config.skip_perplexity:
                tasks["wikitext"] = run_perplexity(config, scorer, loaded)
            elif task in TASKS:
                tasks[task] = run_multiple_choice(task, config, scorer, loaded, out)
        smoke = run_smoke(config, loaded, out) if "smoke" in config.tasks else None
        results = {"model": _model_record(loaded), "tasks": tasks,
                   "smoke": {k: v for k, v in smoke.items() if k != "responses"} if smoke else None,
                   "timing": {"seconds": round(time.perf_counter() - started, 2)},
                   "config": dataclasses.asdict(config)}
        write_json(out / "results.json", results)
        save_resolved_config(config, out)
        (out / "report.md").write_text(render_report(results, smoke, config.detailed_output), encoding="utf-8")
    log.info("results in %s (report.md, results.json)", out_dir)
    log.info("next: python scripts/assess_performance.py %s   or   python scripts/06_serve.py --model_path %s",
             out_dir / "results.json", model_path)
    return out_dir


def render_report(results: dict[str, Any], smoke: dict[str, Any] | None, detailed: bool) -> str:
    model = results["model"]
    lines = [f"# Evaluation of `{model['path']}`", "",
             f"{model['params_total']:,} parameters; tokenizer sha256 `{str(model['tokenizer_sha256'])[:16]}`; "
             f"step {model['checkpoint_meta'].get('step', 'n/a')}, "
             f"{model['checkpoint_meta'].get('tokens_seen', 'n/a')} tokens seen. Zero-shot, scored as "
             f"lm-evaluation-harness 0.4.13 scores them.", "",
             "| task | n | acc | acc_norm | baseline | items/s |", "|---|---:|---:|---:|---:|---:|"]
    for name, m in results["tasks"].items():
        if name == "wikitext":
            continue
        lines.append(f"| {TASKS[name].display_name} | {m['n']} | {_pct(m['acc'], m['acc_stderr'])} | "
                     f"{_pct(m['acc_norm'], m['acc_norm_stderr'])} | {100 * m['baseline']:.1f} | {m['items_per_s']} |")
    wiki = results["tasks"].get("wikitext")
    if wiki:
        lines += ["", f"**WikiText** ({wiki['documents']} documents, {wiki['source']}): word perplexity "
                      f"{wiki['word_perplexity']:.2f}, byte perplexity {wiki['byte_perplexity']:.4f}, bits per byte "
                      f"{wiki['bits_per_byte']:.4f}, token perplexity {wiki['token_perplexity']:.2f}."]
    if smoke:
        lines += ["", "## Smoke prompts", "", f"Mean heuristic quality {smoke['mean_score']:.3f} (0-1; see "
                  "utils/eval/quality.py for what it measures and cannot judge).", "", "| category | mean score |",
                  "|---|---:|"]
        lines += [f"| {c} | {v['mean_score']:.3f} |" for c, v in smoke["categories"].items()]
        shown = smoke["responses"] if detailed else smoke["responses"][:3]
        lines += ["", "### Responses" + ("" if detailed else " (first three; --detailed_output shows all)"), ""]
        for r in shown:
            lines += [f"**[{r['category']}] {r['prompt']}** (score {r['score']:.2f})", "",
                      "> " + (r["response"].replace("\n", "\n> ") or "(empty)"), ""]
    lines += ["", render_assessment(results, load_expectations())]
    return "\n".join(lines) + "\n"


def _pct(value: float | None, stderr: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.1f} ± {100 * stderr:.1f}" if stderr is not None else f"{100 * value:.1f}"
