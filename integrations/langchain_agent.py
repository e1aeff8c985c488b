"""A LangChain agent loop over the guardrail proxy with ``ChatOpenAI``.

The loop binds the tools, runs each call the model makes, feeds the results
back as ``ToolMessage`` and stops when the model replies in text or after
``max_steps`` model calls. The first step requires a tool call and later
steps leave the choice to the model; the proxy and its policy decide which
calls can be generated at each step.

Run the proxy (``guardrail serve --embedded --policy-dir policies``), then
``python integrations/langchain_agent.py``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage
from langchain_openai import ChatOpenAI
from support_tools import FUNCTIONS, SYSTEM, TOOLS, USER


def run(
    base_url: str,
    *,
    model: str = "support-agent",
    max_steps: int = 3,
    max_tokens: int = 64,
) -> dict[str, Any]:
    """Run the loop; return the tool calls made and the final text."""
    llm = ChatOpenAI(
        base_url=base_url,
        api_key="not-checked-by-this-proxy",
        model=model,
        temperature=0,
        max_tokens=max_tokens,
        max_retries=0,
    )
    # One call per step keeps each turn short; with parallel calls on, a
    # small model tends to repeat its call until the token limit.
    first_step = llm.bind_tools(
        TOOLS, tool_choice="required", parallel_tool_calls=False
    )
    later_steps = llm.bind_tools(TOOLS, tool_choice="auto", parallel_tool_calls=False)

    messages: list[Any] = [SystemMessage(SYSTEM), HumanMessage(USER)]
    calls: list[dict[str, Any]] = []
    answer = ""
    for step in range(max_steps):
        chat = first_step if step == 0 else later_steps
        reply = chat.invoke(messages)
        messages.append(reply)
        if not reply.tool_calls:
            answer = str(reply.content)
            break
        for call in reply.tool_calls:
            calls.append({"name": call["name"], "arguments": call["args"]})
            result = FUNCTIONS[call["name"]](**call["args"])
            messages.append(ToolMessage(result, tool_call_id=call["id"]))

    return {"calls": calls, "answer": answer, "model_calls": step + 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    parser.add_argument("--model", default="support-agent")
    parser.add_argument("--max-steps", type=int, default=3)
    options = parser.parse_args()
    result = run(options.base_url, model=options.model, max_steps=options.max_steps)
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
