"""Workflow registration, versions (listing, rollback) and run triggers."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, post
from litestar.params import HeaderParameter, Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_202_ACCEPTED

from libs.common import specs
from libs.common.tokens import Scope
from services.api.actions import flow, trigger, workflows
from services.api.auth import Api, Caller, Tenant, requires
from services.api.schemas import (
    BulkRunCreated,
    BulkRunRequest,
    RegisterResponse,
    RollbackRequest,
    RunCreated,
    RunRequest,
    VersionView,
    WorkflowNameParam,
    WorkflowView,
    errors,
)
from services.api.schemas.flow import PauseRequest, PauseView

# Shown in the OpenAPI description (app.py); docs/versions.md says the same at more length.
VERSIONS_DOC = """\
## Workflow versions

Every distinct definition of a workflow is a version (content-hashed; `GET
/workflows/{name}/versions`). A run is pinned to the version it started on and keeps it to the
end, whatever happens to the workflow meanwhile. One version is **current**: new runs start on
it, whether triggered through the API, by a matching event or by a cron or scheduled run.

- Registering a definition never seen before makes it current (a deploy takes effect).
- Registering a definition that already has a version does not move the pointer: a worker
  restarting with older code, or an old replica during a rolling deploy, cannot undo a newer
  deploy or a rollback. The response says whether the version is current.
- `POST /workflows/{name}/rollback` with `{"version_id": ...}` makes any version of the
  workflow current (older or newer), including its `on_crons`. It lasts until the next rollback
  or the next registration of a definition never seen before. To go back to code that is
  already registered (a revert), roll back to its version: deploying it again is not enough.
- `POST /workflows/{name}/run` with `version_id` starts that one run on the given version.
"""

# W3C trace context of the caller: the run's trace continues the caller's.
TraceParent = Annotated[str | None, HeaderParameter(name="traceparent", required=False)]


class WorkflowController(Controller):
    path = "/workflows"
    tags = ["workflows"]
    guards = [requires(Scope.READ, Scope.WORKER)]

    # A worker registers the workflows it serves when it starts, so `worker` may too.
    @post("/", status_code=HTTP_201_CREATED, guards=[requires(Scope.WRITE, Scope.WORKER)],
          operation_id="registerWorkflow")
    async def register(self, data: specs.WorkflowSpec, tenant: Tenant, api: Api) -> RegisterResponse:
        """Register a workflow definition. A definition never seen before becomes a new, current
        version; an identical one is the same version and leaves the current one alone."""
        return await workflows.register(api, tenant, data)

    @get("/", operation_id="listWorkflows")
    async def list_workflows(self, tenant: Tenant, api: Api) -> list[WorkflowView]:
        return await workflows.list_workflows(api, tenant)

    @get("/{name:str}", operation_id="getWorkflow", responses=errors(404))
    async def get_workflow(self, name: WorkflowNameParam, tenant: Tenant, api: Api) -> WorkflowView:
        """The workflow's current version."""
        return await workflows.get_workflow(api, tenant, name)

    @get("/{name:str}/versions", operation_id="listWorkflowVersions", responses=errors(404))
    async def versions(
        self, name: WorkflowNameParam, tenant: Tenant, api: Api,
        limit: int = Parameter(default=100, ge=1, le=1000),
    ) -> list[VersionView]:
        """The workflow's versions, newest first; `current` marks the one new runs use."""
        return await workflows.versions(api, tenant, name, limit)

    @post("/{name:str}/rollback", status_code=HTTP_200_OK, guards=[requires(Scope.WRITE)],
          operation_id="rollbackWorkflow", responses=errors(404))
    async def rollback(
        self, name: WorkflowNameParam, data: RollbackRequest, tenant: Tenant, api: Api,
        caller: Caller,
    ) -> VersionView:
        """Make a version of the workflow current: new runs (API, events, crons) start on it;
        runs already started keep theirs. 404 when the version is not one of this workflow's."""
        return await workflows.rollback(api, caller, name, data.version_id)

    @post("/{name:str}/run", status_code=HTTP_202_ACCEPTED, guards=[requires(Scope.WRITE)],
          operation_id="triggerWorkflow", responses=errors(404, 422, 429))
    async def trigger(
        self, name: WorkflowNameParam, data: RunRequest, tenant: Tenant, api: Api, caller: Caller,
        traceparent: TraceParent = None,
    ) -> RunCreated:
        """Start a run on the current version of a workflow, or on `version_id` if given."""
        return await trigger.trigger_run(api, caller, name, data, traceparent)

    @post("/{name:str}/run/bulk", status_code=HTTP_202_ACCEPTED, guards=[requires(Scope.WRITE)],
          operation_id="triggerWorkflowBulk", responses=errors(404, 422, 429))
    async def trigger_bulk(
        self, name: WorkflowNameParam, data: BulkRunRequest, tenant: Tenant, api: Api,
        caller: Caller,
        traceparent: TraceParent = None,
    ) -> BulkRunCreated:
        """Start many runs in one request (up to 1,000), published pipelined."""
        return await trigger.trigger_runs(api, caller, name, data.runs, traceparent)

    @get("/{name:str}/pause", operation_id="getWorkflowPause", responses=errors(404))
    async def pause_state(self, name: WorkflowNameParam, tenant: Tenant, api: Api) -> PauseView:
        """Whether the workflow is paused, how, the triggers dropped and the runs held."""
        return await flow.pause_state(api, tenant, name)

    @post("/{name:str}/pause", status_code=HTTP_200_OK, guards=[requires(Scope.WRITE)],
          operation_id="pauseWorkflow", responses=errors(400, 404))
    async def pause(
        self, name: WorkflowNameParam, data: PauseRequest, api: Api, caller: Caller,
    ) -> PauseView:
        """Pause a workflow. `queue`: new runs (from any trigger) are kept and start on resume;
        `drop`: API triggers get 409, event and cron triggers are skipped (counted). Runs
        already started go on either way."""
        return await flow.pause(api, caller, name, data.mode)

    @post("/{name:str}/resume", status_code=HTTP_200_OK, guards=[requires(Scope.WRITE)],
          operation_id="resumeWorkflow", responses=errors(404))
    async def resume(self, name: WorkflowNameParam, api: Api, caller: Caller) -> PauseView:
        """Resume a paused workflow: the runs it held start, new ones start at once."""
        return await flow.resume(api, caller, name)
