"""An OpenAI Agents SDK agent served through the guardrail proxy.

The agent uses the Chat Completions model class with an ``AsyncOpenAI``
client pointed at the proxy. ``tool_choice="required"`` with
``tool_use_behavior="stop_on_first_tool"`` makes the run one guarded tool
call whose result is the final output. Tracing is off, because its exporter
would send spans to OpenAI's servers.

Run the proxy (``guardrail serve --embedded --policy-dir policies``), then
``python integrations/openai_agents.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from openai import AsyncOpenAI
from support_tools import SYSTEM, USER, search_orders


@function_tool(name_override="search_orders")
def search_orders_tool(customer_id: str) -> str:
    """Find a customer's orders.

    Args:
        customer_id: Customer id such as C123456.
    """
    return search_orders(customer_id)


@function_tool(name_override="refund_order")
def refund_order_tool(order_id: str, amount: float, reason: str) -> str:
    """Refund an order, fully or in part."""
    return f"Refunded {amount} dollars for {order_id} ({reason})."


@function_tool(name_override="delete_customer")
def delete_customer_tool(customer_id: str) -> str:
    """Delete a customer account and all its data."""
    return f"Deleted {customer_id}."


async def run_agent(
    base_url: str, *, model: str = "support-agent", max_tokens: int = 64
) -> dict[str, Any]:
    """Run the agent once; return the final output and the calls made."""
    set_tracing_disabled(True)
    client = AsyncOpenAI(base_url=base_url, api_key="not-checked-by-this-proxy")
    agent = Agent(
        name="support",
        instructions=SYSTEM,
        model=OpenAIChatCompletionsModel(model=model, openai_client=client),
        tools=[search_orders_tool, refund_order_tool, delete_customer_tool],
        model_settings=ModelSettings(
            tool_choice="required",
            parallel_tool_calls=False,
            temperature=0,
            max_tokens=max_tokens,
        ),
        tool_use_behavior="stop_on_first_tool",
    )

    result = await Runner.run(agent, USER, max_turns=2)
    calls = [
        {"name": item.raw_item.name, "arguments": json.loads(item.raw_item.arguments)}
        for item in result.new_items
        if item.type == "tool_call_item"
    ]
    return {"final_output": str(result.final_output), "calls": calls}


def run(base_url: str, **options: Any) -> dict[str, Any]:
    return asyncio.run(run_agent(base_url, **options))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    parser.add_argument("--model", default="support-agent")
    options = parser.parse_args()
    result = run(options.base_url, model=options.model)
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
