"""What a model's tokens cost, for the llm_calls table and the TUI's header.

US dollars per million tokens (input, output), from the providers' public price pages as of
late 2025. A model not listed has no price: its cost is recorded as unknown (null), never
guessed, not even from a sibling release. Matched by the longest listed prefix, so a dated
snapshot ("claude-sonnet-4-5-20250929") finds its release."""

from __future__ import annotations

PER_MILLION: dict[str, tuple[float, float]] = {
    # Anthropic
    "claude-opus-4-5": (5.0, 25.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-opus-4-2025": (15.0, 75.0),
    "claude-sonnet-4-5": (3.0, 15.0),
    "claude-sonnet-4-2025": (3.0, 15.0),
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-3-7-sonnet": (3.0, 15.0),
    "claude-3-5-haiku": (0.8, 4.0),
    # OpenAI
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.0, 8.0),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.5, 10.0),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-5-mini": (0.25, 2.0),
    "gpt-5": (1.25, 10.0),
    "o4-mini": (1.10, 4.40),
    "o3": (2.0, 8.0),
}


def cost_usd(model: str, input_tokens: int | None, output_tokens: int | None) -> float | None:
    """The call's cost, or None when the model's price or the token counts are unknown."""
    if input_tokens is None or output_tokens is None:
        return None
    matches = [prefix for prefix in PER_MILLION if model.startswith(prefix)]
    if not matches:
        return None
    price_in, price_out = PER_MILLION[max(matches, key=len)]
    return (input_tokens * price_in + output_tokens * price_out) / 1e6
