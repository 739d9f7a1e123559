"""The one YAML loader: safe tags only, aliases bounded by what they expand to, short errors.

PyYAML's safe_load builds an alias bomb cheaply (aliases share one object), but anything that walks
the result afterwards — pydantic, json.dumps, an error message's repr — expands it: a 391-byte merge
config took 15 s, 1.15 GB and printed a 226 MB error. Here the composer counts, for every node, how
many nodes it stands for once aliases are expanded, and refuses a document whose expansion passes
MAX_EXPANDED_NODES while it is still being read. Every error message is cut to MAX_ERROR_CHARS.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

# Far above any real config or task file (the largest shipped one expands to a few hundred nodes).
MAX_EXPANDED_NODES = 100_000
MAX_BYTES = 8 << 20
MAX_ERROR_CHARS = 500


class YamlError(yaml.YAMLError, ValueError):
    """YAML that cannot be read safely; also a yaml.YAMLError so existing handlers catch it."""

    def __init__(self, message: str):
        super().__init__(clip(message))


def clip(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit] + f"… [{len(text) - limit} more characters]"


class _BoundedComposer(Composer):
    def compose_document(self):
        self._expanded: dict[int, int] = {}
        return super().compose_document()

    def compose_node(self, parent, index):
        node = super().compose_node(parent, index)
        size = self._expanded.get(id(node))
        if size is None:  # a new node (an alias returns the anchored node, already counted)
            if isinstance(node, yaml.SequenceNode):
                size = 1 + sum(self._expanded.get(id(c), 1) for c in node.value)
            elif isinstance(node, yaml.MappingNode):
                size = 1 + sum(self._expanded.get(id(k), 1) + self._expanded.get(id(v), 1) for k, v in node.value)
            else:
                size = 1
            if size > MAX_EXPANDED_NODES:
                raise YamlError(f"YAML aliases expand to more than {MAX_EXPANDED_NODES} nodes "
                                f"(near line {node.start_mark.line + 1}); refused as an alias bomb")
            self._expanded[id(node)] = size
        return node


class BoundedSafeLoader(Reader, Scanner, Parser, _BoundedComposer, SafeConstructor, Resolver):
    # Pure-Python on purpose: the C loader composes inside libyaml, where nodes cannot be counted.
    def __init__(self, stream):
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        _BoundedComposer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)


def loads(text: str, source: str = "<string>") -> Any:
    """Parse YAML text; YamlError (message ≤ MAX_ERROR_CHARS) on anything unsafe or malformed."""
    if len(text) > MAX_BYTES:
        raise YamlError(f"{source}: {len(text)} characters of YAML is more than the {MAX_BYTES} allowed")
    try:
        return yaml.load(text, Loader=BoundedSafeLoader)  # noqa: S506 - a SafeConstructor loader
    except YamlError as e:
        raise YamlError(f"{source}: {e}") from None
    except (yaml.YAMLError, RecursionError) as e:
        raise YamlError(f"{source}: {type(e).__name__}: {e}") from None


def load_file(path: str | os.PathLike) -> Any:
    path = Path(path)
    if path.stat().st_size > MAX_BYTES:
        raise YamlError(f"{path}: {path.stat().st_size} bytes of YAML is more than the {MAX_BYTES} allowed")
    return loads(path.read_text(), str(path))
