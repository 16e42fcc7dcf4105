"""Stage 06: the terminal chat and the OpenAI-compatible API."""
