"""Agreement with lm-evaluation-harness 0.4.13 itself: a tiny random model, the first few dozen items of each task
from the local data, the same prediction on every item and the same log-likelihoods. CI installs lm-eval
(`make install-extra`); elsewhere the test is skipped when lm-eval is not installed."""

from __future__ import annotations

from pathlib import Path

import pytest

from utils.eval.lm_eval_compare import compare
from utils.lm.loading import load_model

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (make install-extra)")
pytestmark = pytest.mark.usefixtures("one_cpu_thread")

TASKS = ["hellaswag", "arc_easy", "arc_challenge", "boolq"]
ITEMS = 24  # per task


@pytest.mark.slow
def test_every_item_is_predicted_as_lm_eval_predicts_it(serve_model_dir: Path, shared_data: Path) -> None:
    loaded = load_model(serve_model_dir)
    report = compare(loaded.model, loaded.tokenizer, shared_data, TASKS, ITEMS, batch_size=8)
    assert [task.task for task in report] == TASKS
    for task in report:
        assert task.items == ITEMS
        assert (task.agreement, task.norm_agreement) == (1.0, 1.0), task  # the same argmax on every item
        assert (task.acc_ours, task.acc_norm_ours) == (task.acc_lm_eval, task.acc_norm_lm_eval), task
        assert task.max_ll_difference < 1e-4, task  # per choice, in nats
