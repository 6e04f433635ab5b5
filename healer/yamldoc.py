"""YAML documents that remember where every value came from.

Config, policy and (later) drill files are parsed with ruamel.yaml so that a validation
error can point at ``file:line:column`` and the key path, instead of a bare message.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError


@dataclass(frozen=True)
class YamlProblem:
    """One thing wrong with a YAML document, located as precisely as the parser allows."""

    path: str
    line: int
    column: int
    key_path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}:{self.column}"
        return f"{where}: {self.key_path}: {self.message}" if self.key_path else f"{where}: {self.message}"


class YamlDocumentError(Exception):
    """The document could not be read or parsed; ``problems`` says where."""

    def __init__(self, problems: Sequence[YamlProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class YamlDocument:
    path: str
    text: str
    root: Any  # ruamel CommentedMap / CommentedSeq / scalar

    def plain(self) -> Any:
        return to_plain(self.root)

    def locate(self, loc: Sequence[str | int]) -> tuple[int, int]:
        """Best position for a key path: the deepest node of ``loc`` that exists in the file."""
        node: Any = self.root
        line, col = 1, 1
        for part in loc:
            if isinstance(node, CommentedMap) and part in node:
                kline, kcol = node.lc.key(part)
                line, col = kline + 1, kcol + 1
                node = node[part]
            elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
                iline, icol = node.lc.item(part)
                line, col = iline + 1, icol + 1
                node = node[part]
            else:
                break
        return line, col

    def problems_from_validation(
        self, exc: ValidationError, prefix: Sequence[str | int] = ()
    ) -> list[YamlProblem]:
        problems = []
        for err in exc.errors(include_url=False):
            loc = [*prefix, *(p for p in err["loc"] if not _is_pydantic_tag(p))]
            line, col = self.locate(loc)
            problems.append(YamlProblem(self.path, line, col, format_key_path(loc), _clean_msg(err["msg"])))
        return problems


def _is_pydantic_tag(part: Any) -> bool:
    # Discriminated unions add the tag ("http", "process") or a function name to loc;
    # the file has no such key, so it would only confuse the key path.
    return isinstance(part, str) and (part.startswith("function-") or part.endswith("]"))


def _clean_msg(msg: str) -> str:
    return msg.removeprefix("Value error, ")


def format_key_path(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def to_plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k): to_plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [to_plain(v) for v in node]
    return node


def parse_yaml(text: str, path: str) -> YamlDocument:
    yaml = YAML(typ="rt")
    try:
        root = yaml.load(io.StringIO(text))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        what = exc.problem or exc.context or "malformed YAML"
        raise YamlDocumentError([YamlProblem(path, line, col, "", f"malformed YAML: {what}")]) from exc
    except YAMLError as exc:
        raise YamlDocumentError([YamlProblem(path, 1, 1, "", f"malformed YAML: {exc}")]) from exc
    return YamlDocument(path=path, text=text, root=root)


def load_yaml_file(path: Path) -> YamlDocument:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise YamlDocumentError([YamlProblem(str(path), 0, 0, "", "file not found")]) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise YamlDocumentError([YamlProblem(str(path), 0, 0, "", f"cannot read file: {exc}")]) from exc
    return parse_yaml(text, str(path))
