/** `Ratchet`: the entry point — define workflows, trigger and inspect runs, start workers. */
import { type ClientConfig, type ClientOptions, resolveConfig } from "./config.js";
import { Waitpoints } from "./interaction.js";
import { Crons, Events, Filters, RateLimits, Runs, Scheduled, Workflows } from "./resources.js";
import { createRestClient, type RestClient, type Schemas, unwrap } from "./rest.js";
import { RunRef } from "./runs.js";
import { Alerts, Webhooks } from "./webhooks.js";
import { Worker, type WorkerOptions } from "./worker.js";
import {
  type ParentRef,
  type RunOptions,
  type TaskFn,
  type TaskOptions,
  Workflow,
  type WorkflowHost,
  type WorkflowOptions,
} from "./workflow.js";

/** Client for one tenant. Reads RATCHET_TOKEN, RATCHET_API_URL, RATCHET_GRPC_ADDR by default. */
export class Ratchet implements WorkflowHost {
  readonly config: ClientConfig;
  /** The generated REST client, for any operation the helpers below do not wrap. */
  readonly rest: RestClient;
  readonly runs: Runs;
  /** Waitpoints made by durable tasks: complete, get, list. */
  readonly waitpoints: Waitpoints;
  readonly events: Events;
  readonly rateLimits: RateLimits;
  readonly filters: Filters;
  readonly crons: Crons;
  /** One-off runs at a set time. */
  readonly scheduled: Scheduled;
  readonly workflows: Workflows;
  /** Incoming webhooks, the outgoing signing secret and delivery log. */
  readonly webhooks: Webhooks;
  /** Alert rules. */
  readonly alerts: Alerts;
  // The spec last registered per workflow object, so an unchanged one is not sent again.
  readonly #registered = new WeakMap<Workflow<any>, string>();

  constructor(options: ClientOptions = {}) {
    this.config = resolveConfig(options);
    this.rest = createRestClient(this.config);
    this.runs = new Runs(this.rest);
    this.waitpoints = new Waitpoints(this.rest);
    this.events = new Events(this.rest);
    this.rateLimits = new RateLimits(this.rest);
    this.filters = new Filters(this.rest);
    this.crons = new Crons(this.rest);
    this.scheduled = new Scheduled(this.rest);
    this.workflows = new Workflows(this.rest);
    this.webhooks = new Webhooks(this.rest);
    this.alerts = new Alerts(this.rest);
  }

  /** Declare a workflow; add tasks with `wf.task({...}, fn)`. */
  workflow<I = Record<string, unknown>>(options: WorkflowOptions): Workflow<I> {
    return new Workflow<I>(this, options);
  }

  /** A standalone task: a one-task workflow named after the task. */
  task<I = Record<string, unknown>, O = unknown>(
    options: TaskOptions & Omit<WorkflowOptions, "name">,
    fn: TaskFn<I, O>,
  ): Workflow<I> {
    const { onEvents, onCrons, concurrency, description, defaultPriority, sticky, debounce, batch, ...taskOptions } = options;
    // As in the Python SDK, `concurrency` here limits runs of the one-task workflow.
    const wf = this.workflow<I>({
      name: options.name, onEvents, onCrons, concurrency, description, defaultPriority, sticky, debounce, batch,
    });
    wf.task(taskOptions, fn);
    return wf;
  }

  /** A worker running the tasks of `workflows`: `await worker.start()` connects it, `stop()` ends it. */
  worker(name: string, options: WorkerOptions): Worker {
    return new Worker(this, name, options);
  }

  /** Register workflows (workers and runs do this on their own). */
  async register(...workflows: Workflow<any>[]): Promise<void> {
    for (const wf of workflows) {
      const spec = wf.spec();
      const json = JSON.stringify(spec);
      if (this.#registered.get(wf) === json) continue;
      await unwrap(this.rest.POST("/workflows", { body: spec }));
      this.#registered.set(wf, json);
    }
  }

  async trigger(workflow: string, input: unknown, options: RunOptions, parent?: ParentRef): Promise<RunRef> {
    const out = await unwrap(this.rest.POST("/workflows/{name}/run", {
      params: { path: { name: workflow } },
      body: runBody(input, options, parent),
    }));
    return new RunRef(this.rest, out.run_id, out.deduplicated ?? false);
  }

  async triggerMany(
    workflow: string, inputs: unknown[], options: RunOptions, parents: (ParentRef | undefined)[] = [],
  ): Promise<RunRef[]> {
    const common: RunOptions = { priority: options.priority, versionId: options.versionId };
    const out = await unwrap(this.rest.POST("/workflows/{name}/run/bulk", {
      params: { path: { name: workflow } },
      body: { runs: inputs.map((input, i) => runBody(input, common, parents[i])) },
    }));
    return out.run_ids.map((id) => new RunRef(this.rest, id));
  }
}

function runBody(input: unknown, options: RunOptions, parent?: ParentRef): Schemas["RunRequest"] {
  const body: Schemas["RunRequest"] = { input: input ?? {} };
  if (parent !== undefined) body.parent = parent;
  if (options.priority !== undefined) body.priority = options.priority;
  if (options.metadata && Object.keys(options.metadata).length > 0) body.metadata = options.metadata;
  if (options.versionId !== undefined) body.version_id = options.versionId;
  if (options.callbackUrl !== undefined) body.callback_url = options.callbackUrl;
  if (options.idempotencyKey !== undefined) {
    body.idempotency_key = options.idempotencyKey;
    if (options.idempotencyTtlS !== undefined) body.idempotency_ttl = options.idempotencyTtlS;
  }
  return body;
}
