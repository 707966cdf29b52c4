/**
 * Durable tasks and conditions: `DurableContext`, and the conditions `sleep`, `event` and
 * `parentOutput`.
 *
 * A durable task (`wf.durableTask(...)`) gets a `DurableContext`. Each of its waits and
 * memoized reads takes the next *position* in the task's durable log, kept by the scheduler.
 * While a wait is pending the task holds no regular worker slot. If the worker dies, the task
 * runs again from the top on any worker and *replays*: each call finds its position in the log
 * and returns the recorded result at once, up to the wait still pending, which keeps its
 * original deadline. The code must ask for the same waits in the same order on every replay;
 * asking for another at a recorded position throws `NonDeterminism` naming the position.
 *
 * The wire format is the Python SDK's: a wait's spec is canonical JSON `{"conds": [...]}`
 * (keys sorted, no spaces, non-ASCII escaped), each condition `{"sleep_ms": n}`,
 * `{"until_ms": t}`, `{"event": key, "expression": e, "scope": s}` or `{"run": id}`, a
 * timeout being a sleep with `"timeout": true`; the result `{"index": i, "payload": p}`.
 */
import { Context, type ContextInit } from "./context.js";
import type { RestClient } from "./rest.js";
import { unwrap } from "./rest.js";
import { type Duration, toMs } from "./duration.js";
import { NonRetryable } from "./errors.js";

/** A replay asked for a different wait than the one recorded at `position`. */
export class NonDeterminism extends NonRetryable {
  override name = "NonDeterminism";
  constructor(
    readonly position: number,
    message: string,
  ) {
    super(`non-deterministic durable task at position ${position}: ${message}`);
  }
}

/** `waitForEvent` (or a wait with a timeout) gave up: no matching event arrived in time. */
export class WaitTimeoutError extends Error {
  override name = "TimeoutError";
}

/** Holds once `duration` has passed (since the wait, or since a DAG task became ready). */
export interface SleepCondition {
  readonly kind: "sleep";
  readonly ms: number;
}

/** Holds when an event `key` arrives (in `scope`) whose payload passes the CEL `expression`. */
export interface EventCondition {
  readonly kind: "event";
  readonly key: string;
  readonly expression?: string;
  readonly scope?: string;
}

/**
 * For `skipIf` / `cancelIf`: CEL over the parents' outputs, where `input` is the output of
 * `parent` (or of the only parent; with several, a map by name) and `payload` maps every
 * parent's output by name.
 */
export interface ParentOutputCondition {
  readonly kind: "parent_output";
  readonly expression: string;
  readonly parent?: string;
}

/** Holds when signal `name` is sent to the run (`r.runs.signal`); an earlier one not yet taken counts. */
export interface SignalCondition {
  readonly kind: "signal";
  readonly name: string;
}

export type Condition = SleepCondition | EventCondition | SignalCondition;

/** A waitpoint (`ctx.createWaitpoint`): POSTing JSON to `url` completes it, no token needed. */
export interface Waitpoint {
  id: string;
  url: string;
  expiresAt: Date;
  label: string;
}

/** What the server keeps of one `ctx.setState`. */
export const MAX_STATE_BYTES = 64 * 1024;
const SIGNAL_NAME = /^[A-Za-z0-9_.:-]{1,128}$/;

export function signal(name: string): SignalCondition {
  if (!SIGNAL_NAME.test(name)) throw new RangeError(`invalid signal name ${JSON.stringify(name)}: 1 to 128 of A-Z a-z 0-9 _ . : -`);
  return { kind: "signal", name };
}

export function sleep(duration: Duration): SleepCondition {
  const ms = toMs(duration, "sleep");
  if (ms < 0) throw new RangeError("a sleep lasts zero seconds or more");
  return { kind: "sleep", ms };
}

export function event(key: string, options: { expression?: string; scope?: string } = {}): EventCondition {
  if (!key || /\s/.test(key)) throw new RangeError(`invalid event key ${JSON.stringify(key)}`);
  return { kind: "event", key, ...options };
}

export function parentOutput(expression: string, parent?: { name: string } | string): ParentOutputCondition {
  const name = parent === undefined ? undefined : typeof parent === "string" ? parent : parent.name;
  return { kind: "parent_output", expression, ...(name ? { parent: name } : {}) };
}

/** Which condition of `waitAny` fired first: its index, the condition, an event's payload. */
export interface WaitAnyResult {
  index: number;
  condition: Condition;
  payload: unknown;
}

/** The registered (JSON) form of a DAG condition, as the Python SDK writes it. */
export function conditionSpec(c: SleepCondition | EventCondition | ParentOutputCondition): Record<string, unknown> {
  if (c.kind === "sleep") return { kind: "sleep", sleep_s: c.ms / 1000 };
  if (c.kind === "event") return { kind: "event", key: c.key, expression: c.expression ?? "", scope: c.scope ?? null };
  return { kind: "parent_output", expression: c.expression, parent: c.parent ?? "" };
}

function waitCond(c: Condition): Record<string, unknown> {
  if (c.kind === "sleep") return { sleep_ms: Math.trunc(c.ms) };
  if (c.kind === "event") return { event: c.key, expression: c.expression ?? "", scope: c.scope ?? null };
  if (c.kind === "signal") return { signal: c.name };
  throw new TypeError(`waitAny takes sleep(), event() and signal() conditions, not ${JSON.stringify(c)}`);
}

/** JSON with sorted keys, no spaces and non-ASCII escaped: byte for byte what Python writes. */
export function canonicalJson(value: unknown): string {
  const sort = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(sort);
    if (v && typeof v === "object") {
      return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sort((v as Record<string, unknown>)[k])]));
    }
    return v;
  };
  return JSON.stringify(sort(value)).replace(/[\u0080-\uffff]/g, (ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

/** One entry of the durable log, as assignments carry it. */
export interface DurableStep {
  position: number;
  kind: string;
  spec: Uint8Array;
  result: Uint8Array;
  done: boolean;
}

/** How a durable context reports a step (a wait, or a memoized read) to its worker. */
export type StepSink = (step: { position: number; kind: string; spec: Uint8Array; result?: Uint8Array }) => void;

export interface DurableContextInit extends ContextInit {
  durableLog?: DurableStep[];
  step?: StepSink;
  /** REST, for waitpoints; absent in mockRun. */
  rest?: RestClient;
}

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

/** The `ctx` of a durable task: everything `Context` has, plus durable waits. */
export class DurableContext extends Context {
  readonly #log: Map<number, DurableStep>;
  readonly #step: StepSink | undefined;
  readonly #waiters = new Map<number, (result: Uint8Array) => void>();
  readonly #rest: RestClient | undefined;
  #position = 0;
  /** The last value this attempt passed to `setState` (what mockRun leaves to look at). */
  state: unknown = null;

  constructor(init: DurableContextInit) {
    super(init);
    this.#log = new Map((init.durableLog ?? []).map((s) => [s.position, s]));
    this.#step = init.step;
    this.#rest = init.rest;
  }

  override get durable(): boolean {
    return true;
  }

  /** Sleep durably: a restart resumes the sleep, keeping its original end. */
  async sleepFor(duration: Duration): Promise<void> {
    await this.#wait([waitCond(sleep(duration))]);
  }

  /** Sleep durably until `when`. */
  async sleepUntil(when: Date): Promise<void> {
    if (!(when instanceof Date) || Number.isNaN(when.getTime())) throw new TypeError("sleepUntil needs a valid Date");
    await this.#wait([{ until_ms: when.getTime() }]);
  }

  /**
   * Wait for an event `key` published after this call whose payload passes the CEL
   * `expression` (the payload is `input`); return its payload. With `timeout`, throws a
   * `TimeoutError` when none arrived in time.
   */
  async waitForEvent(
    key: string,
    options: { expression?: string; scope?: string; timeout?: Duration } = {},
  ): Promise<unknown> {
    const conds = [waitCond(event(key, { expression: options.expression, scope: options.scope }))];
    if (options.timeout !== undefined) conds.push({ ...waitCond(sleep(options.timeout)), timeout: true });
    const [index, payload] = await this.#wait(conds);
    if (index !== 0) throw new WaitTimeoutError(`no ${JSON.stringify(key)} event arrived within ${options.timeout}`);
    return payload;
  }

  /**
   * Wait for signal `name` sent to this run (`r.runs.signal`); return its payload. A signal
   * sent before this call and not taken by an earlier wait is returned at once (oldest first).
   * With `timeout`, throws a `TimeoutError` when none arrived in time.
   */
  async waitForSignal(name: string, options: { timeout?: Duration } = {}): Promise<unknown> {
    const conds = [waitCond(signal(name))];
    if (options.timeout !== undefined) conds.push({ ...waitCond(sleep(options.timeout)), timeout: true });
    const [index, payload] = await this.#wait(conds);
    if (index !== 0) throw new WaitTimeoutError(`no ${JSON.stringify(name)} signal arrived within ${options.timeout}`);
    return payload;
  }

  /**
   * Publish the run's state: small JSON (at most 64 KiB) that `r.runs.state(runId)` returns,
   * the latest winning. Recorded in the durable log: a replay reaching this call again keeps
   * the value recorded the first time.
   */
  setState(value: unknown): void {
    const raw = canonicalJson(value ?? null);
    const bytes = utf8.encode(raw);
    if (bytes.length > MAX_STATE_BYTES) {
      throw new RangeError(`a run state is at most ${MAX_STATE_BYTES} bytes of JSON, not ${bytes.length}`);
    }
    const position = this.#position++;
    const entry = this.#log.get(position);
    if (entry !== undefined) {
      if (entry.kind !== "state") throw new NonDeterminism(position, `the log has a ${entry.kind}, the code set state`);
      return;
    }
    this.state = value;
    this.#step?.({ position, kind: "state", spec: bytes, result: bytes });
  }

  /**
   * Make a waitpoint: a signed URL that completes it when JSON is POSTed to it (no token
   * needed), for `waitForWaitpoint`. It expires after `timeout` (7 days by default). A replay
   * returns the same waitpoint.
   */
  async createWaitpoint(options: { timeout?: Duration; label?: string } = {}): Promise<Waitpoint> {
    const label = options.label ?? "";
    const timeoutS = options.timeout === undefined ? null : toMs(options.timeout, "waitpoint timeout") / 1000;
    const position = this.#position++;
    const entry = this.#log.get(position);
    if (entry !== undefined) {
      if (entry.kind !== "waitpoint") throw new NonDeterminism(position, `the log has a ${entry.kind}, the code asked for a waitpoint`);
      return toWaitpoint(JSON.parse(fromUtf8.decode(entry.result)) as WaitpointMemo);
    }
    if (this.#rest === undefined || this.#step === undefined) {
      throw new Error("mockRun cannot make waitpoints: they need the server");
    }
    const doc = await unwrap(this.#rest.POST("/runs/{run_id}/waitpoints", {
      params: { path: { run_id: this.runId } },
      body: { task_id: this.taskId, position, timeout_s: timeoutS, label },
    }));
    const memo: WaitpointMemo = { id: doc.id, url: String(doc.url ?? ""), expires_at: doc.expires_at, label: doc.label };
    this.#step({
      position, kind: "waitpoint", spec: utf8.encode(canonicalJson({ label })), result: utf8.encode(canonicalJson(memo)),
    });
    return toWaitpoint(memo);
  }

  /** Wait until the waitpoint is completed; return its JSON. Throws `TimeoutError` once it expired. */
  async waitForWaitpoint(waitpoint: Waitpoint): Promise<unknown> {
    const [index, payload] = await this.#wait([
      { waitpoint: waitpoint.id }, { until_ms: waitpoint.expiresAt.getTime(), timeout: true },
    ]);
    if (index !== 0) throw new WaitTimeoutError(`waitpoint ${waitpoint.id} expired before it was completed`);
    return payload;
  }

  /** Wait for the first of several `sleep()` / `event()` / `signal()` conditions; say which fired. */
  async waitAny(...conditions: Condition[]): Promise<WaitAnyResult> {
    if (conditions.length === 0) throw new RangeError("waitAny needs at least one condition");
    const [index, payload] = await this.#wait(conditions.map(waitCond));
    return { index, condition: conditions[index] as Condition, payload };
  }

  /** The current time, recorded on first use: a replay gets the same value. */
  async now(): Promise<Date> {
    const position = this.#position++;
    const entry = this.#log.get(position);
    if (entry !== undefined) {
      if (entry.kind !== "now") throw new NonDeterminism(position, `the log has a ${entry.kind}, the code asked for now`);
      return new Date(Number(JSON.parse(fromUtf8.decode(entry.result))));
    }
    const nowMs = Date.now();
    this.#step?.({ position, kind: "now", spec: utf8.encode("{}"), result: utf8.encode(String(nowMs)) });
    return new Date(nowMs);
  }

  /** Awaiting child runs in a durable task: wait durably (no slot held) for each to end. */
  override async awaitRuns(runIds: string[]): Promise<void> {
    if (this.#step === undefined) return; // mockRun: nothing to wait for
    for (const runId of runIds) await this.#wait([{ run: runId }]);
  }

  /** The scheduler says the wait at `position` is over (a Wake from the dispatcher). */
  wake(position: number, result: Uint8Array): void {
    this.#waiters.get(position)?.(result);
  }

  async #wait(conds: Record<string, unknown>[]): Promise<[number, unknown]> {
    const position = this.#position++;
    const spec = canonicalJson({ conds });
    const entry = this.#log.get(position);
    if (entry !== undefined) {
      const recorded = fromUtf8.decode(entry.spec);
      if (entry.kind !== "wait" || recorded !== spec) {
        throw new NonDeterminism(position, `the log has ${entry.kind} ${recorded}, the code asked for wait ${spec}`);
      }
      if (entry.done) return outcome(position, entry.result);
    }
    if (this.#step === undefined) return mocked(conds);
    const result = await new Promise<Uint8Array>((resolve, reject) => {
      this.#waiters.set(position, resolve);
      const onAbort = (): void => reject(this.signal.reason);
      if (this.signal.aborted) onAbort();
      else this.signal.addEventListener("abort", onAbort, { once: true });
      this.#step?.({ position, kind: "wait", spec: utf8.encode(spec) });
    }).finally(() => this.#waiters.delete(position));
    return outcome(position, result);
  }
}

interface WaitpointMemo {
  id: string;
  url: string;
  expires_at: string;
  label: string;
}

function toWaitpoint(memo: WaitpointMemo): Waitpoint {
  return { id: memo.id, url: memo.url, expiresAt: new Date(memo.expires_at), label: memo.label ?? "" };
}

/** mockRun: no scheduler, so sleeps (and timeouts) end at once; events alone never do. */
function mocked(conds: Record<string, unknown>[]): [number, unknown] {
  const index = conds.findIndex((c) => "sleep_ms" in c || "until_ms" in c);
  if (index < 0) throw new Error("mockRun cannot deliver events: give the wait a timeout or a sleep");
  return [index, null];
}

function outcome(position: number, raw: Uint8Array): [number, unknown] {
  const doc = JSON.parse(fromUtf8.decode(raw) || "null") as { index?: number; payload?: unknown; error?: string; message?: string } | null;
  if (!doc || typeof doc !== "object") throw new Error(`unreadable durable result at position ${position}`);
  if (doc.error !== undefined) {
    if (doc.error === "NonDeterminism") throw new NonDeterminism(position, String(doc.message ?? ""));
    throw new NonRetryable(`${doc.error}: ${doc.message ?? ""}`);
  }
  return [Number(doc.index), doc.payload ?? null];
}
