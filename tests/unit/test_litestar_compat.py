"""The Litestar internals services/api/litestar_compat.py relies on, checked one by one.

Litestar is pinned to one minor in pyproject.toml. When an upgrade (or a widened pin) moves
or changes one of these, the failing test names the private module and the pinned version:
adapt litestar_compat.py (and contract.py) before moving the pin. The probes import Litestar
directly, so they still explain what broke when litestar_compat itself no longer imports.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import re
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import msgspec

ROOT = Path(__file__).resolve().parents[2]
VERSION = importlib.metadata.version("litestar")
STRUCT_PLUGIN_MODULE = "litestar._openapi.schema_generation.plugins.struct"
MSGSPEC_PLUGIN_MODULE = "litestar.plugins.core._msgspec"


def _pin() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    [spec] = [d for d in deps if re.match(r"litestar\b", d)]
    return str(spec)


def _broken(module: str, assumption: str) -> str:
    return (
        f"litestar {VERSION} (pinned {_pin()!r}) broke an assumption of "
        f"services/api/litestar_compat.py about {module}: {assumption}. Adapt litestar_compat.py "
        "and services/api/contract.py before moving the pin in pyproject.toml."
    )


def _private(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise AssertionError(_broken(module, f"the module imports ({exc})")) from exc


def test_installed_litestar_is_the_pinned_minor() -> None:
    from services.api.litestar_compat import PINNED_MINOR

    pin = _pin()
    assert pin == f"litestar>={PINNED_MINOR},<2.{int(PINNED_MINOR.split('.')[1]) + 1}", (
        f"pyproject.toml pins {pin!r} but litestar_compat.PINNED_MINOR is {PINNED_MINOR!r}: "
        "re-check every assumption in services/api/litestar_compat.py, then move both together")
    assert VERSION.startswith(PINNED_MINOR + "."), (
        f"litestar {VERSION} is installed, but services/api/litestar_compat.py was checked "
        f"against {PINNED_MINOR} (pin {pin!r}); run `uv sync` or re-check the compat module")


def test_struct_schema_plugin_is_where_compat_imports_it_from() -> None:
    module = _private(STRUCT_PLUGIN_MODULE)
    plugin = getattr(module, "StructSchemaPlugin", None)
    assert plugin is not None, _broken(STRUCT_PLUGIN_MODULE, "it defines StructSchemaPlugin")
    from litestar.plugins import OpenAPISchemaPlugin

    assert issubclass(plugin, OpenAPISchemaPlugin), _broken(
        STRUCT_PLUGIN_MODULE, "StructSchemaPlugin is an OpenAPISchemaPlugin")
    supported = list(inspect.signature(plugin.is_plugin_supported_field).parameters)
    assert supported == ["self", "field_definition"], _broken(
        STRUCT_PLUGIN_MODULE, "is_plugin_supported_field(self, field_definition)")
    to_schema = list(inspect.signature(plugin.to_openapi_schema).parameters)
    assert to_schema == ["self", "field_definition", "schema_creator"], _broken(
        STRUCT_PLUGIN_MODULE, "to_openapi_schema(self, field_definition, schema_creator)")


def test_kwarg_definition_from_field_reads_a_fields_meta() -> None:
    module = _private(MSGSPEC_PLUGIN_MODULE)
    reader = getattr(module, "kwarg_definition_from_field", None)
    assert reader is not None, _broken(MSGSPEC_PLUGIN_MODULE, "it defines kwarg_definition_from_field")
    probe: Any = msgspec.inspect.type_info(msgspec.defstruct(
        "Probe", [("value", Annotated[int, msgspec.Meta(gt=0, le=10, description="d")])]))
    result = reader(probe.fields[0])
    assert isinstance(result, tuple) and len(result) == 2, _broken(
        MSGSPEC_PLUGIN_MODULE, "kwarg_definition_from_field(field) returns (kwarg, extra)")
    kwarg, _ = result
    assert (kwarg.gt, kwarg.le, kwarg.description) == (0, 10, "d"), _broken(
        MSGSPEC_PLUGIN_MODULE, "the kwarg carries the Meta's constraints (gt=0 included)")


def test_compat_hands_out_exactly_those_objects() -> None:
    from services.api import litestar_compat

    assert litestar_compat.StructSchemaPlugin is _private(STRUCT_PLUGIN_MODULE).StructSchemaPlugin
    assert (litestar_compat.kwarg_definition_from_field
            is _private(MSGSPEC_PLUGIN_MODULE).kwarg_definition_from_field)
