"""The text service's protocol: request and response models, OpenAI-compatible ones included."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from services.common.limits import Temperature, TopP

MAX_STOP_SEQUENCES = 8
MAX_STOP_LENGTH = 64
# The text service's own seed range: its sampler hashes all 63 bits, and OpenAI clients send
# seeds of any size. The gateway sends only article seeds (services.common.limits.MAX_SEED and
# the few derived from them), well inside it.
MAX_SEED = 2**63 - 1
# A static ceiling for the OpenAPI page; the configured limit (ARTICLEFORGE_TEXT_MAX_NEW_TOKENS)
# is checked by the engine and named in the 400 it answers.
MAX_NEW_TOKENS_CEILING = 32768
# Character bounds on what reaches the tokenizer, so that no request holds a worker thread for
# long (200,000 characters tokenize in well under a second). The token limit
# (ARTICLEFORGE_TEXT_MAX_INPUT_TOKENS) is checked after tokenizing, with its own 400.
MAX_PROMPT_CHARS = 200_000  # a prompt, or all message contents of one request together
MAX_SYSTEM_CHARS = 20_000
MAX_MESSAGES = 256
MAX_MODEL_NAME = 256
MAX_PERPLEXITY_TEXTS = 64
MAX_PERPLEXITY_TEXT_CHARS = 50_000  # each text, and each context
MAX_PERPLEXITY_TOTAL_CHARS = 500_000  # all texts and contexts of one request together

Role = Literal["system", "user", "assistant"]
# Requests take JSON types as the OpenAPI states them, as OpenAI's API does: `true` is not a
# top_k and "256" is not a max_tokens. NaN and infinities are refused too (they poison the
# sampler). Each is a 422 naming the field.
STRICT = ConfigDict(strict=True, allow_inf_nan=False)


@dataclass(frozen=True)
class SamplingParams:
    """What the engine needs to decode one request."""

    max_new_tokens: int | None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache


@dataclass
class Prompt:
    """A rendered prompt: plain text, or chat messages to pass through the chat template."""

    text: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    param: str = "prompt"


class ChatMessage(BaseModel):
    model_config = STRICT

    role: Role = Field(description="Who speaks.", examples=["user"])
    content: str = Field(
        description="What is said.",
        max_length=MAX_PROMPT_CHARS,
        examples=["Write about solar power."],
    )


def _check_messages(messages: list[ChatMessage] | None) -> list[ChatMessage] | None:
    """A chat needs someone to answer, and all of it must fit the character bound."""
    if messages is None:
        return None
    if not any(m.role == "user" for m in messages):
        raise ValueError("at least one message must have role `user`")
    total = sum(len(m.content) for m in messages)
    if total > MAX_PROMPT_CHARS:
        raise ValueError(
            f"the message contents total {total} characters; the limit is {MAX_PROMPT_CHARS}"
        )
    return messages


class _Sampling(BaseModel):
    """Sampling fields shared by every generation request."""

    model_config = STRICT

    temperature: Temperature = Field(
        default=0.7, description="0 is greedy decoding.", examples=[0.7]
    )
    top_p: TopP = Field(default=1.0, description="Nucleus sampling mass.", examples=[0.9])
    top_k: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="Keep the k most likely tokens; 0 is off.",
        examples=[40],
    )
    repetition_penalty: float = Field(
        default=1.0,
        ge=0.5,
        le=2.0,
        description="Divides positive logits of tokens already seen (CTRL-style); 1 is off.",
        examples=[1.1],
    )
    presence_penalty: float = Field(
        default=0.0,
        ge=-2.0,
        le=2.0,
        description="Subtracted once from the logit of every token already generated.",
        examples=[0.0],
    )
    frequency_penalty: float = Field(
        default=0.0,
        ge=-2.0,
        le=2.0,
        description="Subtracted per occurrence from the logit of generated tokens.",
        examples=[0.0],
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        description="Same seed and parameters give the same text. Random when absent.",
        examples=[42],
    )

    def sampling_params(
        self, max_new_tokens: int | None, stop: str | list[str] | None
    ) -> SamplingParams:
        return SamplingParams(
            max_new_tokens=max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            stop=_stop_tuple(stop),
            seed=self.seed,
        )


def _stop_tuple(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


def _check_stop(stop: str | list[str] | None) -> None:
    items = _stop_tuple(stop)
    if len(items) > MAX_STOP_SEQUENCES:
        raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences, got {len(items)}")
    for item in items:
        if not item or len(item) > MAX_STOP_LENGTH:
            raise ValueError(
                f"each stop sequence must be 1..{MAX_STOP_LENGTH} characters, got {len(item)}"
            )


class GenerateRequest(_Sampling):
    """`POST /v1/generate`: a prompt or chat messages in, text out."""

    prompt: str | None = Field(
        default=None,
        max_length=MAX_PROMPT_CHARS,
        description="Raw prompt, used as is. Give this or `messages`.",
        examples=["[INST] Write a title for an article on solar power. [/INST]"],
    )
    messages: list[ChatMessage] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_MESSAGES,
        description="Chat turns, rendered with the model's chat template. At least one "
        f"`user` turn; {MAX_PROMPT_CHARS} characters of content in all.",
        examples=[[{"role": "user", "content": "Write about solar power."}]],
    )
    system: str | None = Field(
        default=None,
        max_length=MAX_SYSTEM_CHARS,
        description="System prompt placed before `messages` (or before `prompt` as a chat).",
        examples=["You are a concise technical writer."],
    )
    model: str | None = Field(
        default=None,
        max_length=MAX_MODEL_NAME,
        description="Served model or adapter name; the default when absent.",
        examples=["tiny"],
    )
    max_new_tokens: int | None = Field(
        default=None,
        ge=1,
        le=MAX_NEW_TOKENS_CEILING,
        description="Most tokens to generate; the service default when absent.",
        examples=[256],
    )
    stop: list[str] = Field(
        default_factory=list,
        description=f"Up to {MAX_STOP_SEQUENCES} strings; the text is cut before the first one.",
        examples=[["\n\n"]],
    )
    stream: bool = Field(
        default=False,
        description="Answer with Server-Sent Events: `token` events, then one `result` event.",
        examples=[False],
    )

    @model_validator(mode="after")
    def _one_prompt(self) -> GenerateRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` or `messages`")
        return self

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: list[str]) -> list[str]:
        _check_stop(value)
        return value

    @field_validator("messages")
    @classmethod
    def _messages(cls, value: list[ChatMessage] | None) -> list[ChatMessage] | None:
        return _check_messages(value)

    def to_prompt(self) -> Prompt:
        if self.messages is None and self.system is None:
            return Prompt(text=self.prompt, param="prompt")
        messages = [m.model_dump() for m in self.messages or []]
        if self.prompt is not None:
            messages = [{"role": "user", "content": self.prompt}]
        if self.system is not None:
            messages.insert(0, {"role": "system", "content": self.system})
        return Prompt(messages=messages, param="messages" if self.messages else "prompt")

    def to_sampling_params(self) -> SamplingParams:
        return self.sampling_params(self.max_new_tokens, self.stop)


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(
        description="Prompt tokens whose KV came from the prefix cache instead of being "
        "prefilled: whole KV pages of a prefix an earlier (or simultaneous) request shares, "
        "never the prompt's last token. 0 with ARTICLEFORGE_TEXT_PREFIX_CACHE=false.",
        examples=[32],
    )


class UsageOut(BaseModel):
    prompt_tokens: int = Field(description="Tokens in the rendered prompt.", examples=[34])
    completion_tokens: int = Field(description="Tokens generated.", examples=[256])
    total_tokens: int = Field(description="The sum of both.", examples=[290])
    prompt_tokens_details: PromptTokensDetails = Field(
        description="What the prompt cost, as OpenAI reports it.",
        examples=[{"cached_tokens": 32}],
    )


class Timings(BaseModel):
    queue_seconds: float = Field(description="Wait before decoding started.", examples=[0.002])
    time_to_first_token_seconds: float = Field(
        description="From arrival to the first generated token.", examples=[0.05]
    )
    total_seconds: float = Field(description="From arrival to the last token.", examples=[2.1])
    tokens_per_second: float = Field(
        description="Generated tokens over decode time.", examples=[120.0]
    )


class GenerateResponse(BaseModel):
    text: str = Field(
        description="Generated text, cut before any stop sequence.", examples=["Solar power is ..."]
    )
    finish_reason: Literal["stop", "length"] = Field(
        description="`stop`: end of sequence or a stop string; `length`: hit max_new_tokens.",
        examples=["length"],
    )
    model: str = Field(description="The model or adapter that answered.", examples=["tiny"])
    seed: int = Field(description="The seed used; send it back to reproduce.", examples=[42])
    usage: UsageOut = Field(description="Token counts.")
    timings: Timings = Field(description="Where the time went.")


# --- OpenAI-compatible ------------------------------------------------------------------------


class StreamOptions(BaseModel):
    model_config = STRICT

    include_usage: bool = Field(
        default=False, description="Send a last chunk with usage.", examples=[True]
    )


class _OpenAIBase(_Sampling):
    # Unknown OpenAI fields (user, metadata, ...) are accepted and ignored, as vLLM does.
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)

    model: str = Field(
        max_length=MAX_MODEL_NAME,
        description="Served model or adapter name (see /v1/models).",
        examples=["tiny"],
    )
    temperature: Temperature = Field(
        default=1.0, description="0 is greedy decoding.", examples=[0.7]
    )
    max_tokens: int | None = Field(
        default=None,
        ge=1,
        le=MAX_NEW_TOKENS_CEILING,
        description="Most tokens to generate; fills the context (up to the limit) when absent.",
        examples=[256],
    )
    n: int = Field(default=1, ge=1, le=1, description="Only 1 choice is supported.", examples=[1])
    stop: str | list[str] | None = Field(
        default=None,
        description="Stop string(s); the text is cut before the first one.",
        examples=[["\n\n"]],
    )
    stream: bool = Field(
        default=False, description="Stream chunks as SSE, ending in [DONE].", examples=[False]
    )
    stream_options: StreamOptions | None = Field(default=None, description="Streaming options.")
    logprobs: bool | None = Field(
        default=None, description="Not supported; must be unset.", examples=[None]
    )

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        _check_stop(value)
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("logprobs are not supported")
        return value

    def to_sampling_params(self) -> SamplingParams:
        return self.sampling_params(self.max_tokens, self.stop)


class ChatCompletionRequest(_OpenAIBase):
    messages: list[ChatMessage] = Field(
        min_length=1,
        max_length=MAX_MESSAGES,
        description="The conversation so far: at least one `user` turn, "
        f"{MAX_PROMPT_CHARS} characters of content in all.",
        examples=[[{"role": "user", "content": "Write a haiku about the sea."}]],
    )
    max_completion_tokens: int | None = Field(
        default=None,
        ge=1,
        le=MAX_NEW_TOKENS_CEILING,
        description="Newer name for `max_tokens`; wins when both are set.",
        examples=[256],
    )

    @field_validator("messages")
    @classmethod
    def _messages(cls, value: list[ChatMessage]) -> list[ChatMessage]:
        _check_messages(value)
        return value

    def to_prompt(self) -> Prompt:
        return Prompt(messages=[m.model_dump() for m in self.messages], param="messages")

    def to_sampling_params(self) -> SamplingParams:
        limit = self.max_completion_tokens
        return self.sampling_params(limit if limit is not None else self.max_tokens, self.stop)


class CompletionRequest(_OpenAIBase):
    prompt: str = Field(
        max_length=MAX_PROMPT_CHARS,
        description="The prompt, used as is.",
        examples=["Solar power is"],
    )
    echo: bool = Field(
        default=False, description="Prepend the prompt to the text.", examples=[False]
    )

    def to_prompt(self) -> Prompt:
        return Prompt(text=self.prompt, param="prompt")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = Field(
        default="assistant", description="Always `assistant`.", examples=["assistant"]
    )
    content: str = Field(description="The reply.", examples=["The sea is wide..."])


class ChatChoice(BaseModel):
    index: int = Field(description="Choice index.", examples=[0])
    message: ChatCompletionMessage = Field(description="The reply message.")
    finish_reason: Literal["stop", "length"] = Field(description="Why it ended.", examples=["stop"])


class ChatCompletionResponse(BaseModel):
    id: str = Field(description="Completion id.", examples=["chatcmpl-3f2a"])
    object: Literal["chat.completion"] = Field(
        default="chat.completion", description="Object type.", examples=["chat.completion"]
    )
    created: int = Field(default_factory=now, description="Unix time.", examples=[1764140000])
    model: str = Field(description="Model or adapter that answered.", examples=["tiny"])
    choices: list[ChatChoice] = Field(description="Exactly one choice.")
    usage: UsageOut = Field(description="Token counts.")


class CompletionChoice(BaseModel):
    index: int = Field(description="Choice index.", examples=[0])
    text: str = Field(description="Generated text.", examples=[" a clean source of energy."])
    finish_reason: Literal["stop", "length"] = Field(
        description="Why it ended.", examples=["length"]
    )
    logprobs: None = Field(default=None, description="Always null.", examples=[None])


class CompletionResponse(BaseModel):
    id: str = Field(description="Completion id.", examples=["cmpl-3f2a"])
    object: Literal["text_completion"] = Field(
        default="text_completion", description="Object type.", examples=["text_completion"]
    )
    created: int = Field(default_factory=now, description="Unix time.", examples=[1764140000])
    model: str = Field(description="Model or adapter that answered.", examples=["tiny"])
    choices: list[CompletionChoice] = Field(description="Exactly one choice.")
    usage: UsageOut = Field(description="Token counts.")


class ModelCard(BaseModel):
    id: str = Field(description="Name to pass as `model`.", examples=["tiny"])
    object: Literal["model"] = Field(
        default="model", description="Object type.", examples=["model"]
    )
    created: int = Field(default_factory=now, description="Unix time.", examples=[1764140000])
    owned_by: str = Field(default="articleforge", description="Owner.", examples=["articleforge"])
    root: str = Field(description="The base model.", examples=["NousResearch/Llama-2-7b-chat-hf"])
    parent: str | None = Field(
        default=None, description="Base model of an adapter; null for the base.", examples=[None]
    )
    merged: bool = Field(
        default=False,
        description="The adapter was merged into the base weights at load.",
        examples=[False],
    )
    max_model_len: int = Field(description="Context window in tokens.", examples=[4096])


class ModelList(BaseModel):
    object: Literal["list"] = Field(default="list", description="Object type.", examples=["list"])
    data: list[ModelCard] = Field(description="Served models and adapters.")


# --- perplexity -------------------------------------------------------------------------------


PerplexityText = Annotated[str, Field(max_length=MAX_PERPLEXITY_TEXT_CHARS)]


class PerplexityRequest(BaseModel):
    model_config = STRICT

    texts: list[PerplexityText] = Field(
        min_length=1,
        max_length=MAX_PERPLEXITY_TEXTS,
        description=f"Texts to score, each at most {MAX_PERPLEXITY_TEXT_CHARS} characters; "
        f"texts and contexts together at most {MAX_PERPLEXITY_TOTAL_CHARS}.",
        examples=[["Solar panels turn sunlight into electricity."]],
    )
    contexts: list[PerplexityText] | None = Field(
        default=None,
        max_length=MAX_PERPLEXITY_TEXTS,
        description="Optional conditioning text per entry of `texts` (for example the prompt "
        "of a prompt/article pair). It is fed to the model but not scored.",
        examples=[["[INST] Write about solar power. [/INST]"]],
    )
    model: str | None = Field(
        default=None,
        max_length=MAX_MODEL_NAME,
        description="Model or adapter; default when absent.",
        examples=["tiny"],
    )

    @field_validator("texts")
    @classmethod
    def _texts_total(cls, value: list[str]) -> list[str]:
        _check_total(sum(len(text) for text in value), "texts")
        return value

    @field_validator("contexts")
    @classmethod
    def _contexts_total(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is not None:
            texts = info.data.get("texts") or []
            _check_total(sum(len(text) for text in [*texts, *value]), "texts and contexts")
        return value

    @model_validator(mode="after")
    def _same_length(self) -> PerplexityRequest:
        if self.contexts is not None and len(self.contexts) != len(self.texts):
            raise ValueError(
                f"contexts must have one entry per text ({len(self.texts)}), "
                f"got {len(self.contexts)}"
            )
        return self


def _check_total(total: int, what: str) -> None:
    if total > MAX_PERPLEXITY_TOTAL_CHARS:
        raise ValueError(
            f"{what} total {total} characters; the limit is {MAX_PERPLEXITY_TOTAL_CHARS}"
        )


class PerplexityResult(BaseModel):
    perplexity: float = Field(description="exp(mean negative log-likelihood).", examples=[12.3])
    mean_nll: float = Field(
        description="Mean negative log-likelihood per token (nats).", examples=[2.51]
    )
    tokens: int = Field(description="Tokens scored.", examples=[42])


class PerplexityResponse(BaseModel):
    model: str = Field(description="Model or adapter that scored.", examples=["tiny"])
    results: list[PerplexityResult] = Field(description="One per text, in order.")


def usage_out(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }
