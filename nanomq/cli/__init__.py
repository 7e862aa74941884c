"""Command-line tools: ``nanomq-broker`` (broker.py) and ``nanomq-cli`` (client.py)."""
