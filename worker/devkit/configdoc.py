"""The configuration reference, written from the settings model itself.

``python -m worker.devkit.configdoc > docs/configuration.md`` walks ``Settings`` generically
(its fields, their annotations, defaults, constraints and descriptions), so a new field shows
up in the reference without an edit here; ``tests/unit/test_configdoc.py`` fails when the
committed file and the model part ways.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import AfterValidator, BaseModel, SecretStr, Strict
from pydantic.fields import FieldInfo

from worker.core.environment import DELIMITER
from worker.core.settings import ENV_PREFIX, Settings

COMMAND = "python -m worker.devkit.configdoc > docs/configuration.md"
PLACEHOLDER = "NAME"  # stands for a key of a table of tables, e.g. an input topic's name

_TYPE_NAMES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    Path: "path",
    SecretStr: "secret string",
}


@dataclass(frozen=True)
class Row:
    key: str  # the TOML key path, e.g. kafka.bootstrap_servers
    env: str  # the environment variable
    kind: str  # type and constraints
    default: str
    description: str


@dataclass(frozen=True)
class Section:
    path: tuple[str, ...]
    about: str
    rows: list[Row]


def _toml(value: Any) -> str:
    """A value as it would be written in the TOML file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:_}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def _constraints(metadata: Sequence[Any]) -> list[str]:
    out: list[str] = []
    for m in metadata:
        if isinstance(m, FieldInfo):
            out += _constraints(m.metadata)
        elif isinstance(m, at.Gt):
            out.append(f"> {_toml(m.gt)}")
        elif isinstance(m, at.Ge):
            out.append(f"≥ {_toml(m.ge)}")
        elif isinstance(m, at.Lt):
            out.append(f"< {_toml(m.lt)}")
        elif isinstance(m, at.Le):
            out.append(f"≤ {_toml(m.le)}")
        elif isinstance(m, at.MinLen):
            out.append("not empty" if m.min_length == 1 else f"at least {m.min_length} items")
        elif isinstance(m, at.MaxLen):
            out.append(f"at most {m.max_length} items")
        elif isinstance(m, AfterValidator):
            doc = (m.func.__doc__ or "").strip().splitlines()
            out.append(doc[0] if doc else getattr(m.func, "__name__", "checked").strip("_"))
        elif isinstance(m, Strict):
            continue  # strict types are the rule for every number and switch (see the README)
        elif type(m).__name__ == "PathType":
            out.append(f"an existing {m.path_type}")
        else:
            out.append(str(m))
    return out


def _type(tp: Any) -> tuple[str, list[str]]:
    """A type in words, and the constraints carried inside it (``Annotated``)."""
    origin = get_origin(tp)
    if origin is Annotated:
        base, *meta = get_args(tp)
        name, cons = _type(base)
        return name, cons + _constraints(meta)
    if origin is Union or origin is types.UnionType:
        parts = [_type(a) for a in get_args(tp) if a is not type(None)]
        return " or ".join(p[0] for p in parts), [c for p in parts for c in p[1]]
    if origin is Literal:
        return "one of " + ", ".join(f"`{_toml(v)}`" for v in get_args(tp)), []
    if origin in (tuple, list):
        return f"list of {_type(get_args(tp)[0])[0]}s", []
    return _TYPE_NAMES.get(tp, getattr(tp, "__name__", str(tp))), []


def _model_of(tp: Any) -> tuple[type[BaseModel] | None, bool]:
    """The model a field holds (an optional table too), and whether it holds a table of them
    keyed by name."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp, False
    if get_origin(tp) in (Union, types.UnionType):
        models = [a for a in get_args(tp) if a is not type(None)]
        if len(models) == 1:
            return _model_of(models[0])
    if get_origin(tp) is dict:
        value = get_args(tp)[1]
        if isinstance(value, type) and issubclass(value, BaseModel):
            return value, True
    return None, False


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    return "unset" if value is None else f"`{_toml(value)}`"


def _key(path: Sequence[str]) -> str:
    """A key path as the TOML file writes it: ``topics."NAME".temperature``."""
    return ".".join(f'"{p}"' if p == PLACEHOLDER else p for p in path)


def _env_naming() -> tuple[str, str]:
    """The environment variables' prefix and nesting delimiter, as the worker reads them."""
    return ENV_PREFIX, DELIMITER


def _about(info: FieldInfo | None, model: type[BaseModel]) -> str:
    text = (info.description if info is not None else None) or model.__doc__ or ""
    return " ".join(text.split("\n\n")[0].split())


def sections(
    model: type[BaseModel] = Settings,
    path: tuple[str, ...] = (),
    info: FieldInfo | None = None,
) -> Iterator[Section]:
    """Every table of the config, depth first, with a row per plain field."""
    prefix, delimiter = _env_naming()
    rows: list[Row] = []
    nested: list[tuple[type[BaseModel], tuple[str, ...], FieldInfo]] = []
    for name, field in model.model_fields.items():
        inner, keyed = _model_of(field.annotation)
        if inner is not None:
            nested.append((inner, (*path, name, PLACEHOLDER) if keyed else (*path, name), field))
            continue
        kind, cons = _type(field.annotation)
        cons += _constraints(field.metadata)
        env = delimiter.join(p if p == PLACEHOLDER else p.upper() for p in (*path, name))
        rows.append(
            Row(
                key=f"`{_key((*path, name))}`",
                env=f"`{prefix}{env}`",
                kind=", ".join([kind, *cons]),
                default=_default(field),
                description=" ".join((field.description or "").split()),
            )
        )
    if rows or path:
        yield Section(path, _about(info, model), rows)
    for inner, inner_path, field in nested:
        yield from sections(inner, inner_path, field)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    prefix, delimiter = _env_naming()
    lines = [
        "# Configuration reference",
        "",
        f"<!-- Generated from worker/core/settings.py by `{COMMAND}`;",
        "     edit the descriptions there, not here. -->",
        "",
        "The worker reads a TOML file (`--config FILE`; `config/example.toml` is a start), then",
        "the environment, which wins. A variable's name is the key path in capitals after",
        f"`{prefix}`, with `{delimiter}` between levels; a list is written as JSON",
        f'(`{prefix}TOPICS{delimiter}{PLACEHOLDER}{delimiter}LABELS=\'["a", "b"]\'`).',
        f"`{PLACEHOLDER}` stands for a name you choose, such as an input topic's. Key names match",
        f"in any case, but `{PLACEHOLDER}` is kept exactly as written, since Kafka's topic names",
        f"are case-sensitive: `{prefix}TOPICS{delimiter}Support-Intents{delimiter}MIN_MARGIN`",
        "sets the topic `Support-Intents`. A variable for a topic the file does not have adds",
        "that topic, with the defaults for what it does not set; one whose name differs from a",
        "topic of the file only in case is refused as a typo. A bad value stops the worker at",
        "start (exit 2), naming the key and the value; secrets are masked.",
        "",
    ]
    for section in sections():
        heading = _key(section.path)
        lines += [f"## `[{heading}]`" if heading else "## Top level", ""]
        if section.about:
            lines += [section.about, ""]
        if not section.rows:
            continue
        lines += [
            "| key | environment variable | type | default | description |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [
            "| "
            + " | ".join(_cell(c) for c in (r.key, r.env, r.kind, r.default, r.description))
            + " |"
            for r in section.rows
        ]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
