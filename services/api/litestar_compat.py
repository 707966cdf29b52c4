"""Everything services/api takes from Litestar below its public API.

Litestar is pinned to one minor in pyproject.toml (`litestar>=2.25,<2.26`). Only this module
imports Litestar's private modules; tests/unit/test_litestar_compat.py checks each assumption
below and fails naming the module and the pin when an upgrade moves one:

- `litestar._openapi.schema_generation.plugins.struct.StructSchemaPlugin`: Litestar's OpenAPI
  schema builder for msgspec Structs. services/api/contract.py subclasses it to close request
  bodies (`additionalProperties: false`) and to keep the constraints of optional fields.
- `litestar.plugins.core._msgspec.kwarg_definition_from_field`: how Litestar turns a Struct
  field's `msgspec.Meta` into schema constraints; contract.py asks it one field at a time.

Neither has a public equivalent in Litestar 2.x: the alternative is re-writing Litestar's
schema generation for Structs, which would drift from what the server actually validates.
"""

from __future__ import annotations

from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.plugins.core._msgspec import kwarg_definition_from_field

# The minor the assumptions above were checked against (the pin in pyproject.toml).
PINNED_MINOR = "2.25"

__all__ = ["PINNED_MINOR", "StructSchemaPlugin", "kwarg_definition_from_field"]
