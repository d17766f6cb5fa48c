"""Manifest text as the API server would take it: YAML with no duplicate keys, and objects
no larger than etcd stores.

PyYAML keeps the last of two equal keys, so a manifest showing ``trustRemoteCode: false``
could carry a second ``trustRemoteCode: true`` further down; the API server's strict
decoder refuses that when it sees the raw YAML, and so does ``samp validate`` here.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode

# etcd's default --max-request-bytes (1.5 MiB): a bigger object fails at the API server
# with "etcdserver: request is too large".
MAX_OBJECT_BYTES = 1_572_864


class UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a mapping with the same key twice."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConstructorError(
                    None, None,
                    f"duplicate key {key!r} (first on line {seen[key]}, again on line {line}); "
                    "keep one: the API server would keep only the last",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_documents(text: str) -> list[Any]:
    """Every non-empty YAML document of ``text``; raises yaml.YAMLError on a duplicate key."""
    return [doc for doc in yaml.load_all(text, Loader=UniqueKeyLoader) if doc is not None]


def object_bytes(document: Any) -> int:
    """Size of the document as the JSON the API server stores."""
    return len(json.dumps(document, separators=(",", ":"), default=str).encode("utf-8"))
