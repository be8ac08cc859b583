"""The `training` blocks of an experiment, typed: changes to `TrainConfig`'s defaults, each key
checked against its field when the experiment is loaded, and kept as written."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Annotated, Any, Optional

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, create_model, model_serializer, model_validator

from tinystudent.distill.config import TrainConfig


class _TrainingChangesBase(BaseModel):
    """Changes to the training config's defaults (`TrainConfig`), each key checked against its
    field when the experiment is loaded: an unknown key or a bad value is an error naming it.

    The block is kept as written, too: it is what units are keyed by and what the study records,
    so `epochs: 2` stays 2 (not 2.0) and studies run before it was typed resume."""

    model_config = ConfigDict(extra="forbid")
    _written: dict = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _remember_as_written(cls, data, handler):
        changes = handler(data)
        if isinstance(data, dict):
            changes._written = copy.deepcopy(data)
        return changes

    @model_serializer(mode="plain")
    def _dump_as_written(self) -> dict:
        return copy.deepcopy(self._written)

    def as_written(self) -> dict:
        """The block as the YAML (and its overrides) gave it."""
        return copy.deepcopy(self._written)


def _optional(field) -> tuple:
    """A `TrainConfig` field, unset by default, with its checks (`ge=1`, ...) kept."""
    annotation = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    return Optional[annotation], Field(None, description=field.description)


if TYPE_CHECKING:
    TrainingChanges = _TrainingChangesBase
else:
    _CHANGES: dict[str, Any] = {name: _optional(field) for name, field in TrainConfig.model_fields.items()}
    TrainingChanges = create_model("TrainingChanges", __base__=_TrainingChangesBase, **_CHANGES)


__all__ = ["TrainingChanges"]
