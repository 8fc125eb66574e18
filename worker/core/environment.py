"""Settings from the environment: ``LOGIT_ROUTER_KAFKA__BOOTSTRAP_SERVERS=broker:9092`` becomes
``{"kafka": {"bootstrap_servers": "broker:9092"}}``, laid over the TOML file.

A name is the prefix and a path with ``__`` between its steps. A step that names a field
matches in any case (the documented names are upper case); a step that is a key of a mapping,
a topic name, is kept exactly as written, capitals, dots and dashes included:
``LOGIT_ROUTER_TOPICS__Support-Intents__MIN_MARGIN=0.5`` sets the ``min_margin`` of the topic
``Support-Intents``. As with the file, such a variable for a topic the file does not name adds
that topic, under exactly that name, with the defaults for what it does not set; one that
differs from a topic of the file only in case is a typo, which ``load_settings`` refuses.

The file's values are typed by TOML and held to strict types; the environment only has strings.
So a string is read here as its field's type: a number or a bool as pydantic reads one from
text, a section, mapping or list as JSON. A string that does not read is passed on as it is,
and the model refuses it, naming the field and the value.
"""

from __future__ import annotations

import json
import os
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from worker.core.errors import ConfigError

DELIMITER = "__"

_SCALARS: dict[Any, TypeAdapter[Any]] = {kind: TypeAdapter(kind) for kind in (bool, int, float)}
_CONTAINERS = (dict, list, tuple, set, frozenset)


class EnvironmentSource(PydanticBaseSettingsSource):
    """The variables that start with ``prefix`` (in any case), as nested settings."""

    def __init__(self, settings_cls: type[BaseSettings], prefix: str) -> None:
        super().__init__(settings_cls)
        self.prefix = prefix.upper()

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        # Not used: __call__ reads every variable at once, since the whole path decides how
        # each step of a name is matched.
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name, text in os.environ.items():
            if not name.upper().startswith(self.prefix):
                continue
            _refuse_undecodable(name, text)
            placed = _place(self.settings_cls, name[len(self.prefix) :].split(DELIMITER))
            if placed is None:
                continue
            keys, annotation = placed
            node = found
            for key in keys[:-1]:
                node = node.setdefault(key, {})
                if not isinstance(node, dict):  # the section was set whole, to no mapping
                    break
            else:
                node[keys[-1]] = _read(text, annotation)
        return found


def _refuse_undecodable(name: str, text: str) -> None:
    """``ConfigError`` for a variable whose name or value is not UTF-8.

    Python keeps such bytes as lone surrogates, which pass as text until something encodes
    them (a metric's label, a Kafka header) and fails far from the cause. The value is not
    quoted: it may be a secret.
    """
    for part, what in ((name, "its name"), (text, "its value")):
        try:
            part.encode("utf-8")
        except UnicodeEncodeError:
            shown = os.fsencode(name).decode("ascii", "backslashreplace")
            raise ConfigError(f"environment variable {shown}: {what} is not UTF-8 text") from None


def _place(settings_cls: type[BaseModel], steps: list[str]) -> tuple[list[str], Any] | None:
    """The keys a variable's steps stand for, and the type of the value at the end of them.

    ``None`` for a name that is no setting at the top level (the prefix is shared with the dev
    kit's own variables, ``LOGIT_ROUTER_BROKER``); an unknown name inside a section is kept, so
    that the model refuses it by name.
    """
    keys: list[str] = []
    annotation: Any = settings_cls
    depth = 0
    while depth < len(steps):
        kind = _unwrap(annotation)
        if get_origin(kind) is dict:
            value = get_args(kind)[1]
            # A topic name, exactly as written. It ends where the steps left name a path of
            # the topic's section (``NAME__SHADOW__MIN_MARGIN``), the first such place, so that
            # a name with ``__`` in it is read whole; else before the last step, which the
            # model then refuses by name.
            end = depth + 1
            if _fields(_unwrap(value)) and len(steps) - depth > 1:
                ends = range(depth + 1, len(steps))
                end = next((e for e in ends if _names_a_path(value, steps[e:])), len(steps) - 1)
            keys.append(DELIMITER.join(steps[depth:end]))
            annotation, depth = value, end
            continue
        field = _fields(kind).get(steps[depth].lower())
        if field is None:
            return None if depth == 0 else ([*keys, *(s.lower() for s in steps[depth:])], None)
        keys.append(steps[depth].lower())
        annotation, depth = field.annotation, depth + 1
    return keys, annotation


def _names_a_path(annotation: Any, steps: list[str]) -> bool:
    """Whether ``steps`` name fields, section by section, from ``annotation`` down."""
    for step in steps:
        field = _fields(_unwrap(annotation)).get(step.lower())
        if field is None:
            return False
        annotation = field.annotation
    return True


def _read(text: str, annotation: Any) -> Any:
    kind = _unwrap(annotation)
    try:
        if kind in _SCALARS:
            return _SCALARS[kind].validate_python(text)
        if _fields(kind) or get_origin(kind) in _CONTAINERS or kind in _CONTAINERS:
            return json.loads(text)
    except ValueError:  # pydantic's and json's errors alike: the model will name the field
        return text
    return text


def _unwrap(annotation: Any) -> Any:
    """The type under ``Annotated[...]`` and ``... | None``."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin is Union or origin is types.UnionType:
            options = [a for a in get_args(annotation) if a is not type(None)]
            if len(options) != 1:
                return annotation
            annotation = options[0]
        else:
            return annotation


def _fields(kind: Any) -> dict[str, FieldInfo]:
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return kind.model_fields
    return {}
