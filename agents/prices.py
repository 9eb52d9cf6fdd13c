"""What a model's tokens cost, for the llm_calls table, the TUI's header and --max-cost.

Prices come from `genai-prices` (pydantic's maintained database of model prices, bundled
with the package, so no network is needed): per provider, with cached-input and cache-write
prices and the long-context tiers some models have. A model the database does not know has no
price: its cost is recorded as unknown (null), never guessed.

Which provider's price list applies: with no --base-url, the SDK's own provider. With a
--base-url, the list of the provider behind that URL when the database knows it (OpenRouter,
Together, Groq, ...), else the SDK provider's list for a model of exactly that name (a proxy
such as LiteLLM in front of the provider); a local server's own models match neither."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from genai_prices import Usage, calc_price


@dataclass(frozen=True)
class Tokens:
    """One call's token counts. `input` is every prompt token, cached ones included."""

    input: int
    output: int
    cache_read: int = 0  # prompt tokens read from the provider's cache
    cache_write: int = 0  # prompt tokens written to it (Anthropic charges extra for these)


def cost_usd(provider: str, model: str, base_url: str | None, tokens: Tokens | None) -> float | None:
    """The call's cost in US dollars, or None when the price or the counts are unknown."""
    if tokens is None:
        return None
    usage = Usage(input_tokens=tokens.input, output_tokens=tokens.output,
                  cache_read_tokens=tokens.cache_read or None, cache_write_tokens=tokens.cache_write or None)
    for where in _price_lists(provider, base_url):
        try:
            return float(calc_price(usage, model_ref=model, **dict(where)).total_price)
        except LookupError:
            continue
    return None


def priced(provider: str, model: str, base_url: str | None) -> bool:
    return cost_usd(provider, model, base_url, Tokens(1000, 1000)) is not None


@lru_cache(maxsize=16)
def _price_lists(provider: str, base_url: str | None) -> tuple[tuple[tuple[str, str], ...], ...]:
    if not base_url:
        return ((("provider_id", provider),),)
    return ((("provider_api_url", base_url),), (("provider_id", provider),))
