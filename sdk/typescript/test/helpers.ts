/**
 * Shared test plumbing. The suite runs against a real stack: RATCHET_* from the environment
 * (tests/integration/test_typescript.py passes a fresh tenant's), else the `.run/env` that
 * `make up` writes at the repository root.
 */
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import type { TestContext } from "node:test";
import { fileURLToPath } from "node:url";

import { Ratchet, type Worker, type WorkerOptions } from "../src/index.js";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "..");

function loadRunEnv(): void {
  if (process.env.RATCHET_TOKEN) return;
  const file = resolve(process.env.RATCHET_RUN_DIR || resolve(REPO, ".run"), "env");
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch {
    throw new Error(`RATCHET_TOKEN is not set and ${file} is missing: run \`make up\` first`);
  }
  for (const line of text.split("\n")) {
    const match = /^\s*(RATCHET_[A-Z_]+)\s*=\s*(.*?)\s*$/.exec(line);
    if (match && process.env[match[1] as string] === undefined) {
      process.env[match[1] as string] = (match[2] as string).replace(/^['"]|['"]$/g, "");
    }
  }
}

loadRunEnv();

export const client = new Ratchet();

/** A name no other test (or earlier run against the same stack) uses. */
export function unique(prefix: string): string {
  return `${prefix}-${randomBytes(4).toString("hex")}`;
}

/** Start a worker for the duration of test `t`; resolves once it is registered. */
export async function startWorker(t: TestContext, name: string, options: WorkerOptions): Promise<Worker> {
  const worker = client.worker(unique(name), { handleSignals: false, ...options });
  t.after(async () => {
    await worker.stop(5_000);
  });
  await worker.start({ timeoutMs: 30_000 });
  return worker;
}

/** Poll `check` until it is true; fail after `timeoutMs`. */
export async function eventually(check: () => Promise<boolean> | boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error("condition not met before the deadline");
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A promise with its resolve function, to observe something happening inside a task. */
export function signal<T = void>(): { promise: Promise<T>; resolve: (value: T) => void; done: () => boolean } {
  let resolve!: (value: T) => void;
  let fired = false;
  const promise = new Promise<T>((r) => {
    resolve = (value: T) => {
      fired = true;
      r(value);
    };
  });
  return { promise, resolve, done: () => fired };
}

/** `promise`, or a rejection naming `what` after `timeoutMs`. */
export async function within<T>(promise: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: not within ${timeoutMs} ms`)), timeoutMs);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
