// Webhooks and alerts from TypeScript: a hook that GitHub could call, its request log, an
// alert rule, and checking the signature of a delivery Ratchet sent.
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { test } from "node:test";

import { verifySignature } from "../src/index.js";
import { client, eventually, startWorker, unique } from "./helpers.js";

test("a github hook takes a signed request and logs it", async () => {
  const name = unique("gh");
  const hook = await client.webhooks.create({
    name, source: "github", secret: "s3cret", event_key: "'gh.' + headers['x-github-event']",
  });
  assert.match(hook.url_path, new RegExp(`/hooks/[^/]+/${name}$`));
  const body = JSON.stringify({ zen: "hi" });
  const signature = "sha256=" + createHmac("sha256", "s3cret").update(body).digest("hex");
  const resp = await fetch(client.config.apiUrl.replace(/\/$/, "") + hook.url_path, {
    method: "POST", body,
    headers: { "X-GitHub-Event": "ping", "X-GitHub-Delivery": `d-${name}`, "X-Hub-Signature-256": signature },
  });
  assert.equal(resp.status, 202);
  const forged = await fetch(client.config.apiUrl.replace(/\/$/, "") + hook.url_path, {
    method: "POST", body, headers: { "X-GitHub-Event": "ping", "X-Hub-Signature-256": "sha256=00" },
  });
  assert.equal(forged.status, 403);
  const log = await client.webhooks.deliveries(name);
  assert.deepEqual(log.map((d) => [d.status, d.outcome, d.event_id]), [
    [403, "forbidden", null], [202, "accepted", `d-${name}`],
  ]);
  await client.webhooks.delete(name);
});

test("alert rules round-trip", async () => {
  const rule = await client.alerts.create({ on: ["run.failed"], webhook_url: "http://127.0.0.1:9/x" });
  assert.ok((await client.alerts.list()).some((r) => r.id === rule.id));
  await client.alerts.delete(rule.id);
  assert.ok(!(await client.alerts.list()).some((r) => r.id === rule.id));
});

test("verifySignature accepts our signature and refuses tampering", async () => {
  const secret = await client.webhooks.signingSecret();
  const body = '{"run_id":"r1"}';
  const t = Math.floor(Date.now() / 1000);
  const header = `t=${t},v1=` + createHmac("sha256", secret).update(`${t}.${body}`).digest("hex");
  assert.ok(verifySignature(secret, header, body));
  assert.ok(!verifySignature(secret, header, body + " "));
  assert.ok(!verifySignature("whsec_other", header, body));
  assert.ok(!verifySignature(secret, header, body, { nowS: t + 3600 }));
});

test("a run's callbackUrl hears how it ended, signed", async (t) => {
  const received: { headers: Record<string, unknown>; body: string }[] = [];
  const server = createServer((req, res) => {
    let body = "";
    req.on("data", (chunk: Buffer) => { body += chunk.toString(); });
    req.on("end", () => {
      received.push({ headers: req.headers, body });
      res.writeHead(200).end("ok");
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.after(() => server.close());
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/cb`;
  const wf = client.workflow({ name: unique("ts-cb") });
  wf.task({ name: "double" }, (input: Record<string, unknown>) => ({ n: Number(input.n) * 2 }));
  await startWorker(t, "w-cb", { workflows: [wf], slots: 2 });
  const ref = await wf.runNoWait({ n: 4 }, { callbackUrl: url });
  await eventually(() => received.length === 1, 30_000);
  const first = received[0]!;
  const got = JSON.parse(first.body);
  assert.equal(got.run_id, ref.runId);
  assert.equal(got.status, "SUCCEEDED");
  assert.deepEqual(got.output, { double: { n: 8 } });
  const secret = await client.webhooks.signingSecret();
  assert.ok(verifySignature(secret, String(first.headers["ratchet-signature"]), first.body));
});
