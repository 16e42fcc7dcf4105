"""Stage 01's datatrove engine: the same output as the local engine, resume after a kill, the memory budget."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import story_texts
from utils.core.errors import ConfigError, DataError
from utils.data.config import DataConfig
from utils.data.engine import contiguous_groups, work_directory
from utils.data.prepare import prepare_dataset

REPO = Path(__file__).resolve().parents[2]
FILES = 4
KILL_MARKER = "Quillfeatherwick"  # a word in a document of the third file: the killed run dies reading it
# A budget the local engine's index outgrows on the budget corpus (~1,300 documents x 17 keys x 8 B, held twice
# while merging) but that fits one datatrove key chunk of a few hundred documents per worker.
SMALL_BUDGET_GB = 200_000 / 2**30
TINY_BUDGET_GB = 80_000 / 2**30  # key chunks of the fewest documents the engine allows (256)


def _near_copy(text: str, word: str) -> str:
    words = text.split()
    words[len(words) // 2] = word
    return " ".join(words)


def _write_corpus(folder: Path, stories: int, marker: bool = False) -> Path:
    """Stories spread over FILES JSONL files, with exact copies, near copies and near copies of near copies
    (A ~ B ~ C), some within a file and some across files."""
    texts = story_texts(stories)
    documents: list[str] = []
    for index, text in enumerate(texts):
        documents.append(text)
        if index % 9 == 0:
            documents.append(text)
        if index % 7 == 0:
            documents.append(_near_copy(text, "zebra"))
        if index % 21 == 0:
            documents.append(_near_copy(_near_copy(text, "zebra"), "walrus").replace(" the ", " a ", 1))
        if index % 5 == 0 and index >= 10:
            documents.append(_near_copy(texts[index - 10], "otter"))  # a copy of an earlier file's story
    if marker:
        at = 2 * len(documents) // FILES + 3 * len(documents) // (4 * FILES)  # 3/4 into the third file
        documents[at] = f"{KILL_MARKER} {documents[at]}"
    folder.mkdir(parents=True, exist_ok=True)
    size = -(-len(documents) // FILES)
    for part in range(FILES):
        lines = [json.dumps({"text": d}) + "\n" for d in documents[part * size:(part + 1) * size]]
        (folder / f"part{part}.jsonl").write_text("".join(lines), encoding="utf-8")
    return folder


def _config(corpus: Path, out: Path, **overrides) -> DataConfig:
    values = dict(name="corpus", source="local", input_path=str(corpus), vocab_size=400, num_workers=0,
                  output_dir=str(out), batch_documents=16)
    values.update(overrides)
    return DataConfig(**values)


def _outputs(out: Path) -> dict[str, bytes]:
    """What must be byte-identical: the shards, the manifest and the tokenizer."""
    files = sorted(out.glob("*.bin")) + [out / "manifest.json"] + sorted((out / "tokenizer").iterdir())
    return {str(path.relative_to(out)): path.read_bytes() for path in files}


def _card_without_engine_and_timing(out: Path) -> str:
    card = (out / "DATA_CARD.md").read_text(encoding="utf-8").split("## Timing")[0]
    return "\n".join(line for line in card.splitlines() if not line.startswith("- Engine:"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_corpus(tmp_path_factory.mktemp("engine") / "raw", 400)


@pytest.fixture(scope="module")
def local_output(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_dataset(_config(corpus, tmp_path_factory.mktemp("local")))


@pytest.mark.parametrize("workers", [0, 2])
def test_both_engines_keep_the_same_documents_and_write_the_same_shards(corpus: Path, local_output: Path,
                                                                         tmp_path: Path, workers: int) -> None:
    out = prepare_dataset(_config(corpus, tmp_path, engine="datatrove", tasks=FILES, num_workers=workers))
    assert _outputs(out) == _outputs(local_output)
    local, engine = (json.loads((o / "stats.json").read_text()) for o in (local_output, out))
    assert engine["documents"] == local["documents"] and engine["dropped"] == local["dropped"]
    assert local["dropped"]["exact_duplicate"] > 40 and local["dropped"]["near_duplicate"] > 80
    # The same drop examples, counts and processing notes; only the engine line and the timings differ.
    assert _card_without_engine_and_timing(out) == _card_without_engine_and_timing(local_output)
    assert engine["engine"]["name"] == "datatrove" and engine["engine"]["tasks"] == FILES
    assert local["engine"]["name"] == "local"
    assert "- Engine: datatrove, local executor: 4 filter task(s)" in (out / "DATA_CARD.md").read_text()
    assert not list(tmp_path.glob(".corpus.datatrove-*"))  # the working folder is gone once published


_KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, {repo!r})
import utils.data.engine_steps as steps
from utils.core.cli import parse_config
from utils.data.config import DataConfig
from utils.data.prepare import prepare_dataset

real = steps.clean_and_filter
def dies_at_the_marker(batch, options, keyer):
    if any({marker!r} in text for text in batch):
        os.killpg(0, signal.SIGKILL)  # the whole process tree at once, as a lost machine would
    return real(batch, options, keyer)
steps.clean_and_filter = dies_at_the_marker
prepare_dataset(parse_config(DataConfig, "", argv=sys.argv[1:]))
"""


def _args(config: DataConfig) -> list[str]:
    return ["--name", config.name, "--source", "local", "--input_path", config.input_path, "--vocab_size", "400",
            "--output_dir", config.output_dir, "--batch_documents", "16", "--engine", "datatrove",
            "--tasks", str(FILES), "--num_workers", "1", "--force"]


def test_a_run_killed_half_way_resumes_from_its_completed_tasks(tmp_path: Path) -> None:
    corpus = _write_corpus(tmp_path / "raw", 2400, marker=True)  # ~900 documents a file
    reference = prepare_dataset(_config(corpus, tmp_path / "reference"))
    config = _config(corpus, tmp_path / "processed")
    previous = _outputs(prepare_dataset(replace(config, min_chars=300)))  # an older output, to be replaced
    script = _KILLED_RUN.format(repo=str(REPO), marker=KILL_MARKER)
    killed = subprocess.run([sys.executable, "-c", script, *_args(config), "--memory_budget_gb", str(TINY_BUDGET_GB)],
                            cwd=REPO, capture_output=True,
                            text=True, timeout=300, start_new_session=True)
    assert killed.returncode == -9, killed.stderr[-3000:]
    out = Path(config.output_dir) / config.name
    assert _outputs(out) == previous  # the published output is replaced only when complete
    work = next(Path(config.output_dir).glob(".corpus.datatrove-*"))
    assert sorted(p.name for p in (work / "logs" / "filter" / "completions").iterdir()) == ["00000", "00001"]
    assert len(list((work / "keys" / "bucket_000").glob("00002*"))) >= 2  # the killed task had flushed chunks

    # The rerun holds all of a task's keys in one chunk (the default budget): the killed task's chunks must go.
    resumed = subprocess.run([sys.executable, "scripts/01_prepare_data.py", *_args(config)], cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "datatrove step filter: 2 of 4 task(s) completed by an earlier run, skipped" in resumed.stderr
    assert _outputs(out) == _outputs(reference)
    assert not work.exists()  # removed once the output is published


def test_a_resume_with_another_task_split_is_refused(tmp_path: Path, corpus: Path) -> None:
    config = _config(corpus, tmp_path, engine="datatrove", tasks=FILES)
    work = work_directory(config, "0" * 64)
    work.mkdir(parents=True)
    (work / "plan.json").write_text(json.dumps({"units": [[str(corpus / "part0.jsonl")]]}))
    from utils.data.engine import run_datatrove

    with pytest.raises(DataError, match=r"split into 1 task\(s\).*--tasks 1"):
        run_datatrove(config, sorted(corpus.glob("*.jsonl")), tmp_path / "spool", "0" * 64)
    moved = [[str(tmp_path / "elsewhere" / f"part{part}.jsonl")] for part in range(FILES)]
    (work / "plan.json").write_text(json.dumps({"units": moved}))
    with pytest.raises(DataError, match="read its input from other paths"):
        run_datatrove(config, sorted(corpus.glob("*.jsonl")), tmp_path / "spool", "0" * 64)


def test_a_demo_run_starts_over_its_regenerated_input(tmp_path: Path) -> None:
    config = DataConfig(source="demo", output_dir=str(tmp_path), engine="datatrove", num_workers=0,
                        demo_num_stories=300, vocab_size=400)
    out = prepare_dataset(config)
    stale = tmp_path / f".{config.name}.datatrove-{json.loads((out / 'meta.json').read_text())['fingerprint'][:12]}"
    stale.mkdir()
    (stale / "plan.json").write_text(json.dumps({"units": [["/gone/stories.jsonl"]]}))
    (stale / "logs" / "filter" / "completions").mkdir(parents=True)
    (stale / "logs" / "filter" / "completions" / "00000").touch()  # a task of the old input, not to be skipped
    again = prepare_dataset(replace(config, force=True))
    assert _outputs(again) == _outputs(out) and not stale.exists()


def test_the_memory_budget_stops_the_local_engine_and_bounds_the_datatrove_engine(tmp_path: Path,
                                                                                  caplog) -> None:
    corpus = _write_corpus(tmp_path / "raw", 1000)
    config = _config(corpus, tmp_path / "processed", memory_budget_gb=SMALL_BUDGET_GB, num_workers=2)
    with pytest.raises(DataError, match="past --memory_budget_gb.*--engine datatrove"):
        prepare_dataset(config)
    assert not list(Path(config.output_dir).iterdir())  # nothing written, no temporary folder left
    with caplog.at_level(logging.INFO):
        out = prepare_dataset(replace(config, engine="datatrove"))
    engine = json.loads((out / "stats.json").read_text())["engine"]
    budget = SMALL_BUDGET_GB * 2**30
    assert engine["key_chunks"] >= 2 * FILES  # each task flushed its keys at least twice
    assert 0 < engine["peak_key_bytes_per_task"] <= budget / 2  # two tasks at a time
    unbounded = prepare_dataset(replace(config, memory_budget_gb=None, output_dir=str(tmp_path / "unbounded")))
    assert _outputs(out) == _outputs(unbounded)


def test_contiguous_groups_keep_input_order_and_balance_bytes(tmp_path: Path) -> None:
    files = []
    for index, size in enumerate([10, 10, 10, 10, 40, 5, 5, 10]):
        files.append(tmp_path / f"f{index}.txt")
        files[-1].write_text("x" * size)
    groups = contiguous_groups(files, 3)
    assert [p for group in groups for p in group] == [str(p) for p in files]
    assert len(groups) == 3 and all(groups)
    assert contiguous_groups(files[:2], 5) == [[str(files[0])], [str(files[1])]]


def test_max_documents_needs_one_task(corpus: Path, tmp_path: Path) -> None:
    config = _config(corpus, tmp_path, engine="datatrove", tasks=2, max_documents=100)
    with pytest.raises(ConfigError, match="--tasks 1"):
        prepare_dataset(config)
    assert (prepare_dataset(replace(config, tasks=1)) / "manifest.json").is_file()
