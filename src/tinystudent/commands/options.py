"""Command-line options generated from a pydantic config, so that each option's name, type,
default, allowed values and help are written once: in the config's fields."""

from __future__ import annotations

import functools
import inspect
import types
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, Optional, Union, get_args, get_origin

import typer
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

_SCALARS = (bool, int, float, str)


@dataclass(frozen=True)
class ConfigOption:
    """One config field as a command-line option.

    Attributes:
        path: the field's dotted path in the config (`batch_size`, `lora.rank`).
        field: the pydantic field.
        comma_list: the field also takes a list of strings, given as one comma-separated value.
    """

    path: str
    field: FieldInfo
    comma_list: bool

    @property
    def name(self) -> str:
        """The command's parameter name (`lora_rank`); the option is its kebab case (`--lora-rank`)."""
        return self.path.replace(".", "_")

    def value(self, typed):
        """The option's value as the config field takes it."""
        if self.comma_list and isinstance(typed, str):
            return [part.strip() for part in typed.split(",") if part.strip()]
        return typed

    def parameter(self, alias: str | None, ranges: bool = False) -> inspect.Parameter:
        """The typer parameter: the field's type, default and description; `alias` is an older option
        name that keeps working (`--patience` for `--early-stopping-patience`); with `ranges`, a
        number's closed bounds (ge, le) are typer's too, so its help shows them (`x>=1`)."""
        cli_type = _cli_type(self.field.annotation)
        names = ["--" + self.name.replace("_", "-")] + ([alias] if alias else [])
        if cli_type is bool:
            names = [f"{name}/--no-{name[2:]}" for name in names]
        default = self.field.get_default(call_default_factory=True)
        if isinstance(default, list):
            default = ",".join(default)
        shown: bool | str = True
        if isinstance(default, str) and "\n" in default:  # shown escaped: a newline would break the layout
            shown = default.encode("unicode_escape").decode()
        bounds = self._bounds() if ranges else {}
        option = typer.Option(
            default, *names, help=self.field.description, show_default=shown, callback=self._check(), **bounds
        )
        annotation = cli_type if default is not None else Optional[cli_type]
        return inspect.Parameter(self.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)

    def _bounds(self) -> dict[str, Any]:
        """The field's closed bounds (ge, le) as typer.Option's min and max; an open one (gt, lt),
        which typer cannot show, is left to the check."""
        bounds: dict[str, Any] = {}
        for constraint in self.field.metadata:
            for name, key in (("ge", "min"), ("le", "max")):
                if getattr(constraint, name, None) is not None:
                    bounds[key] = getattr(constraint, name)
        return bounds

    def _check(self) -> Callable[[Any], Any]:
        """A typer callback that checks a value against the field's own constraints (ge, lt, ...),
        so that a bad value fails naming the option rather than the config key."""
        metadata = tuple(self.field.metadata)
        annotation: Any = self.field.annotation
        adapter: TypeAdapter = TypeAdapter(Annotated[(annotation, *metadata)] if metadata else annotation)

        def check(typed):
            if typed is not None:
                try:
                    adapter.validate_python(self.value(typed))
                except ValidationError as err:
                    raise typer.BadParameter(err.errors()[0]["msg"]) from None
            return typed

        return check


def _cli_type(annotation) -> Any | None:
    """The type typer parses an option of this field type as, or None for a field with no
    command-line form (tuples, lists of pairs, mappings)."""
    union = get_origin(annotation) in (Union, types.UnionType)
    members = [a for a in get_args(annotation) if a is not type(None)] if union else [annotation]
    if list[str] in members and all(m in (str, list[str]) for m in members):
        return str
    if len(members) == 1 and (members[0] in _SCALARS or get_origin(members[0]) is Literal):
        return members[0]
    return None


def config_fields(model: type[BaseModel], skip: tuple[str, ...] = (), prefix: str = "") -> list[ConfigOption]:
    """The fields of `model` that have a command-line form, nested models' fields included
    (`lora.rank`), except those in `skip` (dotted paths)."""
    found = []
    for field_name, field in model.model_fields.items():
        path = prefix + field_name
        if path in skip:
            continue
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            found += config_fields(field.annotation, skip, f"{path}.")
        elif _cli_type(field.annotation) is not None:
            found.append(ConfigOption(path, field, list[str] in get_args(field.annotation)))
    return found


def _on_command_line(context: typer.Context, name: str) -> bool:
    """Whether the user gave the option (rather than leaving it at its default)."""
    source = context.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
    """`{"lora.rank": 4}` -> `{"lora": {"rank": 4}}`."""
    nested: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split(".")
        branch = nested
        for parent in parents:
            branch = branch.setdefault(parent, {})
        branch[leaf] = value
    return nested


def config_options(
    model: type[BaseModel],
    into: str,
    skip: tuple[str, ...] = (),
    aliases: dict[str, str] | None = None,
    ranges: bool = False,
):
    """Decorate a typer command so that every field of `model` with a command-line form is one of
    its options, in place of its parameter `into`.

    A field `batch_size` becomes `--batch-size` and a nested model's field `lora.rank` becomes
    `--lora-rank`, typed as the field (a Literal's values are the choices, a bool is `--x/--no-x`,
    a field that takes a list of strings is one comma-separated value), with the field's default
    and its description as help. A value is checked against the field's constraints, so a bad one
    fails with one line naming the option. Fields of other types stay settable in a config file.

    The command receives in `into` only the options typed on the command line, as a nested dict of
    field values (`{"batch_size": 2, "lora": {"rank": 4}}`), so that options left at their
    default do not override a config file.

    Several configs make options of one command when it is decorated once per config (the
    `teach` command: a local teacher's settings and a server teacher's).

    Args:
        model: the config class.
        into: the command's parameter that receives the options given.
        skip: dotted field paths that get no option (the command has its own for them).
        aliases: dotted field path -> an older option name that keeps working.
        ranges: show each number's closed bounds in its help (`[x>=1]`), checked by typer as well.
    """
    aliases = aliases or {}
    fields = config_fields(model, skip)

    def decorate(command):
        signature = inspect.signature(command, eval_str=True)
        names = list(signature.parameters)
        clash = {o.name for o in fields} & set(names)
        if into not in names or clash:
            raise TypeError(f"{command.__name__}: needs a parameter {into!r}, and none named like a field {clash}")
        # keyword-only: typer passes every value by name, and the options may then sit anywhere
        parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in signature.parameters.values()]
        options = [o.parameter(aliases.get(o.path), ranges) for o in fields]
        at = names.index(into)
        parameters[at : at + 1] = options  # the options are listed where `into` was
        stacked = "click_context" in names  # under another config_options: it takes the context too
        context = inspect.Parameter("click_context", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)

        @functools.wraps(command)
        def wrapper(*, click_context: typer.Context, **kwargs):
            chosen = {}
            for option in fields:
                value = kwargs.pop(option.name)
                if _on_command_line(click_context, option.name):
                    chosen[option.path] = option.value(value)
            if stacked:
                kwargs["click_context"] = click_context
            return command(**kwargs, **{into: _nested(chosen)})

        new_signature = signature.replace(parameters=parameters if stacked else [*parameters, context])
        wrapper.__signature__ = new_signature  # type: ignore[attr-defined]  # typer reads the options from it
        wrapper.__annotations__ = {p.name: p.annotation for p in new_signature.parameters.values()}
        return wrapper

    return decorate
