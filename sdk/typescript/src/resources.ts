/** REST resources hanging off the client: runs, events, rate limits, filters, crons, workflows. */
import { EventSourceParserStream } from "eventsource-parser/stream";

import { ApiError } from "./errors.js";
import { type RestClient, type Schemas, unwrap } from "./rest.js";
import { type ForkOptions, forkRun, runState, signalRun } from "./interaction.js";
import { getRun, RunRef, type RunView } from "./runs.js";
import type { Per } from "./workflow.js";

export type RunStatus = "PENDING" | "RUNNING" | "SUCCEEDED" | "FAILED" | "CANCELLED";

export class Runs {
  constructor(readonly rest: RestClient) {}

  /** The run with its tasks, outputs and errors; `waitS` (<= 60) long-polls for its end. */
  async get(runId: string, options: { waitS?: number; signal?: AbortSignal } = {}): Promise<RunView> {
    return await getRun(this.rest, runId, options.waitS ?? 0, options.signal);
  }

  /** A handle to wait on a run by id. */
  ref(runId: string): RunRef {
    return new RunRef(this.rest, runId);
  }

  /**
   * The run's log lines in order (task, attempt, ts, level, message). Once the run is reported
   * ended, every line its tasks wrote is there: the server waits for the log store to catch up.
   */
  async logs(runId: string, options: { limit?: number; offset?: number } = {}): Promise<Schemas["LogLineView"][]> {
    return await unwrap(this.rest.GET("/runs/{run_id}/logs", {
      params: { path: { run_id: runId }, query: options },
    }));
  }

  /**
   * Every chunk the run's tasks put on their stream, from the first, in order, with the type
   * they were put with (string, Uint8Array or a JSON value); ends when the run ends.
   * `for await (const chunk of r.runs.stream(runId)) ...`. A run triggered a moment ago may not
   * be stored yet: the server waits up to `appearWaitS` (default 10) before answering 404.
   */
  async *stream(runId: string, options: { appearWaitS?: number; signal?: AbortSignal } = {}): AsyncGenerator<unknown> {
    const { response } = await this.rest.GET("/runs/{run_id}/stream", {
      params: { path: { run_id: runId }, query: { wait_s: options.appearWaitS ?? 10 } },
      parseAs: "stream",
      ...(options.signal ? { signal: options.signal } : {}),
    });
    if (!response.ok || response.body === null) {
      const text = await response.text().catch(() => "");
      let detail = text;
      try {
        detail = String((JSON.parse(text) as { detail?: unknown }).detail ?? text);
      } catch {
        // not JSON: keep the text
      }
      throw new ApiError(response.status, detail);
    }
    const events = response.body.pipeThrough(new TextDecoderStream()).pipeThrough(new EventSourceParserStream());
    const reader = events.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        if (value.event === "end") return;
        if (value.event === "chunk") yield decodeChunk(JSON.parse(value.data) as StreamChunkPayload);
      }
    } finally {
      await reader.cancel().catch(() => undefined);
    }
    throw new Error("the run's stream closed before its end event");
  }

  /** Newest first; `parentRunId` lists that run's child runs. */
  async list(
    options: { status?: RunStatus; workflow?: string; limit?: number; parentRunId?: string } = {},
  ): Promise<Schemas["RunSummary"][]> {
    const { parentRunId, ...rest } = options;
    const query = parentRunId ? { ...rest, parent_run_id: parentRunId } : rest;
    return await unwrap(this.rest.GET("/runs", { params: { query } }));
  }


  async cancel(runId: string): Promise<Schemas["Accepted"]> {
    return await unwrap(this.rest.POST("/runs/{run_id}/cancel", { params: { path: { run_id: runId } } }));
  }

  /** Run a finished run's failed tasks (and their descendants) again. */
  async replay(runId: string): Promise<Schemas["Accepted"]> {
    return await unwrap(this.rest.POST("/runs/{run_id}/replay", { params: { path: { run_id: runId } } }));
  }

  /** Every transition of the run and its tasks, in order. */
  async events(runId: string): Promise<Schemas["RunEventView"][]> {
    return await unwrap(this.rest.GET("/runs/{run_id}/events", { params: { path: { run_id: runId } } }));
  }

  /** Send signal `name` with a JSON payload to the run (docs/interaction.md). */
  async signal(runId: string, name: string, payload: unknown = null): Promise<Schemas["SignalAccepted"]> {
    return await signalRun(this.rest, runId, name, payload);
  }

  /** The latest state the run's durable tasks set, or null. */
  async state(runId: string): Promise<unknown> {
    return await runState(this.rest, runId);
  }

  /** A new run from this one, re-running `fromTask` and what depends on it. */
  async fork(runId: string, options: ForkOptions): Promise<RunRef> {
    return await forkRun(this.rest, runId, options);
  }
}

interface StreamChunkPayload {
  task?: string;
  attempt?: number;
  seq?: number;
  type?: string;
  data: unknown;
}

/** A chunk as the task put it: "text" -> string, "bytes" -> Uint8Array (base64 on the wire), else JSON. */
export function decodeChunk(payload: StreamChunkPayload): unknown {
  if (payload.type === "bytes") return new Uint8Array(Buffer.from(String(payload.data), "base64"));
  if (payload.type === "json") return payload.data;
  return String(payload.data);
}

export interface PushOptions {
  scope?: string;
  metadata?: Record<string, string>;
  /** Idempotency key: a second push with the same id triggers nothing. */
  eventId?: string;
}

export class Events {
  constructor(readonly rest: RestClient) {}

  /** Publish an event; workflows listening on `key` (and matching filters) start runs. */
  async push(key: string, payload: unknown, options: PushOptions = {}): Promise<Schemas["EventAccepted"]> {
    return await unwrap(this.rest.POST("/events", { body: eventBody(key, payload, options) }));
  }

  async pushMany(events: ({ key: string; payload: unknown } & PushOptions)[]): Promise<Schemas["BulkEventsAccepted"]> {
    const body = { events: events.map((e) => eventBody(e.key, e.payload, e)) };
    return await unwrap(this.rest.POST("/events/bulk", { body }));
  }
}

function eventBody(key: string, payload: unknown, o: PushOptions): Schemas["EventIn"] {
  const body: Schemas["EventIn"] = { key, payload };
  if (o.scope !== undefined) body.scope = o.scope;
  if (o.metadata) body.metadata = o.metadata;
  if (o.eventId) body.event_id = o.eventId;
  return body;
}

export class RateLimits {
  constructor(readonly rest: RestClient) {}

  /**
   * Create or change a static key: at most `limit` units start in any window of `per`.
   * `burst` makes it a token bucket of `burst` units refilled at limit/per.
   */
  async put(key: string, options: { limit: number; per?: Per; burst?: number }): Promise<Schemas["RateLimitView"]> {
    const body: Schemas["RateLimitIn"] = { key, limit: options.limit, per: options.per ?? "second" };
    if (options.burst !== undefined) body.burst = options.burst;
    return await unwrap(this.rest.PUT("/rate-limits/{key}", { params: { path: { key } }, body }));
  }

  async get(key: string): Promise<Schemas["RateLimitView"]> {
    return await unwrap(this.rest.GET("/rate-limits/{key}", { params: { path: { key } } }));
  }

  async list(): Promise<Schemas["RateLimitView"][]> {
    return await unwrap(this.rest.GET("/rate-limits"));
  }
}

export class Filters {
  constructor(readonly rest: RestClient) {}

  async create(body: Schemas["FilterIn"]): Promise<Schemas["FilterView"]> {
    return await unwrap(this.rest.POST("/filters", { body }));
  }

  async list(options: { workflow?: string } = {}): Promise<Schemas["FilterView"][]> {
    return await unwrap(this.rest.GET("/filters", { params: { query: options } }));
  }

  async get(filterId: string): Promise<Schemas["FilterView"]> {
    return await unwrap(this.rest.GET("/filters/{filter_id}", { params: { path: { filter_id: filterId } } }));
  }

  async update(filterId: string, body: Schemas["FilterPatch"]): Promise<Schemas["FilterView"]> {
    return await unwrap(this.rest.PATCH("/filters/{filter_id}", { params: { path: { filter_id: filterId } }, body }));
  }

  async delete(filterId: string): Promise<void> {
    await unwrap(this.rest.DELETE("/filters/{filter_id}", { params: { path: { filter_id: filterId } } }));
  }
}

export class Crons {
  constructor(readonly rest: RestClient) {}

  async create(body: Schemas["CronIn"]): Promise<Schemas["CronView"]> {
    return await unwrap(this.rest.POST("/crons", { body }));
  }

  async list(): Promise<Schemas["CronView"][]> {
    return await unwrap(this.rest.GET("/crons"));
  }

  async delete(cronId: string): Promise<void> {
    await unwrap(this.rest.DELETE("/crons/{cron_id}", { params: { path: { cron_id: cronId } } }));
  }
}

/** One-off runs at a set time (`POST /scheduled`). */
export class Scheduled {
  constructor(readonly rest: RestClient) {}

  /** Run `workflow` with `input` at `runAt`. */
  async create(options: { workflow: string; runAt: Date; input?: unknown; metadata?: Record<string, string> }): Promise<Schemas["ScheduledView"]> {
    const body: Schemas["ScheduledIn"] = {
      workflow: options.workflow, run_at: options.runAt.toISOString(), input: options.input ?? {},
      metadata: options.metadata ?? {},
    };
    return await unwrap(this.rest.POST("/scheduled", { body }));
  }

  async list(options: { workflow?: string; limit?: number } = {}): Promise<Schemas["ScheduledView"][]> {
    return await unwrap(this.rest.GET("/scheduled", { params: { query: options } }));
  }

  async get(scheduledId: string): Promise<Schemas["ScheduledView"]> {
    return await unwrap(this.rest.GET("/scheduled/{scheduled_id}", { params: { path: { scheduled_id: scheduledId } } }));
  }

  async delete(scheduledId: string): Promise<void> {
    await unwrap(this.rest.DELETE("/scheduled/{scheduled_id}", { params: { path: { scheduled_id: scheduledId } } }));
  }
}

export class Workflows {
  constructor(readonly rest: RestClient) {}

  /** Every registered version of `name`, newest first: id, hash, created_at, current. */
  async versions(name: string, options: { limit?: number } = {}): Promise<Schemas["VersionView"][]> {
    return await unwrap(this.rest.GET("/workflows/{name}/versions", { params: { path: { name }, query: options } }));
  }

  /** Make `versionId` the version new runs of `name` use; runs in flight keep theirs. */
  async rollback(name: string, versionId: string): Promise<Schemas["VersionView"]> {
    return await unwrap(this.rest.POST("/workflows/{name}/rollback", {
      params: { path: { name } }, body: { version_id: versionId },
    }));
  }

  async list(): Promise<Schemas["WorkflowView"][]> {
    return await unwrap(this.rest.GET("/workflows"));
  }

  /**
   * Pause `name`: "queue" keeps new runs (from any trigger) until `resume`; "drop" refuses API
   * triggers (409) and skips event and cron ones. Runs already started go on.
   */
  async pause(name: string, mode: "queue" | "drop" = "queue"): Promise<Schemas["PauseView"]> {
    return await unwrap(this.rest.POST("/workflows/{name}/pause", {
      params: { path: { name } }, body: { mode },
    }));
  }

  /** Resume `name`: the runs it kept start, new ones start at once. */
  async resume(name: string): Promise<Schemas["PauseView"]> {
    return await unwrap(this.rest.POST("/workflows/{name}/resume", { params: { path: { name } } }));
  }

  /** Whether `name` is paused, how, and the runs held and triggers dropped. */
  async pauseState(name: string): Promise<Schemas["PauseView"]> {
    return await unwrap(this.rest.GET("/workflows/{name}/pause", { params: { path: { name } } }));
  }

  async get(name: string): Promise<Schemas["WorkflowView"]> {
    return await unwrap(this.rest.GET("/workflows/{name}", { params: { path: { name } } }));
  }
}
