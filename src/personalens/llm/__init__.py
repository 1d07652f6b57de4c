"""Chat models: the calling contract, the embedded llama.cpp default, any OpenAI-compatible server, a test double,
structured output, probability scoring, the response cache and usage accounting."""

from personalens.llm.base import (
    ChatModel,
    ChatRequest,
    ChatResult,
    Message,
    TokenLogprobs,
    ToolCall,
    Usage,
    assistant,
    system,
    tool_message,
    user,
)
from personalens.llm.cache import CachedChatModel, ResponseCache
from personalens.llm.scoring import ChoiceScores, rating_choices, score_choices, score_rating
from personalens.llm.structured import JsonAnswer, extract_json, generate_json, validate
from personalens.llm.testing import ScriptedChatModel
from personalens.llm.usage import Budget, UsageMeter

__all__ = [
    "Budget",
    "CachedChatModel",
    "ChatModel",
    "ChatRequest",
    "ChatResult",
    "ChoiceScores",
    "JsonAnswer",
    "Message",
    "ResponseCache",
    "ScriptedChatModel",
    "TokenLogprobs",
    "ToolCall",
    "Usage",
    "UsageMeter",
    "assistant",
    "extract_json",
    "generate_json",
    "rating_choices",
    "score_choices",
    "score_rating",
    "system",
    "tool_message",
    "user",
    "validate",
]
