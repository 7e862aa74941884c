"""Read spec/budgets.toml, the machine-readable home of every performance budget."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

BUDGETS_PATH = Path(__file__).resolve().parents[1] / "spec" / "budgets.toml"


def load(section: str) -> dict[str, Any]:
    """The budgets of one section (``codec``, ``ipc``, ``log`` …); empty if the section is absent."""
    with BUDGETS_PATH.open("rb") as f:
        data: dict[str, Any] = tomllib.load(f)
    return dict(data.get(section, {}))
