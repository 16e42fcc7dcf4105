"""Public datasets by Hugging Face Hub id, or from a local mirror folder named by LUMI_DATA_DIR.

Hub (the default): `datasets.load_dataset(id, subset, split=...)` downloads the files once, with the hub client's
progress bars, into the normal Hugging Face cache (HF_HOME) and prepares memory-mapped Arrow tables: memory stays
flat in the corpus size, an interrupted download resumes on the next run (the hub client keeps `.incomplete`
blobs; `datasets` renames a prepared table into place only when it is complete), and a rerun works offline from the
cache. Streaming (`hf_streaming` in stage 01) avoids the disk copy but caches nothing, so a streamed rerun needs
the network again.

Mirror: `LUMI_DATA_DIR=/path` points every stage at a folder holding one subfolder per dataset in the dataset's
original release format (ARCHITECTURE.md lists the layout). Set, it replaces the hub for every dataset a stage
needs; a dataset missing from it is an error naming the files expected, never a silent download.
"""

from __future__ import annotations

import logging
import os
import socket
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.core.errors import DataError

log = logging.getLogger(__name__)

MIRROR_ENV = "LUMI_DATA_DIR"
MIRROR_VARIABLES = ("${" + MIRROR_ENV + "}", "$" + MIRROR_ENV)
HUB_PROBE_TIMEOUT_S = 5.0
OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


@dataclass(frozen=True)
class PublicDataset:
    """A dataset a stage needs: its hub coordinates and where a mirror keeps it (globs, tried in order)."""

    name: str
    hub_id: str
    subset: str | None
    split: str
    mirror: tuple[str, ...]
    data_files: str | None = None

    @property
    def hub_name(self) -> str:
        parts = [self.hub_id] + ([self.subset] if self.subset else []) + [f"split {self.split}"]
        if self.data_files:
            parts.append(f"files {self.data_files}")
        return ", ".join(parts)


def mirror_root() -> Path | None:
    """The mirror folder when LUMI_DATA_DIR is set (it must exist), else None: use the hub."""
    value = os.environ.get(MIRROR_ENV, "").strip()
    if not value:
        return None
    root = Path(value).expanduser()
    if not root.is_dir():
        raise DataError(f"{MIRROR_ENV}={value} is not a directory. Point it at a local mirror (one subfolder per "
                        f"dataset, original formats) or unset it to use the Hugging Face Hub.")
    return root


def expand_mirror_path(path: str) -> str:
    """Replace $LUMI_DATA_DIR in a configured path; an error when the path needs the mirror and it is not set."""
    if not any(variable in path for variable in MIRROR_VARIABLES):
        return path
    root = mirror_root()
    if root is None:
        raise DataError(f"{path} lives in the local mirror: set {MIRROR_ENV}=/path/to/mirror (make passes it "
                        f"through), or pass another --input_path.")
    for variable in MIRROR_VARIABLES:
        path = path.replace(variable, str(root))
    return path


def mirror_matches(dataset: PublicDataset, root: Path) -> list[Path]:
    """Files of the first mirror pattern that matches anything, sorted."""
    for pattern in dataset.mirror:
        files = sorted(p for p in root.glob(pattern) if p.is_file())
        if files:
            return files
    return []


def hub_unavailable_reason() -> str | None:
    """Why the hub cannot be reached now, or None: the offline flags, then one short TCP probe (no long retries)."""
    for flag in OFFLINE_FLAGS:
        if os.environ.get(flag, "").lower() in ("1", "true", "yes", "on"):
            return f"{flag}=1 is set"
    from huggingface_hub import constants

    url = urllib.parse.urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        return f"{url.hostname} is unreachable: {exc}"
    return None


def _use_cache_only() -> None:
    """The hub is unreachable: make the hub client and `datasets` read their caches instead of retrying."""
    import datasets
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True
    datasets.config.HF_HUB_OFFLINE = True


def in_hub_cache(dataset: PublicDataset) -> bool:
    """Whether `datasets` has prepared this dataset before (where it looks when offline)."""
    import datasets
    from datasets.naming import camelcase_to_snakecase

    namespace, _, name = dataset.hub_id.rpartition("/")
    folder = "___".join(([namespace] if namespace else []) + [camelcase_to_snakecase(name)])
    root = Path(datasets.config.HF_DATASETS_CACHE) / folder
    # Prepared tables live in <config id>/<version>/<hash>/; the config id is the subset name unless data_files
    # were given (then "default-<hash of the files>").
    pattern = f"{dataset.subset}/*/*/dataset_info.json" if dataset.subset and not dataset.data_files \
        else "*/*/*/dataset_info.json"
    return root.is_dir() and any(root.glob(pattern))


def unavailable_message(missing: Sequence[PublicDataset], reason: str) -> str:
    """One message naming every dataset that cannot be had, and both ways to provide them."""
    lines = [f"cannot get {len(missing)} dataset(s) ({reason}):"]
    for dataset in missing:
        others = f" (or {len(dataset.mirror) - 1} other names)" if len(dataset.mirror) > 1 else ""
        where = f"${MIRROR_ENV}/{dataset.mirror[0]}{others}" if dataset.mirror else "no mirror layout known"
        lines.append(f"  - {dataset.name}: Hugging Face Hub {dataset.hub_name}; or in a mirror: {where}")
    lines.append(f"Fix: connect to the internet once (the Hugging Face cache keeps them for offline reruns), or set "
                 f"{MIRROR_ENV}=/path/to/mirror holding those files.")
    return "\n".join(lines)


def check_available(needed: Sequence[PublicDataset], root: Path | None = None) -> None:
    """Fail in seconds, before any work, naming each dataset that neither the folder `root` (default: the mirror)
    nor the hub (or its cache) can serve."""
    root = root or mirror_root()
    if root is not None:
        missing = [d for d in needed if not mirror_matches(d, root)]
        reason = f"not under {root}"
    else:
        reason = hub_unavailable_reason()
        missing = [] if reason is None else [d for d in needed if not in_hub_cache(d)]
        reason = f"the hub is unavailable ({reason}) and they are not in the Hugging Face cache"
    if missing:
        raise DataError(unavailable_message(missing, reason))


def load_hub_split(dataset: PublicDataset, streaming: bool = False) -> Any:
    """The dataset's split from the hub (downloaded once, then cached), with errors that name the fix."""
    reason = hub_unavailable_reason()
    import datasets
    from datasets.exceptions import DatasetNotFoundError
    from huggingface_hub.utils import httpx

    if reason is not None:
        if streaming:
            raise DataError(unavailable_message([dataset], f"{reason}; a streamed dataset is not cached"))
        _use_cache_only()
    log.info("loading %s from the Hugging Face Hub%s", dataset.hub_name, " (cache only)" if reason else "")
    try:
        return datasets.load_dataset(dataset.hub_id, dataset.subset, split=dataset.split,
                                     data_files=dataset.data_files, streaming=streaming)
    except DatasetNotFoundError as exc:
        raise DataError(f"Hugging Face dataset '{dataset.hub_id}' was not found ({exc}). Check the id (and the "
                        f"subset '{dataset.subset}'), or log in with `hf auth login` if it is gated.") from exc
    except ValueError as exc:
        if "split" in str(exc).lower():
            raise DataError(f"{dataset.hub_id}: no split '{dataset.split}' ({exc}). Set the split in the config "
                            f"(e.g. --hf_split).") from exc
        if "BuilderConfig" in str(exc) or "config" in str(exc).lower():
            raise DataError(f"{dataset.hub_id}: no subset '{dataset.subset}' ({exc}). Set an existing one "
                            f"(e.g. --hf_subset).") from exc
        raise DataError(f"cannot load {dataset.hub_name}: {exc}") from exc
    except httpx.TransportError as exc:  # the connection broke mid-download: the hub client resumes on a rerun
        raise DataError(f"downloading {dataset.hub_name} was interrupted ({type(exc).__name__}: {exc}). Run the same "
                        f"command again: it resumes where the download stopped.") from exc
    except (ConnectionError, OSError) as exc:
        why = reason or f"{type(exc).__name__}: {exc}"
        raise DataError(unavailable_message([dataset], why)) from exc
