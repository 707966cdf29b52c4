/** What a running task can see and do: its `ctx`. */
import { type Duration, toMs } from "./duration.js";
import type { TaskErrorInfo } from "./errors.js";

/** A task as `parentOutput` accepts it: the task object (typed output) or its name. */
export interface TaskRef<O = unknown> {
  readonly name: string;
  /** Phantom field carrying the output type; never set. */
  readonly __output?: O;
}

/** How a context hands protocol events (log lines, stream chunks, timeout refreshes) to its worker. */
export type EventSink = (event: LogEvent | StreamEvent | RefreshEvent) => void;
export interface LogEvent { kind: "log"; log: string }
export interface StreamEvent { kind: "stream"; chunk: Uint8Array }
export interface RefreshEvent { kind: "refresh"; refreshMs: number }

export interface ContextInit {
  runId: string;
  taskId: string;
  taskName: string;
  workflow: string;
  attempt: number;
  parentOutputs: Record<string, unknown>;
  additional?: Record<string, unknown>;
  metadata?: Record<string, string>;
  signal: AbortSignal;
  sink?: EventSink;
}

/** Per-attempt context handed to every task function as its second argument. */
export class Context {
  readonly runId: string;
  readonly taskId: string;
  readonly taskName: string;
  readonly workflow: string;
  /** 0 on the first try, 1 on the first retry, ... */
  readonly attempt: number;
  readonly metadata: Readonly<Record<string, string>>;
  /**
   * Aborted when the run is cancelled or this attempt times out. Pass it to fetch() and
   * friends, or check `cancelled`; the worker reports the attempt CANCELLED and frees its slot.
   */
  readonly signal: AbortSignal;
  readonly #parents: Record<string, unknown>;
  readonly #additional: Record<string, unknown>;
  readonly #sink: EventSink | undefined;

  constructor(init: ContextInit) {
    this.runId = init.runId;
    this.taskId = init.taskId;
    this.taskName = init.taskName;
    this.workflow = init.workflow;
    this.attempt = init.attempt;
    this.metadata = { ...(init.metadata ?? {}) };
    this.signal = init.signal;
    this.#parents = init.parentOutputs;
    this.#additional = init.additional ?? {};
    this.#sink = init.sink;
  }

  /** The output of a completed parent task (the task object, or its name). */
  parentOutput<O>(task: TaskRef<O> | string): O {
    const name = typeof task === "string" ? task : task.name;
    if (!(name in this.#parents)) {
      throw new Error(`${JSON.stringify(name)} is not a completed parent of ${JSON.stringify(this.taskName)}`);
    }
    return this.#parents[name] as O;
  }

  /** True once the run was cancelled or the attempt timed out; stop cooperatively. */
  get cancelled(): boolean {
    return this.signal.aborted;
  }

  /** The payload of the event filter that triggered this run, if any. */
  get filterPayload(): unknown {
    return this.#additional.filter_payload;
  }

  /** In an on-failure task: the failed tasks' errors by task name. */
  taskErrors(): Record<string, TaskErrorInfo> {
    const errors = this.#additional.task_errors;
    return errors && typeof errors === "object" ? { ...(errors as Record<string, TaskErrorInfo>) } : {};
  }

  /** Send a log line for this attempt. */
  log(message: string): void {
    this.#sink?.({ kind: "log", log: String(message) });
  }

  /** Send a stream chunk: bytes as they are, anything else as JSON. */
  putStream(chunk: Uint8Array | string | number | boolean | object | null): void {
    const data = chunk instanceof Uint8Array ? chunk : new TextEncoder().encode(JSON.stringify(chunk));
    this.#sink?.({ kind: "stream", chunk: data });
  }

  /** Move this attempt's execution deadline to now + `delta`. */
  refreshTimeout(delta: Duration): void {
    this.#sink?.({ kind: "refresh", refreshMs: Math.round(toMs(delta, "refreshTimeout")) });
  }
}
