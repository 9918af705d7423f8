"""YAML and JSON for user files (configs, hints): a key given twice is an error, not silently
last-wins, and nesting deep enough to exhaust the parser's recursion is a clear error too."""
from __future__ import annotations

import json
from typing import Any

import yaml
from yaml.constructor import ConstructorError

MAX_DEPTH = 100  # far deeper than any config or hints file; the parsers recurse per level


class TooDeep(ValueError):
    """The document nests more than MAX_DEPTH levels."""


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable: the base class reports it
                continue
            if duplicate:
                raise ConstructorError("while reading a mapping", node.start_mark,
                                       f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _check_depth(text: str, what: str) -> None:
    """Bracket depth counted without recursion, before a recursive parser sees the text."""
    depth = 0
    for char in text:
        if char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise TooDeep(f"{what} nests more than {MAX_DEPTH} levels deep")
        elif char in "]}":
            depth = max(0, depth - 1)


def load_yaml(text: str) -> Any:
    """yaml.safe_load, with duplicate keys an error (a yaml.YAMLError with a mark) and deep
    nesting a TooDeep."""
    _check_depth(text, "the YAML")
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except RecursionError:  # block-style nesting, which brackets do not count
        raise TooDeep(f"the YAML nests too deep (more than {MAX_DEPTH} levels is never needed)") from None


def load_json(text: str) -> Any:
    """json.loads, with duplicate keys an error (ValueError) and deep nesting a TooDeep."""
    _check_depth(text, "the JSON")

    def unique(pairs: list[tuple[str, Any]]) -> dict:
        out: dict = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"key {key!r} is given twice")
            out[key] = value
        return out

    return json.loads(text, object_pairs_hook=unique)
