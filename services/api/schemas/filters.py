"""Bodies of `/filters`."""

from __future__ import annotations

from typing import Any

import msgspec

from libs.common.specs import Cel
from services.api.schemas import EventScope, WorkflowName


class FilterIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    workflow: WorkflowName
    expression: Cel
    scope: EventScope | None = None
    payload: Any = None


class FilterPatch(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Only the fields present change; `"scope": null` clears the scope."""

    workflow: WorkflowName | msgspec.UnsetType = msgspec.UNSET
    expression: Cel | msgspec.UnsetType = msgspec.UNSET
    scope: EventScope | msgspec.UnsetType | None = msgspec.UNSET
    payload: Any = msgspec.UNSET


class FilterView(msgspec.Struct, kw_only=True):
    id: str
    workflow: str
    scope: str | None
    expression: str
    payload: Any
    created_at: str
    updated_at: str
