/**
 * The context of the task running in this async call chain. The worker runs each attempt's
 * function inside it, so a run triggered from a task (`wf.run`, `wf.runNoWait`, `wf.runMany`)
 * becomes a child run of that task's run, and `ref.result()` in a durable task waits without
 * holding a slot — as the Python SDK does with a context variable.
 */
import { AsyncLocalStorage } from "node:async_hooks";

import type { Context } from "./context.js";

export const currentTask = new AsyncLocalStorage<Context>();

/** The running task's context, or undefined outside a task. */
export function currentContext(): Context | undefined {
  return currentTask.getStore();
}
