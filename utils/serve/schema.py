"""The request bodies the API accepts, as pydantic models: OpenAI's chat and text completions, and /generate's
simple form. FastAPI checks each body against them (422 when it does not match)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(BaseModel):
    """What both OpenAI routes accept; unknown fields are ignored, as OpenAI-compatible servers do."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # vLLM's extension
    repetition_penalty: float | None = None  # vLLM's extension
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None


class CompletionRequest(SamplingFields):
    prompt: str


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None  # OpenAI's newer name for max_tokens


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # our own simple form: a typo is an error
    prompt: str
    max_new_tokens: int | None = None
    temperature: float | None = None
    template: str | None = None  # default: the server's --template; "none": plain continuation


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error the API sends, in OpenAI's shape (utils/serve/errors.py); declared in the OpenAPI document."""

    error: ErrorDetail
