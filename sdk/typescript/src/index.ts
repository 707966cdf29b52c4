/** @ratchet/sdk — define workflows, run workers, trigger and inspect runs. */
export { Ratchet } from "./client.js";
export type { ClientConfig, ClientOptions } from "./config.js";
export { type ChunkType, Context, type LogLevel, type TaskRef } from "./context.js";
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
export { currentContext } from "./current.js";
export {
  type Condition,
  DurableContext,
  event,
  type EventCondition,
  NonDeterminism,
  parentOutput,
  type ParentOutputCondition,
  signal,
  type SignalCondition,
  sleep,
  type SleepCondition,
  type Waitpoint,
  type WaitAnyResult,
  WaitTimeoutError,
} from "./durable.js";
export { type ForkOptions, Waitpoints } from "./interaction.js";
export { PayloadTooLarge } from "./payloads.js";
export { Crons, decodeChunk, Events, Filters, RateLimits, Runs, type RunStatus, Scheduled, Workflows } from "./resources.js";
export { createRestClient, type components, type paths, type RestClient, type Schemas } from "./rest.js";
export { RunRef, type RunView, TERMINAL_STATUSES } from "./runs.js";
export { Alerts, SIGNATURE_HEADER, verifySignature, Webhooks } from "./webhooks.js";
export { Worker, type WorkerOptions } from "./worker.js";
export {
  type Batch,
  type Concurrency,
  type Debounce,
  type DesiredLabel,
  type DurableTaskFn,
  type ParentRef,
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
