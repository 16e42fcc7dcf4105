"""WikiText-2 perplexity data as lm-eval's `wikitext` task sees it (`tasks/wikitext/`): document-level pages split
exactly like the EleutherAI/wikitext_document_level loading script; the model scores `wikitext_detokenizer(page)`
while words and bytes are counted on the ORIGINAL page (lm-eval's `process_results`: "counts ... before
detokenization"). From the hub (the dataset is named in utils/eval/tasks.py
with the benchmarks, so one check covers them all) or from a local wiki.*.raw / .tokens / JSON rows file."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from utils.core.records import is_record_file, iter_records
from utils.eval.tasks import WIKITEXT_DATASET, WIKITEXT_FLAGS, load_hub_rows, resolve_local_file
from utils.lm.documents import RollingDocument, count_bytes, count_words

log = logging.getLogger(__name__)

UNK_TOKEN = "<unk>"


def wikitext_detokenizer(page: str) -> str:
    """lm-eval `tasks/wikitext/preprocess_wikitext.py::wikitext_detokenizer`, verbatim (it takes the page string)."""
    string = page
    # contractions
    string = string.replace("s '", "s'")
    string = re.sub(r"/' [0-9]/", r"/'[0-9]/", string)
    # number separators
    string = string.replace(" @-@ ", "-")
    string = string.replace(" @,@ ", ",")
    string = string.replace(" @.@ ", ".")
    # punctuation
    string = string.replace(" : ", ": ")
    string = string.replace(" ; ", "; ")
    string = string.replace(" . ", ". ")
    string = string.replace(" ! ", "! ")
    string = string.replace(" ? ", "? ")
    string = string.replace(" , ", ", ")
    # double brackets
    string = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", string)
    string = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", string)
    string = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", string)
    string = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', string)
    string = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", string)
    # miscellaneous
    string = string.replace("= = = =", "====")
    string = string.replace("= = =", "===")
    string = string.replace("= =", "==")
    string = string.replace(" " + chr(176) + " ", chr(176))
    string = string.replace(" \n", "\n")
    string = string.replace("\n ", "\n")
    string = string.replace(" N ", " 1 ")
    string = string.replace(" 's", "'s")
    return string


def split_wikitext_pages(text: str) -> list[str]:
    """Articles of a wiki.*.tokens/raw file, split like the EleutherAI/wikitext_document_level loading script.

    A page starts at each top-level heading " = Title = " (not " = = Section = = "); lines are joined with "\\n"
    unchanged; whitespace-only pages are dropped except the last, which the script always yields.
    """
    pages, current = [], []
    for line in text.split("\n"):
        heading = line.replace("= = =", "===").replace("= =", "==").strip()
        if heading.startswith("= ") and heading.endswith(" ="):
            page = "\n".join(current)
            if page.strip():
                pages.append(page)
            current = []
        current.append(line)
    pages.append("\n".join(current))
    return pages


def _wikitext_local_pages(path: Path) -> list[str]:
    file = resolve_local_file(path, WIKITEXT_DATASET.mirror, "WikiText-2", WIKITEXT_FLAGS)
    if is_record_file(file):
        return [row["page"] for _, row in iter_records(file)]
    text = file.read_text(encoding="utf-8")
    caveats = [c for c, applies in (("tokenized (<unk>, split punctuation)", file.suffix == ".tokens"
                                     or UNK_TOKEN in text), ("not the test split", "test" not in file.name)) if applies]
    if caveats:
        log.warning("%s is %s: its perplexities are NOT comparable to published wikitext-2-raw-v1 test numbers",
                    file, " and ".join(caveats))
    return split_wikitext_pages(text)


def load_wikitext_documents(path: Path | None) -> list[RollingDocument]:
    """WikiText-2 pages for rolling loglikelihood, as lm-eval's `wikitext` task sees them.

    Without a path: EleutherAI/wikitext_document_level, wikitext-2-raw-v1, test split (lm-eval's default). With a
    path: a wiki.*.raw / wiki.*.tokens file (or a directory holding one), or JSON lines with a "page" field. The
    test mirror's copy is the TOKENIZED validation file (`<unk>` for rare words, pre-split punctuation): figures on it
    are not comparable to published raw-test numbers.
    Each document scores `wikitext_detokenizer(page)`; words and bytes are counted on the original page, as in
    lm-eval's `process_results`.
    """
    if path is None:
        rows = load_hub_rows(WIKITEXT_DATASET, WIKITEXT_FLAGS)
        pages = [row["page"] for row in rows]
    else:
        pages = _wikitext_local_pages(Path(path))
    documents = [RollingDocument(text=wikitext_detokenizer(page), words=count_words(page), bytes=count_bytes(page))
                 for page in pages]
    log.info("WikiText-2: %d documents, %d words, %d bytes", len(documents),
             sum(d.words for d in documents), sum(d.bytes for d in documents))
    return documents
