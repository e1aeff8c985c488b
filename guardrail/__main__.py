"""Run the CLI with ``python -m guardrail``."""

from guardrail.cli.main import main

main()
