"""The bases of every API model: what a user writes (:class:`Spec`) and what the operator
writes (:class:`Status`), and :func:`cel` for the CEL rules a model carries into its CRD."""

from __future__ import annotations

from typing import Any, get_args, get_origin

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel

INT64_MAX = 2**63 - 1


def _as_the_api_server_reads(value: Any, where: str) -> Any:
    """One field's value (or map entry's): an integer must fit int64, as it must for the API
    server. (An integral float such as ``1.0`` stays refused by the strict models; the server
    admits it where no CEL rule evaluates the object around it and refuses it where one
    does: tests/fuzz/specgen.py lists this difference.)"""
    if type(value) is int and not -INT64_MAX - 1 <= value <= INT64_MAX:
        raise ValueError(f"{where}: {value} does not fit a 64-bit integer")
    return value


class Spec(BaseModel):
    """Base of everything a user writes: strict, camelCase, unknown fields rejected.

    Before validation the input is read as the API server reads a custom resource (so local
    mode and the cluster accept the same manifests): a ``null`` field or map value is pruned
    (a defaulted field then takes its default; a free-form map's values have no schema and
    keep theirs) and an integer past int64 is refused.
    """

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", strict=True
    )

    @model_validator(mode="before")
    @classmethod
    def _read_as_the_api_server(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        fields = {f.alias or n: f for n, f in cls.model_fields.items()}
        fields.update(cls.model_fields)
        out: dict[str, Any] = {}
        for key, value in data.items():
            if value is None:
                continue
            field = fields.get(key)
            if isinstance(value, dict) and field is not None and _is_map(field.annotation):
                free = _is_free_form(field.annotation)  # no schema for its values: nulls stay
                value = {
                    k: _as_the_api_server_reads(v, f"{key}.{k}")
                    for k, v in value.items()
                    if v is not None or free
                }
            out[key] = _as_the_api_server_reads(value, str(key))
        return out


def _is_map(annotation: Any) -> bool:
    """A ``dict[...]`` field (or an optional one): a map, not a nested object."""
    return any(get_origin(a) is dict for a in (annotation, *get_args(annotation)))


def _is_free_form(annotation: Any) -> bool:
    """A ``dict[str, Any]`` field (``x-kubernetes-preserve-unknown-fields``, e.g.
    ``request.extraBody``): the API server has no schema for its values and keeps a null."""
    return any(
        get_origin(a) is dict and get_args(a)[1:] == (Any,)
        for a in (annotation, *get_args(annotation))
    )


class Status(BaseModel):
    """Base of everything the operator writes: camelCase, unknown fields ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


def cel(*rules: tuple[str, str]) -> dict[str, Any]:
    """``json_schema_extra`` carrying CEL rules (rule, message) into the CRD."""
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]}
