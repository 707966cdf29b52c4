/** A triggered run, and waiting for its outcome by long-polling `GET /runs/{id}?wait_s=`. */
import { currentContext } from "./current.js";
import { ApiError, RunFailed, RunTimeoutError, type TaskErrorInfo } from "./errors.js";
import { type RestClient, type Schemas, unwrap } from "./rest.js";

export type RunView = Schemas["RunView"];
export const TERMINAL_STATUSES: ReadonlySet<string> = new Set(["SUCCEEDED", "FAILED", "CANCELLED"]);
const WAIT_CHUNK_S = 30;
const DEFAULT_TIMEOUT_MS = 3_600_000;

/** The run's `{taskName: output}` when it succeeded; RunFailed otherwise. */
export function outcome(run: RunView): Record<string, unknown> {
  if (run.status === "SUCCEEDED") return { ...run.output };
  throw new RunFailed(run.id, run.status, { ...(run.errors ?? {}) } as Record<string, TaskErrorInfo>);
}

/** Read a run; with `waitS`, the server holds the answer until the run ends or the time passes. */
export async function getRun(
  rest: RestClient, runId: string, waitS = 0, signal?: AbortSignal,
): Promise<RunView> {
  return await unwrap(rest.GET("/runs/{run_id}", {
    params: { path: { run_id: runId }, query: { wait_s: waitS } },
    ...(signal ? { signal } : {}),
  }));
}

export class RunRef {
  constructor(
    readonly rest: RestClient,
    readonly runId: string,
    /** An idempotency key answered an earlier trigger's run (docs/flow-control.md). */
    readonly deduplicated: boolean = false,
  ) {}

  /** Wait for the run: `{taskName: output}`; rejects with RunFailed when it fails or is cancelled. */
  async result(options: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<Record<string, unknown>> {
    // In a durable task: first wait durably for the run to end, holding no worker slot.
    await currentContext()?.awaitRuns([this.runId]);
    const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      options.signal?.throwIfAborted();
      const waitS = Math.max(0, Math.min(WAIT_CHUNK_S, (deadline - Date.now()) / 1000));
      let run: RunView | undefined;
      try {
        run = await getRun(this.rest, this.runId, waitS, options.signal);
      } catch (err) {
        // The trigger is accepted before the scheduler writes the run: not found yet is normal.
        if (!(err instanceof ApiError && err.status === 404)) throw err;
      }
      if (run !== undefined && TERMINAL_STATUSES.has(run.status)) return outcome(run);
      if (Date.now() >= deadline) throw new RunTimeoutError(this.runId, timeoutMs);
    }
  }

  toString(): string {
    return `RunRef(${this.runId})`;
  }
}
