"""The API's contract: the OpenAPI document (served at /schema, committed as
sdk/openapi.json) and the strict reading of request bodies it promises.

Generated clients (sdk/typescript) and schemathesis read the document, so it states what
the server enforces: bearer auth, the error responses every operation can give, and closed
objects for the request bodies that refuse unknown fields.
"""

from __future__ import annotations

import typing
from functools import cache
from typing import Annotated, Any

import msgspec
from litestar import Litestar, Request
from litestar.exceptions import ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import (
    Components,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIType,
    Reference,
    Schema,
    SecurityScheme,
)
from litestar.response import ServerSentEvent
from litestar.routes import HTTPRoute
from litestar.typing import FieldDefinition

# Litestar's own schema builder for msgspec Structs (and how it reads a field's Meta) are
# private to Litestar: litestar_compat holds that access (and says what it relies on);
# tests/integration/test_schema.py fails if an upgrade changes what they produce.
from services.api.litestar_compat import StructSchemaPlugin, kwarg_definition_from_field
from services.api.schemas import errors

BEARER = "bearerAuth"
# The operator endpoints (/admin) take the operator token instead of a tenant's.
OPERATOR_AUTH = "operatorAuth"
# PostgreSQL cannot store U+0000 in text or jsonb, where request bodies end up.
NUL_MESSAGE = "text in a request cannot contain the NUL character (\\u0000)"
# Parameters that are dependencies, not part of the request.
_INJECTED = frozenset({"api", "tenant", "caller", "request", "self"})


class ClosedStructSchemaPlugin(StructSchemaPlugin):
    """Structs with `forbid_unknown_fields` as objects with `additionalProperties: false`:
    the server answers 400 to an unknown field, so the schema must not allow one.

    Also states the `Meta` constraints of an optional field (`X | None`, `X | UnsetType` where
    absent and null differ) on X itself: Litestar's builder drops them with an UnsetType, and
    inside a union drops any whose value is 0 (`gt=0`).
    """

    def is_plugin_supported_field(self, field_definition: FieldDefinition) -> bool:
        if not super().is_plugin_supported_field(field_definition):
            return False
        config: msgspec.structs.StructConfig = field_definition.type_.__struct_config__
        return config.forbid_unknown_fields

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: Any) -> Any:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        schema.additional_properties = False
        hints = typing.get_type_hints(field_definition.type_, include_extras=True)
        for field in msgspec.structs.fields(field_definition.type_):
            args = typing.get_args(hints[field.name])
            constrained = any(typing.get_origin(a) is Annotated for a in args)
            if (msgspec.UnsetType in args or constrained) and schema.properties is not None:
                schema.properties[field.encode_name] = _optional_schema(
                    [a for a in args if a not in (msgspec.UnsetType, type(None))],
                    nullable=type(None) in args, schema_creator=schema_creator,
                )
        return schema


def _optional_schema(types: list[Any], nullable: bool, schema_creator: Any) -> Schema:
    """Each of `types` with its constraints, or null. Built one type at a time: inside a
    union Litestar drops a constraint whose value is 0 (e.g. `gt=0`)."""
    schemas: list[Schema | Reference] = []
    for annotation in types:
        probe: Any = msgspec.inspect.type_info(msgspec.defstruct("Probe", [("value", annotation)]))
        kwarg, _ = kwarg_definition_from_field(probe.fields[0])
        base = typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated \
            else annotation
        schemas.append(schema_creator.for_field_definition(
            FieldDefinition.from_annotation(base, kwarg_definition=kwarg)))
    if nullable:
        schemas.append(Schema(type=OpenAPIType.NULL))
    return schemas[0] if len(schemas) == 1 and isinstance(schemas[0], Schema) \
        else Schema(one_of=schemas)


def openapi_config(description: str) -> OpenAPIConfig:
    return OpenAPIConfig(
        title="Ratchet API", version="0.1.0", path="/schema", description=description,
        use_handler_docstrings=True,
        components=Components(security_schemes={
            BEARER: SecurityScheme(type="http", scheme="bearer",
                                   description="A tenant's API token"),
            OPERATOR_AUTH: SecurityScheme(type="http", scheme="bearer",
                                          description="RATCHET_OPERATOR_TOKEN"),
        }),
        security=[{BEARER: []}],
    )


def describe_common_errors(app: Litestar) -> None:
    """Add the errors any API operation can give to each one's documented responses.

    Done over the built app rather than per decorator so a route added later is covered:
    401 where the tenant's token is read, 403 where a guard may refuse, 400 where a
    parameter or body is decoded, 413 where a body is read. A handler's own `responses`
    (404, 409, 422, 429, ...) are kept.
    """
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if not isinstance(handler, HTTPRouteHandler) or not handler.resolve_include_in_schema():
                continue
            params = set(handler.parsed_fn_signature.parameters)
            codes: list[int] = []
            if params & {"tenant", "caller"}:
                codes.append(401)
            if handler.resolve_guards():
                codes.append(403)  # a guard refuses (e.g. a token without the scope)
            if params - _INJECTED:
                codes.append(400)
            if "data" in params:
                codes.append(413)
            handler.responses = {**errors(*codes), **(handler.responses or {})}


def finish_document(app: Litestar) -> None:
    """What Litestar's builder cannot say, written into the built document: every 429 carries
    `Retry-After` (whole seconds, as app.py sends it; `ResponseSpec` has no headers), and an
    event stream's body is text/event-stream (the operation's description gives its events).
    The handler keeps its default media type, which its JSON error bodies are sent with.

    The document is built once per app; /schema and `make openapi` both read that object.
    """
    retry_after = OpenAPIHeader(
        schema=Schema(type=OpenAPIType.INTEGER, minimum=1), required=True,
        description="Seconds to wait before trying again",
    )
    event_streams = {
        (route.path_format, method.lower())
        for route in app.routes if isinstance(route, HTTPRoute)
        for handler in route.route_handlers
        if handler.parsed_fn_signature.return_type.is_subclass_of(ServerSentEvent)
        for method in handler.http_methods
    }
    for path, path_item in (app.openapi_schema.paths or {}).items():
        for method in ("get", "put", "post", "delete", "patch"):
            operation = getattr(path_item, method, None)
            for code, response in ((operation.responses or {}) if operation else {}).items():
                if isinstance(response, Reference):
                    continue
                if code == "429":
                    response.headers = {**(response.headers or {}), "Retry-After": retry_after}
                if code == "200" and (path, method) in event_streams:
                    response.content = {"text/event-stream": OpenAPIMediaType(schema=Schema(
                        type=OpenAPIType.STRING, description="Server-Sent Events"))}


@cache
def _strict_decoder(body_type: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(body_type, strict=True)


async def check_json_body(request: Request) -> None:  # type: ignore[type-arg]
    """A `before_request` hook: a JSON body of the wrong types is a 400, and so is text
    with a NUL character anywhere in the request.

    Litestar converts a decoded body to the handler's type leniently (strict=False: "5" for
    an int, 0 for a bool), which suits query strings but lets a client's type bug through a
    body, where the schema promises JSON types. Malformed JSON is left to Litestar's own 400.
    """
    handler = request.route_handler
    if not handler.resolve_include_in_schema():
        return
    if "\x00" in request.scope["path"] or any(
        "\x00" in k or "\x00" in v for k, v in request.query_params.multi_items()
    ):
        raise ValidationException(NUL_MESSAGE)
    data = handler.parsed_fn_signature.parameters.get("data")
    if data is None or request.content_type[0] != "application/json":
        return
    body = await request.body()
    if b"\\u0000" in body:
        try:
            value = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return
        if _has_nul(value):
            raise ValidationException(NUL_MESSAGE)
    try:
        _strict_decoder(data.annotation).decode(body)
    except msgspec.ValidationError as exc:
        # In JSON Schema 2.0 is an integer; msgspec's strict mode disagrees. Only a failing
        # body pays for the second, slower look.
        try:
            value = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return  # malformed JSON after all: Litestar's own 400 says so
        try:
            msgspec.convert(_integral(value), data.annotation, strict=True)
        except msgspec.ValidationError:
            raise ValidationException(
                f"Validation failed for {request.method} {request.url.path}: {exc}",
                extra=[{"message": str(exc), "source": "body"}],
            ) from exc
    except msgspec.DecodeError:
        return  # malformed JSON: Litestar's own 400 says so


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    return False


def _integral(value: Any) -> Any:
    """`value` with every float that has no fractional part made an int."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral(v) for v in value]
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    return value
