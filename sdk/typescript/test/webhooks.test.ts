// Webhooks and alerts from TypeScript: a hook that GitHub could call, its request log, an
// alert rule, and checking the signature of a delivery Ratchet sent.
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { test } from "node:test";

import { verifySignature } from "../src/index.js";
import { client, unique } from "./helpers.js";

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
