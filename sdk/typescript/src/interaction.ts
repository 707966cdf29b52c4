/**
 * Talking to a running run (docs/interaction.md): signals, the state a durable task sets,
 * waitpoints, and forks. `Runs` (resources.ts) delegates `signal`, `state` and `fork` here;
 * `Waitpoints` is `r.waitpoints`.
 */
import { type RestClient, type Schemas, unwrap } from "./rest.js";
import { RunRef } from "./runs.js";

export interface ForkOptions {
  /** The task to run again, with everything that depends on it. */
  fromTask: string;
  /** Replaces the run input (the original run's input otherwise). */
  input?: unknown;
  /** Pins a version (the workflow's current one otherwise). */
  versionId?: string;
  /** A durable `fromTask` only: keep its durable log before this position. */
  fromStep?: number;
}

/** Send signal `name` with a JSON payload; 409 (ApiError) on a finished run, 429 past 1,000 waiting. */
export async function signalRun(
  rest: RestClient, runId: string, name: string, payload: unknown = null,
): Promise<Schemas["SignalAccepted"]> {
  return await unwrap(rest.POST("/runs/{run_id}/signals/{name}", {
    params: { path: { run_id: runId, name } },
    body: payload as never,
  }));
}

/** The latest value the run's durable tasks passed to `ctx.set_state`, or null. */
export async function runState(rest: RestClient, runId: string): Promise<unknown> {
  const view = await unwrap(rest.GET("/runs/{run_id}/state", { params: { path: { run_id: runId } } }));
  return view.state ?? null;
}

/** A new run from this one: `fromTask` and its descendants run again, the rest is reused. */
export async function forkRun(rest: RestClient, runId: string, options: ForkOptions): Promise<RunRef> {
  const body: Schemas["ForkRequest"] = { from_task: options.fromTask };
  if (options.input !== undefined) body.input = options.input;
  if (options.versionId !== undefined) body.version_id = options.versionId;
  if (options.fromStep !== undefined) body.from_step = options.fromStep;
  const made = await unwrap(rest.POST("/runs/{run_id}/fork", {
    params: { path: { run_id: runId } },
    body,
  }));
  return new RunRef(rest, made.run_id);
}

/** Waitpoints made by durable tasks (`ctx.aio_create_waitpoint` in Python). */
export class Waitpoints {
  constructor(readonly rest: RestClient) {}

  /** Complete it with a JSON payload, once: ApiError 409 the second time, 410 once expired. */
  async complete(waitpointId: string, payload: unknown = null): Promise<Schemas["WaitpointView"]> {
    return await unwrap(this.rest.POST("/waitpoints/{waitpoint_id}/complete", {
      params: { path: { waitpoint_id: waitpointId } },
      body: payload as never,
    }));
  }

  async get(waitpointId: string): Promise<Schemas["WaitpointView"]> {
    return await unwrap(this.rest.GET("/waitpoints/{waitpoint_id}", {
      params: { path: { waitpoint_id: waitpointId } },
    }));
  }

  /** The tenant's waitpoints, newest first; only open ones with `pending`. */
  async list(options: { pending?: boolean; runId?: string } = {}): Promise<Schemas["WaitpointView"][]> {
    const query: { pending?: boolean; run_id?: string } = {};
    if (options.pending !== undefined) query.pending = options.pending;
    if (options.runId !== undefined) query.run_id = options.runId;
    return await unwrap(this.rest.GET("/waitpoints", { params: { query } }));
  }
}
