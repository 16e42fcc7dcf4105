"""Stage 06: the terminal chat and the OpenAI-compatible API.

Modules:
  config     ServeConfig (the --flags of scripts/06_serve.py), choose_device, load_for_serving; no FastAPI
  chat       interactive mode: ChatSession and the terminal REPL
  api        API mode: request handling, SSE replies, routes, GuardMiddleware, create_app, run_api
  schema     the request bodies as pydantic models (OpenAI's chat and text completions, /generate)
  errors     APIError and the handlers that give every error OpenAI's shape
  scheduler  Slots (concurrency and the bounded queue), Job (a generation on a worker thread), ServerState
"""
