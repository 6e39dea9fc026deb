"""Command-line flags generated from dataclass configs, so ``--help`` shows the config itself.

:func:`add_config_flags` adds one flag per leaf field of a :class:`~audiomaepp.settings.ConfigTree`
(nested sections flattened: a section's fields keep their own names), one argument group per
section. A field's annotation gives the flag's form:

* ``int`` / ``float`` / ``str``; ``int | None`` and ``float | None`` also take ``none``;
* ``Literal[...]`` (the configs' validation types): ``choices``;
* ``bool`` (and ``bool | None``): ``--x`` / ``--no-x``;
* ``tuple[float, float]``: two values; ``list[str]``: one or more;
* ``dict``: a repeatable ``KEY=VALUE`` (VALUE parsed as JSON, else kept as text).

The help text is the field's reason (``knob(default, reason)``) and its default. Flags have no
argparse default: only the flags given change the config, so a ``--config`` file keeps the rest
(:func:`config_from_args`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from ..settings import ConfigTree, literal_choices, reason

T = TypeVar("T", bound=ConfigTree)
_NONE = "none"  # the value that sets an optional number to None
_METAVARS = {int: "N", float: "X", str: "TEXT"}


def flag_name(f: dataclasses.Field) -> str:
    """``--field-name``, or the field's own ``flag``."""
    return str(f.metadata.get("flag", "--" + f.name.replace("_", "-")))


def add_config_flags(parser: argparse.ArgumentParser, cls: type[ConfigTree]) -> None:
    """One flag per leaf field of ``cls`` (dest: the field's name), grouped by section."""
    sections = cls.sections()
    group = parser.add_argument_group(_title(cls))
    types_ = cls.field_types()
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in sections:
            add_config_flags(parser, sections[f.name])
        else:
            add_field_flag(group, f, types_[f.name], dest=f.name, default=_default(f))


def add_field_flags(
    group: argparse._ActionsContainer,
    cls: type,
    names: tuple[str, ...],
    into: str | None = None,
    prefix: str = "",
) -> None:
    """Flags for the fields ``names`` of dataclass ``cls`` outside a config tree: with ``into``,
    values go into that dict field of a config (dest ``into.name``: model fields set on a
    preset); else flag ``--<prefix><name>`` with dest ``<prefix><name>`` (default None)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for name in names:
        f = fields[name]
        if into is not None:
            add_field_flag(group, f, hints[name], dest=f"{into}.{name}", default=_default(f))
        else:
            dest = prefix.replace("-", "_") + name
            flag = "--" + dest.replace("_", "-")
            add_field_flag(group, f, hints[name], dest=dest, default=_default(f), flag=flag)


def add_field_flag(
    group: argparse._ActionsContainer,
    f: dataclasses.Field,
    tp: Any,
    dest: str,
    default: Any,
    flag: str | None = None,
) -> None:
    """The flag of one field (see the module docstring for the forms)."""
    text = reason(f)
    if not text:
        raise TypeError(f"{f.name}: a config field needs a reason (knob(default, reason))")
    kwargs: dict[str, Any] = {"dest": dest, "help": _help(text, default), **_form(f.name, tp)}
    if "metavar" in f.metadata:
        kwargs["metavar"] = f.metadata["metavar"]
    group.add_argument(flag or flag_name(f), **kwargs)


def _form(name: str, tp: Any) -> dict[str, Any]:
    """argparse keywords for a field of type ``tp``."""
    choices = literal_choices(tp)
    if choices is not None:
        return {"choices": [c for c in choices if c is not None]}
    base, optional = _strip_none(tp)
    origin = typing.get_origin(base)
    if base is bool:
        return {"action": argparse.BooleanOptionalAction}
    if base in (int, float):
        return {"type": _optional(base) if optional else base, "metavar": _METAVARS[base]}
    if base is str:
        return {"type": str, "metavar": name.upper()}
    if origin is tuple:
        args = typing.get_args(base)
        return {"type": args[0], "nargs": len(args), "metavar": (_METAVARS[args[0]],) * len(args)}
    if origin is list:
        return {"type": typing.get_args(base)[0], "nargs": "+", "metavar": name.upper()}
    if origin is dict or base is dict:
        return {"action": "append", "type": _key_value, "metavar": "FIELD=VALUE"}
    raise TypeError(f"{name}: no command-line form for type {tp!r}")


def _strip_none(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(tp, False)``."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _optional(kind: type) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() == _NONE else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error message
    return parse


def _key_value(item: str) -> tuple[str, Any]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{item!r}: expected FIELD=VALUE")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value  # bare strings: block=vanilla


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _help(text: str, default: Any) -> str:
    if isinstance(default, bool):
        shown = "on" if default else "off"
    elif default is None:
        shown = _NONE
    elif default == "":
        shown = "''"
    elif isinstance(default, (tuple, list)):
        shown = " ".join(str(v) for v in default)
    elif isinstance(default, dict):
        shown = json.dumps(default) if default else "{}"
    else:
        shown = str(default)
    return f"{text} [default: {shown}]".replace("%", "%%")  # argparse formats help with %


def _title(cls: type) -> str:
    return (cls.__doc__ or cls.__name__).strip().splitlines()[0].rstrip(".")


# ---- from parsed flags to a config ---------------------------------------------------------------
def leaf_types(cls: type[ConfigTree]) -> dict[str, Any]:
    """Every leaf field of the tree -> its type (sections flattened)."""
    out: dict[str, Any] = {}
    sections = cls.sections()
    for name, tp in cls.field_types().items():
        out.update(leaf_types(sections[name]) if name in sections else {name: tp})
    return out


def given_changes(args: argparse.Namespace, cls: type[ConfigTree]) -> dict[str, Any]:
    """The config fields the command line set: ``{name: value}`` (flat names); for a dict field
    ``{name: {key: value}}`` from its ``KEY=VALUE`` flag and its per-entry flags (``name.key``)."""
    kinds = leaf_types(cls)
    out: dict[str, Any] = {}
    for dest, value in vars(args).items():
        name, _, key = dest.partition(".")
        if name not in kinds:
            continue
        if key:  # one entry of a dict field, set by its own flag (add_field_flags)
            out.setdefault(name, {})[key] = value
        elif typing.get_origin(_strip_none(kinds[name])[0]) is dict:
            out.setdefault(name, {}).update(dict(value))  # repeated KEY=VALUE
        else:
            out[name] = value
    return out


def config_from_args(cls: type[T], args: argparse.Namespace, file_dest: str = "config") -> T:
    """``cls`` defaults <- the JSON file ``args.<file_dest>`` (if given) <- the flags given."""
    file = getattr(args, file_dest, None)
    cfg = cls.from_json(Path(file)) if file else cls()
    changes = given_changes(args, cls)
    for name, value in list(changes.items()):
        if isinstance(value, dict):  # dict fields: entries merged over the file's
            current = _get(cfg, name)
            changes[name] = {**current, **value}
    return cfg.replace(**changes)


def _get(cfg: ConfigTree, name: str) -> Any:
    section = type(cfg).flat_names()[name]
    return getattr(getattr(cfg, section) if section else cfg, name)
