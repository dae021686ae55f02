"""What every input record shares: frozen pydantic models that refuse unknown keys,
numeric fields that refuse strings and booleans, and the range types.

Every record rejects unknown keys (``extra="forbid"``) and checks ranges where it
enters, so the layers below never see a bad number. Loading from files, with file
and line in the errors, is ``gpusim.io``'s job.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

Pos = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNeg = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PosInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0, le=1.5, allow_inf_nan=False)]

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"


def field_error(field: str, message: str) -> PydanticCustomError:
    """A cross-field check's error that names ``field``: raise it in a model
    validator; ``gpusim.io.yamlfile.validate`` reports it at that key (file line, value)."""
    return PydanticCustomError("field_value", message, {"field": field})


def _numeric_kind(annotation: Any) -> str | None:
    """"integer" for an int field, "number" for a float one (None allowed or not),
    None for any other field."""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, types.UnionType):
        args = [get_args(a)[0] if get_origin(a) is Annotated else a
                for a in get_args(annotation)]
    else:
        args = [annotation]
    kinds = {a for a in args if a is not type(None)}
    if kinds == {int}:
        return "integer"
    if kinds and kinds <= {int, float}:
        return "number"
    return None


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """Numeric fields refuse booleans (``true`` would be 1) and strings (``'32'``
        would be 32). Everything else is left to pydantic's lax number validation, so
        ints are fine where floats are expected and records built in code (Python or
        numpy numbers) keep working."""
        if isinstance(value, (bool, str, bytes)) and info.field_name is not None:
            kind = _numeric_kind(cls.model_fields[info.field_name].annotation)
            if kind is not None:
                what = "a boolean" if isinstance(value, bool) else \
                    "a string (write numbers without quotes)"
                raise PydanticCustomError(f"{'int' if kind == 'integer' else 'float'}_type",
                                          f"Input should be a valid {kind}, not {what}")
        return value

