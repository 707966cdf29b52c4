/**
 * The worker: one bidirectional gRPC stream to a dispatcher (proto/ratchet/v1/worker.proto),
 * running assigned tasks within `slots`. Behaves like the Python SDK's worker: register with
 * the attempts it still holds, heartbeat, batch task events, reconnect with backoff, drain on stop.
 * With several dispatcher addresses (`a:7077,b:7077`) it starts at a random one and moves to the
 * next whenever a stream drops or an address does not answer, under the same name and worker id.
 */
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { fileURLToPath } from "node:url";

import { Context, type EventSink } from "./context.js";
import { currentTask } from "./current.js";
import { DurableContext, type StepSink } from "./durable.js";
import { ConfigError, MISSING_TOKEN, NonRetryable } from "./errors.js";
import type { Assignment__Output as Assignment } from "./gen/proto/ratchet/v1/Assignment.js";
import type { DispatcherClient } from "./gen/proto/ratchet/v1/Dispatcher.js";
import type { DispatcherMessage__Output as DispatcherMessage } from "./gen/proto/ratchet/v1/DispatcherMessage.js";
import { EventKind } from "./gen/proto/ratchet/v1/EventKind.js";
import type { TaskEvent } from "./gen/proto/ratchet/v1/TaskEvent.js";
import type { WorkerMessage } from "./gen/proto/ratchet/v1/WorkerMessage.js";
import type { ProtoGrpcType } from "./gen/proto/worker.js";
import { decodeRef, encodeRef, limitsFromEnv, PayloadStore, PayloadTooLarge } from "./payloads.js";
import type { RestClient } from "./rest.js";
import type { Task, Workflow } from "./workflow.js";

/** What a worker needs from the client: its address, token, and workflow registration. */
export interface WorkerHost {
  readonly config: { readonly token: string; readonly grpcAddr: string; readonly apiUrl: string };
  /** REST, for what durable tasks ask the API (waitpoints). */
  readonly rest?: RestClient;
  register(...workflows: Workflow<any>[]): Promise<void>;
}

export interface WorkerOptions {
  workflows: Workflow<any>[];
  /** Tasks this worker runs at once; default 10. */
  slots?: number;
  /** Labels tasks can require or prefer (`desiredLabels`). */
  labels?: Record<string, string>;
  /** Durable tasks asleep or waiting at once, holding no regular slot; default 1,000. */
  durableSlots?: number;
  /** Drain and stop on SIGINT/SIGTERM while started; default true. */
  handleSignals?: boolean;
  logger?: Pick<Console, "warn">;
}

const PROTO_FILE = fileURLToPath(new URL("../../proto/ratchet/v1/worker.proto", import.meta.url));
// Must match the flags `npm run gen` passes to proto-loader-gen-types (the generated types).
const LOADER_OPTIONS: protoLoader.Options = { longs: Number, enums: String, defaults: true, oneofs: true };
const MAX_MESSAGE_BYTES = 32 * 1024 * 1024;
const MAX_PENDING_EVENTS = 50_000;
const FINISHED_MEMORY = 20_000; // attempts remembered to drop redelivered assignments
const RECONNECT_MIN_MS = 100;
const RECONNECT_MAX_MS = 5_000;
const FLUSH_WAIT_MS = 2_000;
const FATAL = new Set<number>([grpc.status.UNAUTHENTICATED, grpc.status.INVALID_ARGUMENT]);
const SETTLING = new Set<string>([EventKind.COMPLETED, EventKind.FAILED, EventKind.CANCELLED]);

let dispatcherCtor: ProtoGrpcType["ratchet"]["v1"]["Dispatcher"] | undefined;

/** Dispatcher addresses from `a:7077,b:7077`: trimmed, empties and repeats dropped, order kept. */
export function parseAddrs(raw: string): string[] {
  return [...new Set(raw.split(",").map((a) => a.trim()).filter((a) => a.length > 0))];
}

function dispatcherClient(addr: string): DispatcherClient {
  if (dispatcherCtor === undefined) {
    const definition = protoLoader.loadSync(PROTO_FILE, LOADER_OPTIONS);
    const loaded = grpc.loadPackageDefinition(definition) as unknown as ProtoGrpcType;
    dispatcherCtor = loaded.ratchet.v1.Dispatcher;
  }
  return new dispatcherCtor(addr, grpc.credentials.createInsecure(), {
    "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
  });
}

interface Running {
  readonly taskId: string;
  readonly attempt: number;
  readonly controller: AbortController;
  done: Promise<void>;
  ctx?: Context; // set once the attempt's payloads are loaded
}

/** One live stream: set while registered with a dispatcher. */
interface Session {
  readonly call: grpc.ClientDuplexStream<WorkerMessage, DispatcherMessage>;
  registered: boolean;
}

const keyOf = (taskId: string, attempt: number): string => `${taskId}#${attempt}`;

function decodeJson(raw: Uint8Array | undefined): unknown {
  return raw && raw.length > 0 ? JSON.parse(Buffer.from(raw).toString("utf8")) : null;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Runs the tasks of `workflows`. `await start()` returns once connected (tasks run in the
 * background until `stop()`); `await run()` returns once the worker stopped.
 */
export class Worker {
  readonly name: string;
  readonly slots: number;
  readonly durableSlots: number;
  readonly labels: Record<string, string>;
  workerId = "";
  tenant = "";
  /** The order dispatcher addresses are tried in: from a random one on, wrapping around. */
  readonly dispatcherAddrs: readonly string[];
  /** The address of the dispatcher this worker is registered with; "" between streams. */
  dispatcherAddr = "";
  readonly #host: WorkerHost;
  readonly #workflows: Workflow<any>[];
  readonly #byAction = new Map<string, Task<any, any>>();
  readonly #handleSignals: boolean;
  readonly #logger: Pick<Console, "warn">;
  readonly #running = new Map<string, Running>();
  readonly #finished = new Set<string>(); // insertion-ordered: the oldest is forgotten first
  #pending: TaskEvent[] = [];
  #session: Session | undefined;
  #flushScheduled = false;
  #draining = false;
  #stopping = false;
  #loop: Promise<void> | undefined;
  #outage = false; // a drop was reported and no session registered since
  #sessions = 0; // registrations so far
  // Callbacks woken by state changes: registration, stop requests, running set emptied.
  #onConnected = new Set<() => void>();
  #onStop = new Set<() => void>();
  #onIdle = new Set<() => void>();
  readonly #payloads: PayloadStore;
  readonly #limits: { inline: number; max: number };

  constructor(host: WorkerHost, name: string, options: WorkerOptions) {
    const slots = options.slots ?? 10;
    if (!Number.isInteger(slots) || slots < 1) throw new RangeError("slots must be an integer >= 1");
    this.#host = host;
    this.name = name;
    this.slots = slots;
    const durableSlots = options.durableSlots ?? 1000;
    if (!Number.isInteger(durableSlots) || durableSlots < 1) throw new RangeError("durableSlots must be an integer >= 1");
    this.durableSlots = durableSlots;
    this.#payloads = new PayloadStore(host.config);
    this.#limits = limitsFromEnv();
    this.labels = { ...(options.labels ?? {}) };
    this.#workflows = [...options.workflows];
    this.#handleSignals = options.handleSignals ?? true;
    this.#logger = options.logger ?? console;
    const addrs = parseAddrs(host.config.grpcAddr);
    if (addrs.length === 0) throw new Error("RATCHET_GRPC_ADDR names no dispatcher address");
    const start = Math.floor(Math.random() * addrs.length);
    this.dispatcherAddrs = [...addrs.slice(start), ...addrs.slice(0, start)];
    for (const wf of this.#workflows) {
      for (const task of wf.allTasks()) {
        // Tasks declared without a function run on some other worker: not advertised here.
        if (task.fn !== undefined) this.#byAction.set(task.action, task);
      }
    }
    if (this.#byAction.size === 0) throw new Error("a worker needs at least one workflow task with a function");
  }

  /** The actions this worker advertises (`workflow:task`). */
  get actions(): string[] {
    return [...this.#byAction.keys()].sort();
  }

  // lifecycle ------------------------------------------------------------------------------

  /**
   * Register the workflows, connect, and resolve once registered with a dispatcher: the worker
   * then runs tasks in the background until `stop()`. Rejects if the worker fails first (a bad
   * token, say) or after `timeoutMs` when given. Calling it again is harmless.
   *
   * ```ts
   * await worker.start();
   * const out = await wf.run({ n: 1 });
   * await worker.stop();
   * ```
   */
  async start(options: { timeoutMs?: number } = {}): Promise<void> {
    this.#launch();
    await this.waitConnected(options.timeoutMs ?? Infinity);
  }

  /** Start, and resolve only once the worker stopped (a process that is only a worker). */
  async run(): Promise<void> {
    await this.#launch();
  }

  /** Settles when the worker stopped (rejects if it failed); undefined before start(). */
  get closed(): Promise<void> | undefined {
    return this.#loop;
  }

  #launch(): Promise<void> {
    if (this.#loop === undefined) {
      this.#loop = this.#run();
      this.#loop.catch(() => undefined); // reported through start()/run()/closed, not as unhandled
    }
    return this.#loop;
  }

  /** Resolve once registered with a dispatcher; reject if the worker fails first or time runs out. */
  async waitConnected(timeoutMs = 30_000): Promise<void> {
    if (this.#session?.registered) return;
    const loop = this.#loop;
    if (loop === undefined) throw new Error(`worker ${this.name} is not started: call start() first`);
    let timer: NodeJS.Timeout | undefined;
    let wake: (() => void) | undefined;
    try {
      await Promise.race([
        new Promise<void>((resolve) => {
          wake = resolve;
          this.#onConnected.add(resolve);
        }),
        new Promise<void>((_, reject) => {
          if (Number.isFinite(timeoutMs)) {
            timer = setTimeout(() => reject(new Error(`worker ${this.name} not connected after ${timeoutMs} ms`)), timeoutMs);
          }
        }),
        loop.then(() => {
          throw new Error(`worker ${this.name} stopped before it connected`);
        }),
      ]);
    } finally {
      clearTimeout(timer);
      if (wake) this.#onConnected.delete(wake);
    }
  }

  /**
   * Drain in-flight tasks (up to `drainTimeoutMs`), cancel the rest, then disconnect. Safe
   * before start. Leaves no timer behind: a script ends as soon as its work is done.
   */
  async stop(drainTimeoutMs = 30_000): Promise<void> {
    if (this.#loop === undefined || this.#stopping) {
      await this.#loop?.catch(() => undefined);
      return;
    }
    this.#draining = true;
    let drainTimer: NodeJS.Timeout | undefined;
    await Promise.race([
      this.#idle(),
      new Promise<void>((resolve) => {
        drainTimer = setTimeout(resolve, drainTimeoutMs);
      }),
    ]);
    clearTimeout(drainTimer);
    await this.#cancelAll("worker stopping");
    const flushDeadline = Date.now() + FLUSH_WAIT_MS;
    while (this.#pending.length > 0 && this.#session?.registered && Date.now() < flushDeadline) {
      this.#flush();
      await sleep(5);
    }
    this.#stopping = true;
    for (const wake of this.#onStop) wake();
    await this.#loop.catch(() => undefined);
  }

  async #run(): Promise<void> {
    if (!this.#host.config.token) throw new ConfigError(MISSING_TOKEN);
    await this.#host.register(...this.#workflows);
    let signalled = false;
    const onSignal = (sig: NodeJS.Signals): void => {
      if (signalled) process.exit(sig === "SIGINT" ? 130 : 143); // a second signal: stop waiting
      signalled = true;
      void this.stop();
    };
    if (this.#handleSignals) {
      process.on("SIGINT", onSignal);
      process.on("SIGTERM", onSignal);
    }
    const addrs = this.dispatcherAddrs;
    let index = 0;
    let failures = 0;
    let backoff = RECONNECT_MIN_MS;
    try {
      while (!this.#stopping) {
        const addr = addrs[index]!;
        const sessions = this.#sessions;
        try {
          await this.#connect(addr);
        } catch (err) {
          const code = (err as { code?: unknown }).code;
          if (typeof code === "number" && FATAL.has(code)) throw err;
          // Say it once per outage, not once per attempt while the dispatchers are away.
          if (!this.#stopping && !this.#outage) {
            this.#outage = true;
            this.#logger.warn(
              `ratchet worker ${this.name}: stream to ${addr} dropped (${String(err)}); reconnecting`,
            );
          }
        }
        if (this.#stopping) break;
        // Whether the stream dropped or never came up, that dispatcher may be gone: try the next
        // address. Waits grow only once every address failed in a row.
        index = (index + 1) % addrs.length;
        if (this.#sessions !== sessions) {
          failures = 0;
          backoff = RECONNECT_MIN_MS;
        }
        failures += 1;
        if (failures > addrs.length) backoff = Math.min(RECONNECT_MAX_MS, backoff * 2);
        await this.#sleepUnlessStopped(backoff);
      }
    } finally {
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
      this.#stopping = true;
      await this.#cancelAll("worker stopped");
    }
  }

  #sleepUnlessStopped(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.#onStop.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#onStop.add(done);
    });
  }

  #idle(): Promise<void> {
    if (this.#running.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.#onIdle.add(resolve));
  }

  async #cancelAll(reason: string): Promise<void> {
    const all = [...this.#running.values()];
    for (const r of all) r.controller.abort(new DOMException(reason, "AbortError"));
    await Promise.allSettled(all.map((r) => r.done));
  }

  // the stream -----------------------------------------------------------------------------

  /** One session: register, then serve until the stream drops (rejects) or stop() (resolves). */
  #connect(addr: string): Promise<void> {
    const client = dispatcherClient(addr);
    const metadata = new grpc.Metadata();
    metadata.set("authorization", `Bearer ${this.#host.config.token}`);
    const call = client.Connect(metadata);
    const session: Session = { call, registered: false };
    return new Promise<void>((resolve, reject) => {
      let heartbeat: NodeJS.Timeout | undefined;
      let settled = false;
      const finish = (err?: Error): void => {
        if (settled) return;
        settled = true;
        clearInterval(heartbeat);
        this.#onStop.delete(onStop);
        if (this.#session === session) {
          this.#session = undefined;
          this.dispatcherAddr = "";
        }
        call.end();
        call.cancel();
        client.close();
        if (err) reject(err);
        else resolve();
      };
      const onStop = (): void => finish();
      this.#onStop.add(onStop);
      call.on("error", (err) => finish(err));
      call.on("end", () => finish(new Error("dispatcher ended the stream")));
      call.on("data", (msg: DispatcherMessage) => {
        if (session.registered) {
          this.#onMessage(msg);
          return;
        }
        if (msg.msg !== "registered" || !msg.registered) {
          finish(new Error("dispatcher closed the stream during registration"));
          return;
        }
        this.workerId = msg.registered.workerId;
        this.tenant = msg.registered.tenant;
        session.registered = true;
        this.#outage = false;
        this.#session = session;
        this.dispatcherAddr = addr;
        this.#sessions += 1;
        const intervalMs = Math.max(200, msg.registered.heartbeatIntervalMs);
        heartbeat = setInterval(() => call.write({ heartbeat: { tsMs: Date.now() } }), intervalMs);
        for (const wake of [...this.#onConnected]) wake();
        this.#scheduleFlush();
      });
      call.write({
        register: {
          name: this.name, actions: this.actions, slots: this.slots, labels: this.labels,
          workerId: this.workerId, holding: this.#holding(), durableSlots: this.durableSlots,
        },
      });
      if (this.#stopping) finish();
    });
  }

  /** What this worker still answers for: running attempts and outcomes not yet sent. */
  #holding(): { taskId: string; attempt: number }[] {
    const keys = new Map<string, { taskId: string; attempt: number }>();
    for (const r of this.#running.values()) keys.set(keyOf(r.taskId, r.attempt), { taskId: r.taskId, attempt: r.attempt });
    for (const e of this.#pending) {
      if (SETTLING.has(String(e.kind))) {
        keys.set(keyOf(e.taskId ?? "", e.attempt ?? 0), { taskId: e.taskId ?? "", attempt: e.attempt ?? 0 });
      }
    }
    return [...keys.values()];
  }

  #onMessage(msg: DispatcherMessage): void {
    if (msg.msg === "assignments") {
      for (const a of msg.assignments?.items ?? []) this.#accept(a);
    } else if (msg.msg === "cancels") {
      for (const c of msg.cancels?.items ?? []) {
        const reason = c.reason || "cancelled";
        this.#running.get(keyOf(c.taskId, c.attempt))?.controller.abort(new DOMException(reason, "AbortError"));
      }
    } else if (msg.msg === "wakes") {
      for (const w of msg.wakes?.items ?? []) {
        const ctx = this.#running.get(keyOf(w.taskId, w.attempt))?.ctx;
        if (ctx instanceof DurableContext) ctx.wake(w.position, w.result);
      }
    }
  }

  #emit(event: TaskEvent): void {
    if (this.#pending.length >= MAX_PENDING_EVENTS) {
      // Bounded: under pressure, log lines give way to state changes (as in the Python SDK);
      // a chunk is never dropped silently: putStream throws instead.
      if (event.kind === EventKind.LOG) return;
      if (event.kind === EventKind.STREAM) {
        throw new Error(`${MAX_PENDING_EVENTS} events are waiting for the dispatcher: stream chunk not sent (is the worker disconnected?)`);
      }
    }
    this.#pending.push({ tsMs: Date.now(), ...event });
    this.#scheduleFlush();
  }

  // Events raised in one turn of the event loop go out as one TaskEvents message.
  #scheduleFlush(): void {
    if (this.#flushScheduled) return;
    this.#flushScheduled = true;
    setImmediate(() => {
      this.#flushScheduled = false;
      this.#flush();
    });
  }

  #flush(): void {
    const session = this.#session;
    if (!session?.registered || this.#pending.length === 0) return;
    const batch = this.#pending;
    this.#pending = [];
    session.call.write({ events: { events: batch } }, (err: Error | null | undefined) => {
      if (err) this.#pending.unshift(...batch); // keep them for the next stream
    });
  }

  // running tasks --------------------------------------------------------------------------

  #accept(a: Assignment): void {
    const key = keyOf(a.taskId, a.attempt);
    if (this.#running.has(key) || this.#finished.has(key)) return; // a redelivered assignment
    if (this.#draining) {
      this.#emit({
        taskId: a.taskId, attempt: a.attempt, kind: EventKind.FAILED,
        error: { type: "WorkerLost", message: "worker draining" },
      });
      return;
    }
    const controller = new AbortController();
    const running: Running = { taskId: a.taskId, attempt: a.attempt, controller, done: Promise.resolve() };
    this.#running.set(key, running);
    running.done = this.#execute(a, running).finally(() => {
      this.#running.delete(key);
      this.#finished.add(key);
      if (this.#finished.size > FINISHED_MEMORY) {
        this.#finished.delete(this.#finished.values().next().value as string);
      }
      if (this.#running.size === 0) {
        for (const wake of this.#onIdle) wake();
        this.#onIdle.clear();
      }
    });
  }

  async #execute(a: Assignment, running: Running): Promise<void> {
    const base = { taskId: a.taskId, attempt: a.attempt };
    const signal = running.controller.signal;
    this.#emit({ ...base, kind: EventKind.STARTED });
    try {
      const task = this.#byAction.get(a.action);
      if (task?.fn === undefined) throw new NonRetryable(`this worker has no task ${JSON.stringify(a.action)}`);
      const fn = task.fn;
      const init = {
        runId: a.runId, taskId: a.taskId, taskName: a.taskName, workflow: a.workflow, attempt: a.attempt,
        parentOutputs: await this.#loadAll(a.parentOutputs),
        additional: await this.#loadAll(a.additional),
        metadata: a.metadata, signal, sink: this.#sinkFor(a.taskId, a.attempt),
      };
      const ctx = task.durable
        ? new DurableContext({
          ...init,
          durableLog: a.durableLog.map((d) => ({ ...d })),
          step: this.#stepSink(a.taskId, a.attempt),
          ...(this.#host.rest ? { rest: this.#host.rest } : {}),
        })
        : new Context(init);
      running.ctx = ctx;
      const input = (await this.#load(a.input)) ?? {};
      const work = Promise.resolve().then(() => currentTask.run(ctx, () => fn(input, ctx)));
      const result = await untilAborted(work, signal);
      if (signal.aborted) {
        this.#emit({ ...base, kind: EventKind.CANCELLED });
        return;
      }
      const output = await this.#storeOutput(a.runId, Buffer.from(JSON.stringify(result ?? null), "utf8"));
      this.#emit({ ...base, kind: EventKind.COMPLETED, output });
    } catch (err) {
      if (signal.aborted) {
        this.#emit({ ...base, kind: EventKind.CANCELLED });
        return;
      }
      this.#emit({ ...base, kind: EventKind.FAILED, error: describe(err) });
    }
  }

  /** A payload as JSON data: fetched through the API first when it is a reference. */
  async #load(raw: Uint8Array | undefined): Promise<unknown> {
    const ref = raw ? decodeRef(raw) : undefined;
    return decodeJson(ref === undefined ? raw : await this.#payloads.download(ref));
  }

  async #loadAll(raws: Record<string, Uint8Array>): Promise<Record<string, unknown>> {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(raws)) out[k] = await this.#load(v);
    return out;
  }

  /** The output as it travels: inline when small, else uploaded and sent as a reference. */
  async #storeOutput(runId: string, output: Buffer): Promise<Buffer> {
    if (output.length > this.#limits.max) throw new PayloadTooLarge(output.length, this.#limits.max);
    if (output.length <= this.#limits.inline) return output;
    return Buffer.from(encodeRef(await this.#payloads.upload(runId, output)));
  }

  #stepSink(taskId: string, attempt: number): StepSink {
    return (step) => {
      this.#emit({
        taskId, attempt, kind: EventKind.WAIT,
        step: { position: step.position, kind: step.kind, spec: Buffer.from(step.spec), result: Buffer.from(step.result ?? new Uint8Array()), done: false },
      });
    };
  }

  #sinkFor(taskId: string, attempt: number): EventSink {
    return (event) => {
      const base = { taskId, attempt };
      if (event.kind === "log") {
        this.#emit({ ...base, kind: EventKind.LOG, log: event.log, level: event.level, seq: event.seq });
      } else if (event.kind === "stream") {
        this.#emit({
          ...base, kind: EventKind.STREAM, chunk: Buffer.from(event.chunk), chunkType: event.chunkType, seq: event.seq,
        });
      }
      else this.#emit({ ...base, kind: EventKind.REFRESH_TIMEOUT, refreshMs: event.refreshMs });
    };
  }
}

/**
 * Settle with `work`, or reject as soon as `signal` aborts: a cancelled attempt frees its slot
 * at once even if the function ignores the signal (its eventual result is dropped).
 */
function untilAborted<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    work.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(err);
      },
    );
  });
}

function describe(err: unknown): { type: string; message: string; traceback: string; nonRetryable: boolean } {
  if (err instanceof Error) {
    const type = err.name && err.name !== "Error" ? err.name : err.constructor?.name || "Error";
    return {
      type, message: err.message, traceback: (err.stack ?? "").slice(-8000),
      nonRetryable: err instanceof NonRetryable || err instanceof PayloadTooLarge || err.name === "NonRetryable",
    };
  }
  return { type: typeof err, message: String(err), traceback: "", nonRetryable: false };
}
