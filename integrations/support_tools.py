"""The support-agent conversation and tools shared by the examples.

The tool list matches ``policies/support-agent.yaml``: the policy allows
``search_orders`` (customer ids like C123456) and ``refund_order`` (at most
100), and forbids ``delete_customer``, which the model can never call
through the proxy even though the tool is offered.
"""

from __future__ import annotations

from typing import Any

SYSTEM = (
    "You are the support agent of an online shop. Use the tools to help the customer."
)
USER = (
    "Hi, I am customer C123456. Order O-5521 arrived broken. Please refund the "
    "80 dollars I paid for it."
)

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "search_orders",
            "description": "Find a customer's orders.",
            "parameters": {
                "type": "object",
                "properties": {
                    "customer_id": {
                        "type": "string",
                        "description": "Customer id such as C123456",
                    }
                },
                "required": ["customer_id"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "refund_order",
            "description": "Refund an order, fully or in part.",
            "parameters": {
                "type": "object",
                "properties": {
                    "order_id": {"type": "string", "pattern": "^O-[0-9]{4}$"},
                    "amount": {"type": "number", "minimum": 0},
                    "reason": {"type": "string"},
                },
                "required": ["order_id", "amount", "reason"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "delete_customer",
            "description": "Delete a customer account and all its data.",
            "parameters": {
                "type": "object",
                "properties": {"customer_id": {"type": "string"}},
                "required": ["customer_id"],
            },
        },
    },
]


def search_orders(customer_id: str) -> str:
    """Return the customer's orders as a short text (a fixed sample shop)."""
    return f"Customer {customer_id} has one order: O-5521, 80 dollars, delivered."


def refund_order(order_id: str, amount: float, reason: str) -> str:
    return f"Refunded {amount} dollars for {order_id} ({reason})."


def delete_customer(customer_id: str) -> str:
    return f"Deleted {customer_id}."


FUNCTIONS = {
    "search_orders": search_orders,
    "refund_order": refund_order,
    "delete_customer": delete_customer,
}
