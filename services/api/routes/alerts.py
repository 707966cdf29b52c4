"""Alert rules: Slack, email or webhook messages when runs fail, a workflow has no worker, a
token is about to expire or a tenant limit refuses requests; grouped per window."""

from __future__ import annotations

from litestar import Controller, delete, get, post
from litestar.status_codes import HTTP_201_CREATED, HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT

from libs.common.tokens import Scope
from services.api.actions import alerts
from services.api.auth import Api, Caller, Tenant, requires
from services.api.schemas import errors
from services.api.schemas.alerts import AlertIn, AlertTestSent, AlertView


class AlertController(Controller):
    path = "/alerts"
    tags = ["alerts"]
    guards = [requires(Scope.READ)]

    @post("/", status_code=HTTP_201_CREATED, guards=[requires(Scope.WRITE)],
          operation_id="createAlert")
    async def create(self, data: AlertIn, tenant: Tenant, api: Api, caller: Caller) -> AlertView:
        """Create a rule. What it alerts on is counted per window (`window_s`) and sent once
        per window to each destination, with the count and a link to the last run."""
        return await alerts.create_rule(api, caller, data)

    @get("/", operation_id="listAlerts")
    async def list_rules(self, tenant: Tenant, api: Api) -> list[AlertView]:
        return await alerts.list_rules(api, tenant)

    @get("/{rule_id:str}", operation_id="getAlert", responses=errors(404))
    async def get_rule(self, rule_id: str, tenant: Tenant, api: Api) -> AlertView:
        return await alerts.get_rule(api, tenant, rule_id)

    @delete("/{rule_id:str}", status_code=HTTP_204_NO_CONTENT, guards=[requires(Scope.WRITE)],
            operation_id="deleteAlert", responses=errors(404))
    async def delete_rule(self, rule_id: str, tenant: Tenant, api: Api, caller: Caller) -> None:
        await alerts.delete_rule(api, caller, rule_id)

    @post("/{rule_id:str}/test", status_code=HTTP_202_ACCEPTED, guards=[requires(Scope.WRITE)],
          operation_id="testAlert", responses=errors(404))
    async def send_test(self, rule_id: str, tenant: Tenant, api: Api,
                        caller: Caller) -> AlertTestSent:
        """Send a message marked as a test to each destination of the rule now (see
        `GET /deliveries?rule_id=` for how it went)."""
        return await alerts.send_test(api, caller, rule_id)
