// What a newcomer hits first: no token, no server, and the start -> run -> stop pattern.
import assert from "node:assert/strict";
import { type AddressInfo, createServer } from "node:net";
import { test } from "node:test";

import { ConfigError, Ratchet } from "../src/index.js";
import { client, unique } from "./helpers.js";

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

function withoutToken(): Ratchet {
  const saved = process.env.RATCHET_TOKEN;
  delete process.env.RATCHET_TOKEN;
  try {
    return new Ratchet();
  } finally {
    process.env.RATCHET_TOKEN = saved;
  }
}

test("no token or no server: a ConfigError that says what to do", async () => {
  const bare = withoutToken();
  await assert.rejects(bare.runs.list(), (err: unknown) => {
    assert.ok(err instanceof ConfigError);
    assert.match(err.message, /no API token: pass new Ratchet\(\{ token \}\) or set RATCHET_TOKEN/);
    return true;
  });
  const wf = bare.task({ name: unique("tokenless") }, () => 1);
  await assert.rejects(bare.worker("w", { workflows: [wf], handleSignals: false }).start(), ConfigError);

  // A port that was free a moment ago: nothing answers there.
  const port = await freePort();
  const away = new Ratchet({ token: "t", apiUrl: `http://127.0.0.1:${port}` });
  await assert.rejects(away.runs.list(), (err: unknown) => {
    assert.ok(err instanceof ConfigError);
    assert.equal(
      err.message,
      `cannot reach the Ratchet API at http://127.0.0.1:${port} (ECONNREFUSED): is it running? ` +
        "Set RATCHET_API_URL or pass new Ratchet({ apiUrl })",
    );
    return true;
  });
});

test("await start() resolves once connected; a run then works; stop() ends it", async () => {
  const wf = client.task({ name: unique("lifecycle") }, (input: { n: number }) => input.n + 1);
  const worker = client.worker(unique("w-life"), { workflows: [wf], handleSignals: false });
  await worker.start({ timeoutMs: 30_000 });
  assert.ok(worker.workerId, "registered before start() resolved");
  assert.deepEqual(await wf.run({ n: 1 }, { timeoutMs: 30_000 }), { [wf.name]: 2 });
  await worker.stop();
  await worker.closed; // resolved: the loop ended
  await worker.start().then(
    () => assert.fail("a stopped worker does not connect again"),
    (err: Error) => assert.match(err.message, /stopped before it connected/),
  );
});

test("several dispatcher addresses: a dead one is passed over", async () => {
  const live = client.config.grpcAddr;
  const port = await freePort(); // nothing listens there
  const r = new Ratchet({ grpcAddr: [`127.0.0.1:${port}`, live] });
  const wf = r.task({ name: unique("failover") }, () => "ok");
  const worker = r.worker(unique("w-failover"), { workflows: [wf], handleSignals: false, logger: { warn: () => undefined } });
  assert.deepEqual([...worker.dispatcherAddrs].sort(), [`127.0.0.1:${port}`, live].sort());
  await worker.start({ timeoutMs: 60_000 });
  try {
    assert.equal(worker.dispatcherAddr, live);
    assert.deepEqual(await wf.run({}, { timeoutMs: 30_000 }), { [wf.name]: "ok" });
  } finally {
    await worker.stop();
  }
});
