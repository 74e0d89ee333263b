"""DynamoDB attribute values and expression pieces for the ledger's conditional writes (low-level JSON shape)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def string_attr(value: str) -> dict[str, str]:
    """A string attribute value."""
    return {"S": value}


def number_attr(value: float) -> dict[str, str]:
    """A number attribute value (DynamoDB carries numbers as strings)."""
    return {"N": repr(float(value))}


def map_attr(values: Mapping[str, str]) -> dict[str, Any]:
    """A map attribute of string values."""
    return {"M": {name: string_attr(value) for name, value in values.items()}}


def placeholders(prefix: str, items: tuple[str, ...]) -> str:
    """`:c_<prefix>_0, :c_<prefix>_1, ...` for an IN (...) condition over `items`."""
    return ", ".join(f":c_{prefix}_{index}" for index in range(len(items)))


def condition_values(prefix: str, items: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """The values those placeholders stand for."""
    return {f":c_{prefix}_{index}": string_attr(item) for index, item in enumerate(items)}


def names_in(expression: str) -> list[str]:
    """The attribute names an expression refers to as `#name`."""
    names, index = [], 0
    while (start := expression.find("#", index)) != -1:
        end = start + 1
        while end < len(expression) and (expression[end].isalnum() or expression[end] == "_"):
            end += 1
        names.append(expression[start + 1 : end])
        index = end
    return names
