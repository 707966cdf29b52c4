"""The committed sdk/openapi.json must match the API (run `make openapi` after changing routes)."""

from scripts import export_openapi


def test_committed_openapi_schema_is_fresh() -> None:
    assert not export_openapi.is_stale(), "sdk/openapi.json is stale; run `make openapi`"
