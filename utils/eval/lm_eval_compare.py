"""Agreement check: lm-evaluation-harness and our scorer on the same local files and the same model, item by item.

lm-eval (optional: `make install-extra`) runs offline only through custom YAML tasks (`dataset_path: json` with
`data_files`), written here into a temporary include directory. The YAMLs copy the built-in tasks' prompts
(arc_easy/arc_challenge, super_glue boolq, hellaswag). One difference is unavoidable: the shared HellaSwag file
keeps only the joined `ctx`, so its `ctx_a`/`ctx_b` split is rebuilt with our `split_ctx` before lm-eval's own
`process_docs`/`preprocess` run; everything after that — preprocessing, tokenization, batching, log-likelihoods,
metrics — is lm-eval's.
"""

from __future__ import annotations

import logging
import math
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.core.errors import ConfigError
from utils.eval.tasks import TASKS, load_task, resolve_local_file
from utils.lm.scoring import LoglikelihoodScorer, aggregate, score_multiple_choice

log = logging.getLogger(__name__)

ARC_PROMPT = '''
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_target: "{{choices.label.index(answerKey)}}"
doc_to_choice: "{{choices.text}}"
'''
BOOLQ_PROMPT = '''
doc_to_text: "{{passage}}\\nQuestion: {{question}}?\\nAnswer:"
doc_to_target: "{{ (label if label is defined else answer) | int }}"
doc_to_choice: ["no", "yes"]
'''
HELLASWAG_PROMPT = '''
process_docs: !function lumi_lmeval_docs.process_hellaswag
doc_to_text: "{{query}}"
doc_to_target: "{{label}}"
doc_to_choice: "choices"
'''
PROMPTS = {"arc_easy": ARC_PROMPT, "arc_challenge": ARC_PROMPT, "boolq": BOOLQ_PROMPT,
           "hellaswag": HELLASWAG_PROMPT, "demo_mc": HELLASWAG_PROMPT}
DOCS_MODULE = '''
"""process_docs for local HellaSwag-format files: rebuild ctx_a/ctx_b if needed, then lm-eval's own code."""
from lm_eval.tasks.hellaswag.utils import process_docs as lm_eval_process_docs

from utils.eval.tasks import split_ctx


def process_hellaswag(dataset):
    def split(doc):
        if doc.get("ctx_a") is None or doc.get("ctx_b") is None:
            doc["ctx_a"], doc["ctx_b"] = split_ctx(doc["ctx"])
        doc["label"] = int(doc["label"])
        return doc
    return lm_eval_process_docs(dataset.map(split))
'''


@dataclass
class TaskAgreement:
    task: str
    items: int
    agreement: float  # share of items with the same argmax prediction
    norm_agreement: float
    acc_ours: float
    acc_lm_eval: float
    acc_norm_ours: float
    acc_norm_lm_eval: float
    max_ll_difference: float


def _write_task(include: Path, task: str, data_file: Path) -> str:
    name = f"lumi_{task}"
    spec = TASKS[task]
    yaml = textwrap.dedent(f"""
        task: {name}
        dataset_path: json
        dataset_kwargs:
          data_files:
            {spec.split}: {data_file}
        output_type: multiple_choice
        test_split: {spec.split}
        metric_list:
          - metric: acc
          - metric: acc_norm
        """) + textwrap.dedent(PROMPTS[task])
    (include / f"{name}.yaml").write_text(yaml)
    return name


def _lm_eval_predictions(model: Any, tokenizer: Any, files: dict[str, Path], limit: int | None,
                         batch_size: int) -> dict[str, list[list[float]]]:
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise ConfigError("lm-evaluation-harness is not installed: run make install-extra") from exc
    with tempfile.TemporaryDirectory() as tmp:
        include = Path(tmp)
        (include / "lumi_lmeval_docs.py").write_text(DOCS_MODULE)
        names = {task: _write_task(include, task, path) for task, path in files.items()}
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
        output = simple_evaluate(model=lm, tasks=list(names.values()), limit=limit, log_samples=True,
                                 bootstrap_iters=0, task_manager=TaskManager(include_path=str(include)))
    predictions = {}
    for task, name in names.items():
        samples = sorted(output["samples"][name], key=lambda s: s["doc_id"])
        predictions[task] = [[float(resp[0]) for resp in s["filtered_resps"]] for s in samples]
    return predictions


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def compare(model: Any, tokenizer: Any, data_dir: Path, tasks: list[str], limit: int | None,
            batch_size: int) -> list[TaskAgreement]:
    files = {task: resolve_local_file(data_dir, TASKS[task].local_patterns, TASKS[task].display_name,
                                      "--data_dir DIR") for task in tasks}
    theirs = _lm_eval_predictions(model, tokenizer, files, limit, batch_size)
    scorer = LoglikelihoodScorer(model, tokenizer, batch_size=batch_size)
    report = []
    for task in tasks:
        items = load_task(task, files[task], limit)
        ours = score_multiple_choice(items, scorer)
        other = theirs[task]
        if len(other) != len(ours):
            raise ConfigError(f"{task}: lm-eval scored {len(other)} items, we scored {len(ours)}")
        norm_theirs = [_argmax([ll / len(c) for ll, c in zip(lls, item.choices)]) for lls, item in zip(other, items)]
        acc_theirs = sum(_argmax(lls) == r.gold for lls, r in zip(other, ours)) / len(ours)
        acc_norm_theirs = sum(p == r.gold for p, r in zip(norm_theirs, ours)) / len(ours)
        ours_metrics = aggregate(ours)
        report.append(TaskAgreement(
            task=task, items=len(ours),
            agreement=sum(_argmax(lls) == r.pred for lls, r in zip(other, ours)) / len(ours),
            norm_agreement=sum(p == r.pred_norm for p, r in zip(norm_theirs, ours)) / len(ours),
            acc_ours=ours_metrics["acc"], acc_lm_eval=acc_theirs, acc_norm_ours=ours_metrics["acc_norm"],
            acc_norm_lm_eval=acc_norm_theirs,
            max_ll_difference=max((abs(a - b) for lls, r in zip(other, ours) for a, b in zip(lls, r.lls)
                                   if math.isfinite(a) and math.isfinite(b)), default=0.0)))
    return report
