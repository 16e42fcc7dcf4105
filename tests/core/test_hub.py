"""The hub path, run as a user runs it online: stages load datasets by hub id from a loopback Hugging Face Hub
(tests/fake_hub.py), then rerun offline from the Hugging Face cache; the mirror switch and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PREPARE = [sys.executable, "scripts/01_prepare_data.py"]
SMALL = ["--vocab_size", "400", "--num_workers", "0", "--max_length", "128"]


def run(args: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def offline(env: dict[str, str]) -> dict[str, str]:
    """The same machine with the network gone: offline flags set, the endpoint pointing nowhere."""
    return {**env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9", "HTTP_PROXY": "", "http_proxy": ""}


@pytest.fixture
def hub_env(fake_hub, tmp_path: Path) -> dict[str, str]:
    return fake_hub.env(tmp_path / "hf")


def test_stage01_downloads_by_hub_id_then_reruns_offline_from_the_cache(fake_hub, hub_env, tmp_path: Path) -> None:
    out = tmp_path / "processed"
    first = run([*PREPARE, "--config_path", "config/datasets/tinystories.json", "--output_dir", str(out), *SMALL],
                hub_env)
    assert first.returncode == 0, first.stderr[-3000:]
    stats = json.loads((out / "tinystories" / "stats.json").read_text())
    assert stats["documents"]["read"] > 500 and stats["tokens"]["train"] > 10_000
    assert any("resolve" in r and "TinyStories/resolve" in r and r.endswith(".parquet") for r in fake_hub.requests)
    assert list((tmp_path / "hf" / "hub").glob("datasets--roneneldan--TinyStories/snapshots/*/data/*.parquet"))
    manifest = (out / "tinystories" / "manifest.json").read_bytes()

    again = run([*PREPARE, "--config_path", "config/datasets/tinystories.json", "--output_dir", str(out), *SMALL,
                 "--force"], offline(hub_env))
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "tinystories" / "manifest.json").read_bytes() == manifest  # same data from the cache


def test_datatrove_engine_reads_a_hub_dataset_in_shards_to_the_same_output(hub_env, tmp_path: Path) -> None:
    args = [*PREPARE, "--config_path", "config/datasets/tinystories.json", *SMALL]
    local = run([*args, "--output_dir", str(tmp_path / "local")], hub_env)
    engine = run([*args, "--output_dir", str(tmp_path / "engine"), "--engine", "datatrove", "--tasks", "3"], hub_env)
    assert local.returncode == 0 and engine.returncode == 0, (local.stderr + engine.stderr)[-3000:]
    outputs = [tmp_path / name / "tinystories" for name in ("local", "engine")]
    for name in ["manifest.json", "train_00000.bin", "val_00000.bin"]:
        assert (outputs[0] / name).read_bytes() == (outputs[1] / name).read_bytes(), name
    stats = json.loads((outputs[1] / "stats.json").read_text())
    assert stats["engine"]["tasks"] == 3 and stats["input_files"] == ["hf://roneneldan/TinyStories:train"]


def test_fineweb_edu_downloads_only_the_configured_file(fake_hub, hub_env, tmp_path: Path) -> None:
    result = run([*PREPARE, "--config_path", "config/datasets/fineweb_edu.json", "--output_dir",
                  str(tmp_path / "p"), *SMALL], hub_env)
    assert result.returncode == 0, result.stderr[-3000:]
    fetched = [r for r in fake_hub.requests if r.startswith("GET") and "fineweb-edu/resolve" in r]
    assert any("000_00000.parquet" in r for r in fetched)
    assert not any("001_00000.parquet" in r for r in fetched)


def test_interrupted_download_fails_then_resumes(fake_hub, hub_env, tmp_path: Path) -> None:
    name = "data/validation-00000-of-00001.parquet"
    fake_hub.fail_reads[name] = 100  # every attempt of this run is cut half way
    out = tmp_path / "p"
    args = [*PREPARE, "--config_path", "config/datasets/tinystories.json", "--output_dir", str(out), *SMALL]
    try:
        broken = run(args, hub_env)
    finally:
        fake_hub.fail_reads[name] = 0
    assert broken.returncode != 0
    assert "was interrupted" in broken.stderr and "Run the same command again" in broken.stderr
    assert "Traceback" not in broken.stderr and not (out / "tinystories").exists()
    assert not list(out.glob(".*tmp*")) if out.exists() else True
    resumed = run(args, hub_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "tinystories" / "stats.json").read_text())["documents"]["read"] > 500


@pytest.mark.parametrize(("flags", "needle"), [
    (["--hf_dataset", "nobody/no-such-dataset"], "nobody/no-such-dataset' was not found"),
    (["--hf_split", "nosuchsplit"], "no split 'nosuchsplit'"),
    (["--text_field", "story"], "text field 'story' not found; fields present: text"),
])
def test_bad_hub_input_names_the_thing(hub_env, tmp_path: Path, flags: list[str], needle: str) -> None:
    result = run([*PREPARE, "--config_path", "config/datasets/tinystories.json", "--output_dir", str(tmp_path / "p"),
                  *SMALL, *flags], hub_env)
    assert result.returncode == 1, result.stderr[-2000:]
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


def test_offline_and_not_cached_fails_fast_naming_both_ways(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LUMI_DATA_DIR"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "empty-hf"))
    start = time.monotonic()
    result = run([*PREPARE, "--config_path", "config/datasets/tinystories.json", "--output_dir", str(tmp_path)], env)
    assert time.monotonic() - start < 60  # generous: the claim (seconds) is timed in the fresh-machine test
    assert result.returncode == 1
    assert "roneneldan/TinyStories" in result.stderr and "LUMI_DATA_DIR" in result.stderr
    assert "tinystories/*.txt" in result.stderr


def test_mirror_replaces_the_hub(shared_data: Path, tmp_path: Path) -> None:
    env = {**os.environ, "LUMI_DATA_DIR": str(shared_data), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = run([*PREPARE, "--config_path", "config/datasets/tinystories.json", "--output_dir", str(tmp_path / "p"),
                  *SMALL], env)
    assert result.returncode == 0, result.stderr[-3000:]
    stats = json.loads((tmp_path / "p" / "tinystories" / "stats.json").read_text())
    assert any("tinystories" in f and f.endswith(".txt") for f in stats["input_files"])


def test_mirror_missing_a_dataset_names_it(tmp_path: Path) -> None:
    (tmp_path / "mirror").mkdir()
    env = {**os.environ, "LUMI_DATA_DIR": str(tmp_path / "mirror"), "HF_HUB_OFFLINE": "1"}
    result = run([*PREPARE, "--config_path", "config/datasets/fineweb_edu.json", "--output_dir", str(tmp_path)], env)
    assert result.returncode == 1
    assert "HuggingFaceFW/fineweb-edu" in result.stderr and "fineweb-edu/*.parquet" in result.stderr


TASKS = ["wikitext", "hellaswag", "arc_easy", "arc_challenge", "boolq"]
EVALUATE = [sys.executable, "scripts/05_evaluate.py", "--limit", "8", "--batch_size", "4"]


def _evaluate(model: Path, out: Path, env: dict[str, str], tasks: list[str] = TASKS) -> dict:
    result = run([*EVALUATE, "--tasks", *tasks, "--model_path", str(model), "--output_dir", str(out), "--run_name", "r"],
                 env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "r" / "results.json").read_text())["tasks"]


def test_evaluation_from_the_hub_agrees_with_the_mirror(hub_env, serve_model_dir: Path, shared_data: Path,
                                                        tmp_path: Path) -> None:
    hub = _evaluate(serve_model_dir, tmp_path / "hub", hub_env)
    mirror_env = {**os.environ, "LUMI_DATA_DIR": str(shared_data), "HF_HUB_OFFLINE": "1"}
    mirror = _evaluate(serve_model_dir, tmp_path / "mirror", mirror_env)
    for task in ("arc_easy", "arc_challenge", "boolq", "hellaswag"):
        assert hub[task]["n"] == mirror[task]["n"] == 8
    for task in ("arc_easy", "arc_challenge", "boolq"):  # same rows, same prompts: the same scores
        assert hub[task]["acc"] == mirror[task]["acc"] and hub[task]["acc_norm"] == mirror[task]["acc_norm"]
    assert hub["wikitext"]["documents"] == mirror["wikitext"]["documents"]
    rerun = _evaluate(serve_model_dir, tmp_path / "again", offline(hub_env), ["boolq"])  # offline, from the cache
    assert rerun["boolq"]["acc"] == hub["boolq"]["acc"]


def test_evaluation_without_hub_or_mirror_names_every_dataset_before_loading(serve_model_dir: Path,
                                                                             tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LUMI_DATA_DIR"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "empty-hf"))
    result = run([*EVALUATE, "--tasks", *TASKS, "--model_path", str(serve_model_dir), "--output_dir", str(tmp_path)],
                 env)
    assert result.returncode == 1
    for name in ("EleutherAI/wikitext_document_level", "Rowan/hellaswag", "allenai/ai2_arc, ARC-Easy",
                 "allenai/ai2_arc, ARC-Challenge", "aps/super_glue, boolq"):
        assert name in result.stderr
    assert "LUMI_DATA_DIR" in result.stderr and "loading model" not in result.stderr.lower()


LOAD_FINETUNE_DATA = """
import json, sys
from utils.finetune.datasets import load_preference_pairs, load_sft_examples
sft, sft_report = load_sft_examples("tatsu-lab/alpaca")
dpo, dpo_report = load_preference_pairs("Anthropic/hh-rlhf")
print(json.dumps({"sft": len(sft), "sft_format": sft_report.format, "dpo": len(dpo), "dpo_format": dpo_report.format}))
"""


def test_finetuning_sets_load_by_hub_id_and_from_the_mirror(hub_env, shared_data: Path) -> None:
    hub = run([sys.executable, "-c", LOAD_FINETUNE_DATA], hub_env)
    assert hub.returncode == 0, hub.stderr[-3000:]
    counts = json.loads(hub.stdout)
    assert counts["sft_format"] == "alpaca" and counts["sft"] > 4900
    assert counts["dpo_format"] == "hh" and counts["dpo"] > 300  # the train split of the loopback repo
    mirror = run([sys.executable, "-c", LOAD_FINETUNE_DATA],
                 {**os.environ, "LUMI_DATA_DIR": str(shared_data), "HF_HUB_OFFLINE": "1"})
    assert mirror.returncode == 0, mirror.stderr[-3000:]
    assert json.loads(mirror.stdout)["sft"] == counts["sft"]  # the same 5,000 Alpaca rows either way


def _gpt2_style_tokenizer_files(tmp: Path) -> dict[str, bytes]:
    """A byte-level BPE saved the way a GPT-2-style hub repository ships it: one <|endoftext|> special token that
    is BOS, EOS and UNK, no padding token, no chat template."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    from tests.conftest import story_texts

    backend = Tokenizer(BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(story_texts(200), BpeTrainer(vocab_size=500, special_tokens=["<|endoftext|>"],
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                  unk_token="<|endoftext|>")
    tok.save_pretrained(tmp)
    return {p.name: p.read_bytes() for p in tmp.iterdir() if p.is_file()}


def test_tokenizer_path_takes_a_hub_tokenizer_id(fake_hub, hub_env, jsonl_corpus: Path, tmp_path: Path) -> None:
    (tmp_path / "gpt2-files").mkdir()
    fake_hub.add_model("lumi-test/gpt2-style", _gpt2_style_tokenizer_files(tmp_path / "gpt2-files"))
    args = [*PREPARE, "--input_path", str(jsonl_corpus), "--tokenizer_path", "lumi-test/gpt2-style",
            "--output_dir", str(tmp_path / "p"), "--num_workers", "0"]
    result = run(args, hub_env)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "p" / "corpus" / "manifest.json").read_text())
    assert manifest["tokenizer"]["vocab_size"] == 500
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "p" / "corpus" / "tokenizer")
    assert tok.bos_token_id == tok.eos_token_id == tok.pad_token_id == 0 and tok.chat_template
    again = run([*args, "--force"], offline(hub_env))  # from the Hugging Face cache
    assert again.returncode == 0, again.stderr[-3000:]
    wrong = run([*args, "--force", "--vocab_size", "1000"], hub_env)
    assert wrong.returncode == 2 and "conflicts with the tokenizer at lumi-test/gpt2-style" in wrong.stderr
    missing = run([*PREPARE, "--input_path", str(jsonl_corpus), "--tokenizer_path", "nobody/none",
                   "--output_dir", str(tmp_path / "q")], hub_env)
    assert missing.returncode == 1 and "cannot load the tokenizer 'nobody/none'" in missing.stderr
