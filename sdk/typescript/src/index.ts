/** @ratchet/sdk — define workflows, run workers, trigger and inspect runs. */
export { Ratchet } from "./client.js";
export type { ClientConfig, ClientOptions } from "./config.js";
export { Context, type TaskRef } from "./context.js";
export { type Duration, toMs } from "./duration.js";
export {
  ApiError,
  ConfigError,
  NonRetryable,
  RunFailed,
  RunTimeoutError,
  type TaskErrorInfo,
  WorkflowDefinitionError,
} from "./errors.js";
export { Crons, Events, Filters, RateLimits, Runs, type RunStatus, Workflows } from "./resources.js";
export { createRestClient, type components, type paths, type RestClient, type Schemas } from "./rest.js";
export { RunRef, type RunView, TERMINAL_STATUSES } from "./runs.js";
export { Worker, type WorkerOptions } from "./worker.js";
export {
  type Concurrency,
  type DesiredLabel,
  type Per,
  type RateLimit,
  type RunOptions,
  type Strategy,
  Task,
  type TaskFn,
  type TaskOptions,
  type WaitOptions,
  Workflow,
  type WorkflowOptions,
} from "./workflow.js";
