"""Hub repositories for the loopback hub (tests/fake_hub.py), laid out as the real ones and filled from the mirror.

Each builder takes the mirror folder (LUMI_DATA_DIR, the shared test data) and returns the repository's files:
the same ids, file paths, formats and columns the stages meet on huggingface.co, with the rows of our slices.
FineWeb-Edu has no slice in the mirror: its repository is filled with paragraphs of the prose corpus in
FineWeb-Edu's schema (a stand-in for the text; the layout and columns are the real ones).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from tests.fake_hub import FakeHub, parquet_bytes, readme

TINYSTORIES_VALID = 40
FINEWEB_DOCS_PER_FILE = 300
HH_TRAIN_PAIRS = 400


def _jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def tinystories(mirror: Path) -> dict[str, bytes]:
    text = next((mirror / "tinystories").glob("*.txt")).read_text(encoding="utf-8")
    stories = [block.strip() for block in text.split("\n\n") if block.strip()]
    return {"README.md": readme(),
            "data/train-00000-of-00001.parquet": parquet_bytes([{"text": s} for s in stories[TINYSTORIES_VALID:]]),
            "data/validation-00000-of-00001.parquet": parquet_bytes([{"text": s} for s in stories[:TINYSTORIES_VALID]])}


def fineweb_edu(mirror: Path) -> dict[str, bytes]:
    paragraphs = []
    for book in sorted((mirror / "prose" / "british-fiction").glob("*.txt"))[:2]:
        lines = book.read_text(encoding="utf-8").splitlines()
        paragraphs += [" ".join(lines[i:i + 12]) for i in range(0, len(lines), 12)]
    files = {"README.md": readme({"default": {"train": "data/*/*"}, "sample-10BT": {"train": "sample/10BT/*"}})}
    for index in range(2):
        rows = [{"text": text, "id": f"<urn:uuid:{index}-{n}>", "dump": "CC-MAIN-2024-10", "url": f"https://x/{n}",
                 "file_path": "s3://commoncrawl/x.warc.gz", "language": "en", "language_score": 0.95,
                 "token_count": len(text.split()), "score": 3.1, "int_score": 3}
                for n, text in enumerate(paragraphs[index * FINEWEB_DOCS_PER_FILE:(index + 1) * FINEWEB_DOCS_PER_FILE])]
        files[f"sample/10BT/{index:03d}_00000.parquet"] = parquet_bytes(rows)
    return files


def hellaswag(mirror: Path) -> dict[str, bytes]:
    rows = [{"ind": r["idx"], "activity_label": r["activity_label"], "ctx_a": r["ctx"], "ctx_b": "", "ctx": r["ctx"],
             "endings": r["endings"], "source_id": "activitynet", "split": "val", "split_type": "indomain",
             "label": str(r["label"])} for r in _jsonl(mirror / "hellaswag" / "hellaswag_val.preproc.first1000.jsonl")]
    return {"README.md": readme({"default": {"validation": "data/validation-*"}}),
            "data/validation-00000-of-00001.parquet": parquet_bytes(rows)}


def ai2_arc(mirror: Path) -> dict[str, bytes]:
    files = {"README.md": readme({name: {"test": f"{name}/test-*"} for name in ("ARC-Easy", "ARC-Challenge")})}
    for name in ("ARC-Easy", "ARC-Challenge"):
        rows = _jsonl(next((mirror / "arc" / name).glob("test*.jsonl")))
        files[f"{name}/test-00000-of-00001.parquet"] = parquet_bytes(rows)
    return files


def super_glue(mirror: Path) -> dict[str, bytes]:
    rows = [{"question": r["question"], "passage": r["passage"], "idx": i, "label": int(r["answer"])}
            for i, r in enumerate(_jsonl(next((mirror / "boolq").glob("dev*.jsonl"))))]
    return {"README.md": readme({"boolq": {"validation": "boolq/validation-*"}}),
            "boolq/validation-00000-of-00001.parquet": parquet_bytes(rows)}


def wikitext_document_level(mirror: Path) -> dict[str, bytes]:
    from utils.eval.wikitext import split_wikitext_pages

    pages = split_wikitext_pages((mirror / "wikitext-2" / "wiki.valid.tokens").read_text(encoding="utf-8"))
    return {"README.md": readme({"wikitext-2-raw-v1": {"test": "wikitext-2-raw-v1/test-*"}}),
            "wikitext-2-raw-v1/test-00000-of-00001.parquet": parquet_bytes([{"page": p} for p in pages])}


def alpaca(mirror: Path) -> dict[str, bytes]:
    rows = json.loads((mirror / "alpaca" / "alpaca_data_5000.json").read_text(encoding="utf-8"))
    return {"README.md": readme(), "data/train-00000-of-00001-a09b74b3ef9c3b56.parquet": parquet_bytes(rows)}


def hh_rlhf(mirror: Path) -> dict[str, bytes]:
    rows = _jsonl(mirror / "hh-rlhf" / "helpful-base" / "test.jsonl.gz")

    def pack(part: list[dict[str, Any]]) -> bytes:
        return gzip.compress("".join(json.dumps(r) + "\n" for r in part).encode(), mtime=0)

    return {"README.md": readme(), "helpful-base/train.jsonl.gz": pack(rows[:HH_TRAIN_PAIRS]),
            "helpful-base/test.jsonl.gz": pack(rows[HH_TRAIN_PAIRS:])}


DATASETS = {"roneneldan/TinyStories": tinystories, "HuggingFaceFW/fineweb-edu": fineweb_edu,
            "Rowan/hellaswag": hellaswag, "allenai/ai2_arc": ai2_arc, "aps/super_glue": super_glue,
            "EleutherAI/wikitext_document_level": wikitext_document_level, "tatsu-lab/alpaca": alpaca,
            "Anthropic/hh-rlhf": hh_rlhf}


def fill(hub: FakeHub, mirror: Path) -> FakeHub:
    for repo_id, build in DATASETS.items():
        hub.add_dataset(repo_id, build(mirror))
    return hub


def mirror_with_fineweb(mirror: Path, target: Path) -> Path:
    """A mirror holding every dataset the sessions read: the test data, plus FineWeb-Edu's stand-in parquet file."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in mirror.iterdir():
        (target / entry.name).symlink_to(entry.resolve())
    (target / "fineweb-edu").mkdir()
    (target / "fineweb-edu" / "000_00000.parquet").write_bytes(fineweb_edu(mirror)["sample/10BT/000_00000.parquet"])
    return target
