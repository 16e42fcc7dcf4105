"""The request bodies the API accepts, as pydantic models: OpenAI's chat and text completions, and /generate's
simple form. FastAPI checks each body against them (422 when it does not match)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

# Strict scalars: pydantic's lax mode would take `"max_tokens": false` as 0 and `"stream": 1` as true, values the
# schema says are invalid (the API fuzzer sent them). A JSON integer still fills a float field.
Int = Annotated[int, Field(strict=True)]
Float = Annotated[float, Field(strict=True)]
Bool = Annotated[bool, Field(strict=True)]


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class StreamOptions(BaseModel):
    include_usage: Bool = False


class SamplingFields(BaseModel):
    """What both OpenAI routes accept; unknown fields are ignored, as OpenAI-compatible servers do."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    max_tokens: Int | None = None
    temperature: Float | None = None
    top_p: Float | None = None
    top_k: Int | None = None  # vLLM's extension
    repetition_penalty: Float | None = None  # vLLM's extension
    stop: str | list[str] | None = None
    seed: Int | None = None
    n: Int = 1
    stream: Bool = False
    stream_options: StreamOptions | None = None


class CompletionRequest(SamplingFields):
    prompt: str


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Int | None = None  # OpenAI's newer name for max_tokens


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # our own simple form: a typo is an error
    prompt: str
    max_new_tokens: Int | None = None
    temperature: Float | None = None
    template: str | None = None  # default: the server's --template; "none": plain continuation


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error the API sends, in OpenAI's shape (utils/serve/errors.py); declared in the OpenAPI document."""

    error: ErrorDetail
