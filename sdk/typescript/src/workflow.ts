/** Workflow and task definitions. Every check the server would make runs when a task is declared. */
import { Context, type TaskRef } from "./context.js";
import { currentContext } from "./current.js";
import {
  conditionSpec,
  DurableContext,
  type EventCondition,
  type ParentOutputCondition,
  type SleepCondition,
} from "./durable.js";
import { type Duration, toSeconds } from "./duration.js";
import { WorkflowDefinitionError } from "./errors.js";
import type { Schemas } from "./rest.js";
import type { RunRef } from "./runs.js";

export type TaskFn<I, O> = (input: I, ctx: Context) => O | Promise<O>;
export type DurableTaskFn<I, O> = (input: I, ctx: DurableContext) => O | Promise<O>;
export type Strategy = NonNullable<Schemas["ConcurrencySpec"]["strategy"]>;
export type Per = "second" | "minute" | "hour";

/** At most `maxRuns` runs (or tasks) per value of the CEL `key` over the input run at once. */
export interface Concurrency {
  key: string;
  maxRuns?: number;
  strategy?: Strategy;
}

/** Units a task takes from a limit when it starts: a static `key`, or a CEL `dynamicKey`. */
export interface RateLimit {
  key?: string;
  dynamicKey?: string;
  /** An integer, or CEL over the input yielding one. */
  units?: number | string;
  limit?: number;
  per?: Per;
}

/** A worker label a task wants: required (else never placed there) or preferred by weight. */
export interface DesiredLabel {
  value: string;
  required?: boolean;
  weight?: number;
}

export interface TaskOptions {
  name: string;
  /** Tasks of the same workflow that must succeed first; their outputs reach `ctx.parentOutput`. */
  parents?: Task<any, any>[];
  retries?: number;
  backoffFactor?: number;
  backoffBase?: Duration;
  backoffMax?: Duration;
  executionTimeout?: Duration;
  scheduleTimeout?: Duration;
  concurrency?: Concurrency | Concurrency[];
  rateLimits?: RateLimit[];
  desiredLabels?: Record<string, DesiredLabel | string>;
  /** DAG conditions: the task waits (once ready) until all of these hold: `sleep()`, `event()`. */
  waitFor?: (SleepCondition | EventCondition)[];
  /**
   * Skip the task (it ends SKIPPED; its dependants run, seeing null as its output) when any
   * `parentOutput()` condition holds once it is ready.
   */
  skipIf?: ParentOutputCondition[];
  /** Cancel the task (and its dependants) when any `parentOutput()` condition holds once it is ready. */
  cancelIf?: ParentOutputCondition[];
}

/**
 * Collapse a burst of triggers with the same `key` (CEL over input and metadata; empty: one
 * window for all) into one run, started `period` after the last trigger of the burst or
 * `maxWait` (default 10 periods) after its first. `keep: "last"` gives it the last trigger's
 * input, `"all"` `{items: [inputs in arrival order]}`. Every trigger answers with that run.
 */
export interface Debounce {
  key?: string;
  period: Duration;
  maxWait?: Duration;
  keep?: "last" | "all";
}

/** Collect triggers with the same `key` into one run with input `{items: [...]}`, started once `size` arrived or `maxWait` after the first. */
export interface Batch {
  key?: string;
  size?: number;
  maxWait?: Duration;
}

export interface WorkflowOptions {
  name: string;
  description?: string;
  /** Event keys that trigger a run (the event payload becomes the input). */
  onEvents?: string[];
  onCrons?: string[];
  concurrency?: Concurrency | Concurrency[];
  defaultPriority?: 1 | 2 | 3;
  sticky?: "SOFT" | "HARD";
  /** POSTed every run's id, status and outputs when it ends, signed (docs/webhooks.md). */
  onFinishWebhook?: string;
  debounce?: Debounce;
  batch?: Batch;
}

export interface RunOptions {
  priority?: 1 | 2 | 3;
  metadata?: Record<string, string>;
  /** Pin the run to this registered version (`r.workflows.versions(name)`); default current. */
  versionId?: string;
  /** Inside a task: names the child run (the same key, the same run, across retries). */
  key?: string;
  /** The task whose child this run is; default the task running this code, if any. */
  parent?: Context;
  /**
   * A trigger whose key was seen within `idempotencyTtlS` (seconds; default 24 h;
   * "until_finished": until that run ends) starts nothing and answers the earlier run
   * (`ref.deduplicated`). Per tenant and workflow (docs/flow-control.md).
   */
  idempotencyKey?: string;
  idempotencyTtlS?: number | "until_finished";
  /** POSTed the run's id, status and outputs when it ends, signed (docs/webhooks.md). */
  callbackUrl?: string;
}

/** `parent` of a run trigger: what makes it a child run of a task (see docs/children.md). */
export interface ParentRef {
  run_id: string;
  task_id: string;
  index: number;
  key?: string;
}

export interface WaitOptions {
  /** Give up waiting (not the run) after this long; default one hour. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** What a workflow needs from the client to run itself; `Ratchet` implements it. */
export interface WorkflowHost {
  register(wf: Workflow<any>): Promise<void>;
  trigger(workflow: string, input: unknown, options: RunOptions, parent?: ParentRef): Promise<RunRef>;
  triggerMany(
    workflow: string, inputs: unknown[], options: RunOptions, parents?: (ParentRef | undefined)[],
  ): Promise<RunRef[]>;
}

type TaskSpec = Schemas["TaskSpec"];
type WorkflowSpec = Schemas["WorkflowSpec"];
type Role = "task" | "on_failure" | "on_success";

const NAME = /^[A-Za-z0-9_.:-]{1,128}$/;
const BULK_MAX = 1000;

function checkName(kind: string, name: string): void {
  if (typeof name !== "string" || !NAME.test(name)) {
    throw new WorkflowDefinitionError(
      `${kind} name ${JSON.stringify(name)} must be 1-128 characters of letters, digits, '_', '-', '.', ':'`,
    );
  }
}

function list<T>(value: T | T[] | undefined): T[] {
  if (value === undefined) return [];
  return Array.isArray(value) ? [...value] : [value];
}

function concurrencySpec(c: Concurrency, where: string): Schemas["ConcurrencySpec"] {
  if (!c.key || !c.key.trim()) throw new WorkflowDefinitionError(`${where}: concurrency key is empty`);
  const maxRuns = c.maxRuns ?? 1;
  if (!Number.isInteger(maxRuns) || maxRuns < 1) {
    throw new WorkflowDefinitionError(`${where}: concurrency maxRuns must be an integer >= 1`);
  }
  return { key: c.key, max_runs: maxRuns, strategy: c.strategy ?? "GROUP_ROUND_ROBIN" };
}

function rateLimitSpec(r: RateLimit, where: string): Schemas["RateLimitSpec"] {
  if ((r.key === undefined) === (r.dynamicKey === undefined)) {
    throw new WorkflowDefinitionError(`${where}: a rate limit needs exactly one of key or dynamicKey`);
  }
  const out: Schemas["RateLimitSpec"] = { units: r.units ?? 1 };
  if (r.key !== undefined) out.key = r.key;
  if (r.dynamicKey !== undefined) out.dynamic_key = r.dynamicKey;
  if (r.limit !== undefined) out.limit = r.limit;
  if (r.per !== undefined) out.per = r.per;
  return out;
}

/** A task of a workflow. Declared without a function, it is part of the DAG but runs elsewhere. */
export class Task<I = Record<string, unknown>, O = unknown> implements TaskRef<O> {
  declare readonly __output?: O;
  readonly #spec: TaskSpec;

  constructor(
    readonly workflow: Workflow<I>,
    readonly name: string,
    readonly parents: readonly Task<I, any>[],
    readonly fn: TaskFn<I, O> | undefined,
    options: TaskOptions,
    readonly role: Role = "task",
    readonly durable = false,
  ) {
    const where = `task ${JSON.stringify(name)}`;
    const retries = options.retries ?? 0;
    if (!Number.isInteger(retries) || retries < 0) {
      throw new WorkflowDefinitionError(`${where}: retries must be an integer >= 0`);
    }
    if (fn !== undefined && typeof fn !== "function") {
      throw new WorkflowDefinitionError(`${where}: the task function must be a function (input, ctx)`);
    }
    const timeouts = {
      execution_timeout_s: toSeconds(options.executionTimeout ?? "300s", `${where} executionTimeout`),
      schedule_timeout_s: toSeconds(options.scheduleTimeout ?? "300s", `${where} scheduleTimeout`),
    };
    if (timeouts.execution_timeout_s <= 0 || timeouts.schedule_timeout_s <= 0) {
      throw new WorkflowDefinitionError(`${where}: timeouts must be positive`);
    }
    const labels: TaskSpec["desired_labels"] = {};
    for (const [key, want] of Object.entries(options.desiredLabels ?? {})) {
      const label = typeof want === "string" ? { value: want } : want;
      labels[key] = { value: label.value, required: label.required ?? false, weight: label.weight ?? 1 };
    }
    this.#spec = {
      name,
      parents: parents.map((p) => p.name),
      retries,
      backoff_factor: options.backoffFactor ?? 2,
      backoff_base_s: toSeconds(options.backoffBase ?? "1s", `${where} backoffBase`),
      backoff_max_s: toSeconds(options.backoffMax ?? "60s", `${where} backoffMax`),
      ...timeouts,
      concurrency: list(options.concurrency).map((c) => concurrencySpec(c, where)),
      rate_limits: (options.rateLimits ?? []).map((r) => rateLimitSpec(r, where)),
      desired_labels: labels,
      durable,
      wait_for: (options.waitFor ?? []).map((c) => conditionSpec(c)),
      skip_if: (options.skipIf ?? []).map((c) => conditionSpec(c)),
      cancel_if: (options.cancelIf ?? []).map((c) => conditionSpec(c)),
    } as TaskSpec;
    const parentNames = new Set(parents.map((p) => p.name));
    for (const c of [...(options.skipIf ?? []), ...(options.cancelIf ?? [])]) {
      if (c.kind !== "parent_output") {
        throw new WorkflowDefinitionError(`${where}: skipIf/cancelIf take parentOutput() conditions`);
      }
      if (c.parent && !parentNames.has(c.parent)) {
        throw new WorkflowDefinitionError(`${where}: parentOutput names ${JSON.stringify(c.parent)}, which is not a parent`);
      }
    }
    for (const c of options.waitFor ?? []) {
      if (c.kind !== "sleep" && c.kind !== "event") {
        throw new WorkflowDefinitionError(`${where}: waitFor takes sleep() and event() conditions`);
      }
    }
  }

  /** The action name workers advertise for this task: `workflow:task`. */
  get action(): string {
    return `${this.workflow.name}:${this.name}`;
  }

  spec(): TaskSpec {
    return structuredClone(this.#spec);
  }

  /** Run the function locally without a server, for unit tests. */
  async mockRun(
    input: I,
    options: { parentOutputs?: Record<string, unknown>; attempt?: number; signal?: AbortSignal } = {},
  ): Promise<O> {
    if (this.fn === undefined) throw new Error(`task ${this.name} has no function here`);
    const init = {
      runId: "mock-run", taskId: "mock-task", taskName: this.name, workflow: this.workflow.name,
      attempt: options.attempt ?? 0, parentOutputs: { ...(options.parentOutputs ?? {}) },
      signal: options.signal ?? new AbortController().signal,
    };
    // Durable: no scheduler here, so sleeps end at once and now() is the clock.
    const ctx = this.durable ? new DurableContext(init) : new Context(init);
    return await this.fn(input, ctx);
  }
}

/** A DAG of tasks. Create with `client.workflow({...})`, add tasks with `wf.task({...}, fn)`. */
export class Workflow<I = Record<string, unknown>> {
  readonly name: string;
  readonly tasks = new Map<string, Task<I, any>>();
  onFailure: Task<I, any> | undefined;
  onSuccess: Task<I, any> | undefined;
  readonly #options: WorkflowOptions;
  readonly #concurrency: Schemas["ConcurrencySpec"][];

  constructor(
    readonly host: WorkflowHost,
    options: WorkflowOptions,
  ) {
    checkName("workflow", options.name);
    const priority = options.defaultPriority ?? 1;
    if (![1, 2, 3].includes(priority)) {
      throw new WorkflowDefinitionError("defaultPriority must be 1, 2 or 3");
    }
    this.name = options.name;
    this.#options = { ...options };
    this.#concurrency = list(options.concurrency).map((c) => concurrencySpec(c, `workflow ${this.name}`));
  }

  /**
   * Declare a task. With `fn`, workers of this workflow run it; without, the task is still part
   * of the DAG (so the workflow registers whole) but another worker, in any language, runs it.
   */
  task<O>(options: TaskOptions, fn?: TaskFn<I, O>): Task<I, O> {
    return this.#add(options, fn, false);
  }

  #add<O>(options: TaskOptions, fn: TaskFn<I, O> | undefined, durable: boolean): Task<I, O> {
    checkName("task", options.name);
    this.#checkUnique(options.name);
    for (const parent of options.parents ?? []) {
      if (!(parent instanceof Task) || parent.workflow !== this) {
        throw new WorkflowDefinitionError(
          `task ${JSON.stringify(options.name)}: parents must be tasks of workflow ${JSON.stringify(this.name)}`,
        );
      }
      if (parent.role !== "task") {
        throw new WorkflowDefinitionError("on-failure/on-success tasks cannot be parents");
      }
    }
    const task = new Task<I, O>(this, options.name, [...(options.parents ?? [])], fn, options, "task", durable);
    this.tasks.set(task.name, task);
    return task;
  }

  /**
   * A durable task: its `ctx` is a `DurableContext` whose sleeps and event waits are logged,
   * survive worker restarts and hold no worker slot (see `DurableContext`).
   */
  durableTask<O>(options: TaskOptions, fn?: DurableTaskFn<I, O>): Task<I, O> {
    return this.#add(options, fn as TaskFn<I, O> | undefined, true);
  }

  /** A task that runs once when any task of the run failed (`ctx.taskErrors()` says which). */
  onFailureTask<O>(options: Omit<TaskOptions, "parents">, fn?: TaskFn<I, O>): Task<I, O> {
    return (this.onFailure = this.#hook("on_failure", options, fn));
  }

  /** A task that runs once when every task of the run succeeded. */
  onSuccessTask<O>(options: Omit<TaskOptions, "parents">, fn?: TaskFn<I, O>): Task<I, O> {
    return (this.onSuccess = this.#hook("on_success", options, fn));
  }

  #hook<O>(role: Role, options: Omit<TaskOptions, "parents">, fn?: TaskFn<I, O>): Task<I, O> {
    checkName("task", options.name);
    this.#checkUnique(options.name);
    if ((role === "on_failure" ? this.onFailure : this.onSuccess) !== undefined) {
      throw new WorkflowDefinitionError(`workflow ${JSON.stringify(this.name)} already has an ${role} task`);
    }
    return new Task<I, O>(this, options.name, [], fn, options, role);
  }

  #checkUnique(name: string): void {
    if (this.allTasks().some((t) => t.name === name)) {
      throw new WorkflowDefinitionError(
        `workflow ${JSON.stringify(this.name)} already has a task named ${JSON.stringify(name)}`,
      );
    }
  }

  /** The tasks and hooks, in declaration order. */
  allTasks(): Task<I, any>[] {
    const hooks = [this.onFailure, this.onSuccess].filter((t): t is Task<I, any> => t !== undefined);
    return [...this.tasks.values(), ...hooks];
  }

  /** The JSON definition registered with the API (`POST /workflows`). */
  spec(): WorkflowSpec {
    if (this.tasks.size === 0) {
      throw new WorkflowDefinitionError(`workflow ${JSON.stringify(this.name)} has no tasks`);
    }
    const o = this.#options;
    return {
      name: this.name,
      description: o.description ?? "",
      tasks: [...this.tasks.values()].map((t) => t.spec()),
      on_events: [...(o.onEvents ?? [])],
      on_crons: [...(o.onCrons ?? [])],
      concurrency: structuredClone(this.#concurrency),
      on_failure: this.onFailure?.spec() ?? null,
      on_success: this.onSuccess?.spec() ?? null,
      input_schema: null,
      default_priority: o.defaultPriority ?? 1,
      sticky: o.sticky ?? null,
      ...(o.onFinishWebhook ? { on_finish_webhook: o.onFinishWebhook } : {}),
      ...this.#flow(),
    };
  }

  #flow(): Partial<WorkflowSpec> {
    const { debounce, batch } = this.#options;
    const where = `workflow ${JSON.stringify(this.name)}`;
    if (debounce && batch) throw new WorkflowDefinitionError(`${where}: debounce and batch do not combine`);
    const positive = (d: Duration, what: string): number => {
      const s = toSeconds(d, `${where} ${what}`);
      if (!(s > 0)) throw new WorkflowDefinitionError(`${where}: ${what} must be positive`);
      return s;
    };
    const out: Partial<WorkflowSpec> = {};
    if (debounce) {
      const keep = debounce.keep ?? "last";
      if (keep !== "last" && keep !== "all") throw new WorkflowDefinitionError(`${where}: keep must be "last" or "all"`);
      const period = positive(debounce.period, "debounce period");
      out.debounce = {
        key: debounce.key ?? "", period_s: period,
        max_wait_s: debounce.maxWait === undefined ? 10 * period : positive(debounce.maxWait, "debounce maxWait"), keep,
      };
    }
    if (batch) {
      const size = batch.size ?? 100;
      if (!Number.isInteger(size) || size < 1) throw new WorkflowDefinitionError(`${where}: batch size must be an integer >= 1`);
      out.batch = { key: batch.key ?? "", size, max_wait_s: positive(batch.maxWait ?? "1s", "batch maxWait") };
    }
    return out;
  }

  /**
   * Trigger a run and wait for it: `{taskName: output}`; rejects with RunFailed. Inside a
   * task this starts a child run of the task's run (a durable task waits holding no slot).
   */
  async run(input?: I, options: RunOptions & WaitOptions = {}): Promise<Record<string, unknown>> {
    const ref = await this.runNoWait(input, options);
    return await ref.result(options);
  }

  /** Trigger a run (a child run inside a task); `await ref.result()` later. */
  async runNoWait(input?: I, options: RunOptions = {}): Promise<RunRef> {
    if (options.versionId === undefined) await this.host.register(this);
    const [parent] = parentRefs([options.key], options.parent);
    return await this.host.trigger(this.name, input ?? {}, options, parent);
  }

  /**
   * Trigger many runs, in bulk requests of up to 1,000 (child runs inside a task; `keys`, one
   * per input, name them like `runNoWait`'s `key`).
   */
  async runMany(inputs: I[], options: RunOptions & { keys?: (string | undefined)[] } = {}): Promise<RunRef[]> {
    if (options.keys !== undefined && options.keys.length !== inputs.length) {
      throw new RangeError("runMany: give one key per input");
    }
    if (options.versionId === undefined) await this.host.register(this);
    const parents = parentRefs(options.keys ?? inputs.map(() => undefined), options.parent);
    const refs: RunRef[] = [];
    for (let i = 0; i < inputs.length; i += BULK_MAX) {
      refs.push(...(await this.host.triggerMany(
        this.name, inputs.slice(i, i + BULK_MAX), options, parents.slice(i, i + BULK_MAX),
      )));
    }
    return refs;
  }
}

/**
 * Inside a task, what makes each of these runs a child of it: the task and the spawn index
 * (plus the key, if any). Outside a task, runs are top-level and take no key.
 */
function parentRefs(keys: (string | undefined)[], explicit?: Context): (ParentRef | undefined)[] {
  const ctx = explicit ?? currentContext();
  if (ctx === undefined) {
    if (keys.some((k) => k !== undefined)) throw new Error("a key names a child run: it works only inside a running task");
    return keys.map(() => undefined);
  }
  const first = ctx.reserveSpawns(keys.length);
  return keys.map((key, i) => ({
    run_id: ctx.runId, task_id: ctx.taskId, index: first + i, ...(key !== undefined ? { key } : {}),
  }));
}
