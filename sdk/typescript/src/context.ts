/** What a running task can see and do: its `ctx`. */
import { type Duration, toMs } from "./duration.js";
import type { TaskErrorInfo } from "./errors.js";
import type { RunRef } from "./runs.js";

/** What `ctx.runChild` / `ctx.runMany` need of a workflow (a `Workflow` is one). */
export interface ChildWorkflow<I> {
  runNoWait(input?: I, options?: { key?: string; parent?: Context }): Promise<RunRef>;
  runMany(inputs: I[], options?: { keys?: (string | undefined)[]; parent?: Context }): Promise<RunRef[]>;
}

/** A task as `parentOutput` accepts it: the task object (typed output) or its name. */
export interface TaskRef<O = unknown> {
  readonly name: string;
  /** Phantom field carrying the output type; never set. */
  readonly __output?: O;
}

/** How a context hands protocol events (log lines, stream chunks, timeout refreshes) to its worker. */
export type EventSink = (event: LogEvent | StreamEvent | RefreshEvent) => void;
export interface LogEvent { kind: "log"; log: string; level: LogLevel; seq: number }
export interface StreamEvent { kind: "stream"; chunk: Uint8Array; chunkType: ChunkType; seq: number }

/** Log levels, as `r.runs.logs()` reports them. */
export type LogLevel = "debug" | "info" | "warning" | "error" | "critical";
/** How a stream chunk is read back: text (a string was put), json (any other value) or bytes. */
export type ChunkType = "text" | "json" | "bytes";
const LEVELS: ReadonlySet<string> = new Set(["debug", "info", "warning", "error", "critical"]);
/** NATS refuses messages above its max payload (1 MiB by default); a chunk travels as one. */
export const MAX_CHUNK_BYTES = 512 * 1024;

function normalizeLevel(level: string): LogLevel {
  const name = String(level).toLowerCase();
  const out = name === "warn" ? "warning" : name;
  if (!LEVELS.has(out)) {
    throw new RangeError(`log level must be one of debug, info, warning, error, critical; got ${JSON.stringify(level)}`);
  }
  return out as LogLevel;
}

/** A chunk as (type, bytes): strings stay text, bytes stay bytes, anything else is JSON. */
export function encodeChunk(chunk: unknown): { chunkType: ChunkType; data: Uint8Array } {
  let out: { chunkType: ChunkType; data: Uint8Array };
  if (chunk instanceof Uint8Array) out = { chunkType: "bytes", data: chunk };
  else if (typeof chunk === "string") out = { chunkType: "text", data: new TextEncoder().encode(chunk) };
  else {
    const json = JSON.stringify(chunk);
    if (json === undefined) throw new TypeError(`a stream chunk must be JSON-serializable; got ${typeof chunk}`);
    out = { chunkType: "json", data: new TextEncoder().encode(json) };
  }
  if (out.data.length > MAX_CHUNK_BYTES) {
    throw new RangeError(
      `stream chunk of ${out.data.length} bytes exceeds the ${MAX_CHUNK_BYTES}-byte limit; split it into smaller chunks`,
    );
  }
  return out;
}
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
  // Per-attempt positions of lines and chunks: the dispatcher publishes each under an id built
  // from it, so a repeated number is a duplicate (and dropped) there.
  #logSeq = 0;
  #chunkSeq = 0;
  // Child runs this attempt started: the k-th spawn of every attempt names the same child run.
  #spawned = 0;

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

  /**
   * Add a line to this attempt's log (`r.runs.logs(runId)`). Levels: debug, info (default),
   * warning, error, critical. The server keeps up to 10,000 lines per attempt by default.
   */
  log(message: string, level: LogLevel | "warn" = "info"): void {
    const name = normalizeLevel(level);
    this.#sink?.({ kind: "log", log: String(message), level: name, seq: this.#logSeq++ });
  }

  /**
   * Send a chunk to the run's stream readers (`r.runs.stream(runId)`): a string comes back as a
   * string, a Uint8Array as bytes, anything else as its JSON value. Chunks keep their order.
   */
  putStream(chunk: Uint8Array | string | number | boolean | object | null): void {
    const { chunkType, data } = encodeChunk(chunk);
    this.#sink?.({ kind: "stream", chunk: data, chunkType, seq: this.#chunkSeq++ });
  }

  /** True in a durable task (`wf.durableTask`): its ctx is a `DurableContext`. */
  get durable(): boolean {
    return false;
  }

  /**
   * Start a child run of this task's run: `await ref.result()` gives its outputs. The k-th
   * child an attempt starts is the same run in every attempt (or name it with `key`), so a
   * retried task gets its children back instead of starting them again.
   */
  async runChild<I>(workflow: ChildWorkflow<I>, input?: I, options: { key?: string } = {}): Promise<RunRef> {
    return await workflow.runNoWait(input, { ...options, parent: this });
  }

  /** Start many child runs in bulk (`keys`, one per input, name them like `runChild`'s). */
  async runMany<I>(workflow: ChildWorkflow<I>, inputs: I[], options: { keys?: (string | undefined)[] } = {}): Promise<RunRef[]> {
    return await workflow.runMany(inputs, { ...options, parent: this });
  }

  /** The spawn index of the first of `count` child runs about to be started. */
  reserveSpawns(count: number): number {
    const first = this.#spawned;
    this.#spawned += count;
    return first;
  }

  /** Called before waiting for runs' results: a regular task polls (keeping its slot). */
  async awaitRuns(_runIds: string[]): Promise<void> {
    // a DurableContext waits durably instead, holding no slot
  }

  /** Move this attempt's execution deadline to now + `delta`. */
  refreshTimeout(delta: Duration): void {
    this.#sink?.({ kind: "refresh", refreshMs: Math.round(toMs(delta, "refreshTimeout")) });
  }
}
