"""Call the guardrail proxy with the OpenAI Python SDK, plain and streamed.

Start the proxy first, for example in embedded mode::

    guardrail serve --embedded --policy-dir policies --port 8080

then run ``python integrations/openai_sdk.py``. The only change from calling
OpenAI or vLLM directly is ``base_url``; the model name selects the policy.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from openai import OpenAI
from support_tools import SYSTEM, TOOLS, USER


def run(
    base_url: str, *, model: str = "support-agent", max_tokens: int = 64
) -> dict[str, Any]:
    """Ask for one tool call, plain and streamed; return both calls."""
    client = OpenAI(base_url=base_url, api_key="not-checked-by-this-proxy")
    request: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": USER},
        ],
        "tools": TOOLS,
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_tokens": max_tokens,
        "temperature": 0,
    }

    response = client.chat.completions.create(**request)
    message = response.choices[0].message
    plain = [
        {"name": call.function.name, "arguments": json.loads(call.function.arguments)}
        for call in message.tool_calls or []
    ]

    # Tool-call deltas arrive as in the OpenAI API: the name first, then the
    # arguments in pieces, keyed by the call's index.
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    for chunk in client.chat.completions.create(**request, stream=True):
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                if delta.function and delta.function.name:
                    names[delta.index] = delta.function.name
                if delta.function and delta.function.arguments:
                    arguments[delta.index] = (
                        arguments.get(delta.index, "") + delta.function.arguments
                    )
    streamed = [
        {"name": names[index], "arguments": json.loads(arguments.get(index, "{}"))}
        for index in sorted(names)
    ]

    return {
        "plain": plain,
        "streamed": streamed,
        "finish_reason": response.choices[0].finish_reason,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    parser.add_argument("--model", default="support-agent")
    parser.add_argument("--max-tokens", type=int, default=64)
    options = parser.parse_args()
    result = run(options.base_url, model=options.model, max_tokens=options.max_tokens)
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
