"""The operator's client: the same API, authenticated by the operator token."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from ratchet.cli._common import CliError, Exit, settings
from ratchet.client import Ratchet

OPERATOR_TOKEN_ENV = "RATCHET_OPERATOR_TOKEN"

OperatorTokenOpt = Annotated[str | None, typer.Option(
    "--operator-token", envvar=OPERATOR_TOKEN_ENV, show_envvar=True,
    help="The API's operator token (its RATCHET_OPERATOR_TOKEN).")]


def operator_client(ctx: typer.Context, token: str | None) -> Ratchet:
    token = token or os.environ.get(OPERATOR_TOKEN_ENV, "")
    if not token:
        raise CliError(f"no operator token: set {OPERATOR_TOKEN_ENV} or pass --operator-token",
                       Exit.AUTH)
    s = settings(ctx)
    return Ratchet(token=token, api_url=s.api_url, grpc_addr=s.grpc_addr)
