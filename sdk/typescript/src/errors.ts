/** Errors the SDK raises; each says what went wrong in terms a caller can act on. */

/** The client is missing something it needs (an API token), or cannot reach the server. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

export const MISSING_TOKEN =
  "no API token: pass new Ratchet({ token }) or set RATCHET_TOKEN " +
  "(`make up` writes one to .run/env; `ratchet tokens create` makes more)";

/** A non-2xx answer from the REST API: `status` and the server's `detail`. */
export class ApiError extends Error {
  override name = "ApiError";
  constructor(
    readonly status: number,
    readonly detail: string,
    readonly extra?: unknown,
  ) {
    super(`${status}: ${detail}`);
  }
}

/** The error a task reported, as the run's `errors[task]` holds it. */
export interface TaskErrorInfo {
  type?: string;
  message?: string;
  traceback?: string;
  non_retryable?: boolean;
  [key: string]: unknown;
}

/** A run ended FAILED or CANCELLED; `errors` holds each failed task's last error. */
export class RunFailed extends Error {
  override name = "RunFailed";
  constructor(
    readonly runId: string,
    readonly status: string,
    readonly errors: Record<string, TaskErrorInfo>,
  ) {
    const tasks = Object.keys(errors);
    super(`run ${runId} ${status}${tasks.length ? `: ${tasks.join(", ")}` : ""}`);
  }
}

/** Throw from a task to fail it at once, without the retries it has left. */
export class NonRetryable extends Error {
  override name = "NonRetryable";
}

/** A workflow or task definition the server would refuse; thrown when it is declared. */
export class WorkflowDefinitionError extends Error {
  override name = "WorkflowDefinitionError";
}

/** `result()` gave up waiting before the run finished (the run itself goes on). */
export class RunTimeoutError extends Error {
  override name = "RunTimeoutError";
  constructor(readonly runId: string, timeoutMs: number) {
    super(`run ${runId} did not finish within ${timeoutMs} ms`);
  }
}
