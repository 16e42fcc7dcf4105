#!/usr/bin/env python
"""Stage 06: chat with a model in the terminal, or serve it over HTTP in OpenAI's schema.

    python scripts/06_serve.py --model_path checkpoints/pretrain/tiny/final                  # interactive chat
    python scripts/06_serve.py --model_path <dir> --temperature 0 --max_new_tokens 200 --template instruct
    python scripts/06_serve.py --model_path <dir> --mode api [--host 127.0.0.1] [--port 8000] [--api_key KEY]

API mode: POST /v1/chat/completions, /v1/completions (stream: true for server-sent events), /generate; GET /v1/models,
/health. Any OpenAI client works with base_url http://127.0.0.1:8000/v1. It binds 127.0.0.1 unless --host says
otherwise; with --api_key (or LUMI_API_KEY) every route but /health needs 'Authorization: Bearer <key>'.
Interactive mode: /help, /params [name=value ...], /reset, /exit; Ctrl-C stops an answer.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.core.cli import parse_config, run_main  # noqa: E402
from utils.serve.api import run_api  # noqa: E402
from utils.serve.chat import run_chat  # noqa: E402
from utils.serve.config import ServeConfig  # noqa: E402

HELP = {
    "mode": "interactive: chat in this terminal; api: HTTP server (FastAPI + uvicorn)",
    "template": "prompt template for chat turns: chatml, instruct or chat",
    "system_prompt": "interactive mode: a system message at the start of the conversation",
    "temperature": "0 = greedy; the default for requests that give none",
    "top_k": "0 = off",
    "seed": "fixed seed for every answer; unset: a fresh one each time",
    "host": "address to bind; anything but 127.0.0.1 exposes the server to your network",
    "api_key": "require 'Authorization: Bearer <key>'; unset: $LUMI_API_KEY (which keeps the key out of ps), else none",
    "cors_origins": "browser origins allowed to call the API; none unless given",
    "max_concurrent": "generations at once (1 on CPU)",
    "max_queue": "requests that may wait for a slot; more get 429",
    "served_model_name": "model id in /v1/models and responses; unset: the model directory's name",
    "cpu_threads": "torch threads on CPU; 1 is often fastest for small models on a busy machine",
}


def main() -> None:
    config = parse_config(ServeConfig, __doc__, help_texts=HELP)
    if config.mode == "interactive":
        run_chat(config)
    else:
        run_api(config)


if __name__ == "__main__":
    sys.exit(run_main(main))
