/** Webhooks and alerts: `r.webhooks` (incoming hooks, their request logs, the outgoing
 * signing secret and delivery log), `r.alerts` (alert rules), and `verifySignature` for
 * receivers of the deliveries Ratchet sends. */
import { createHmac, timingSafeEqual } from "node:crypto";

import { type RestClient, type Schemas, unwrap } from "./rest.js";

export const SIGNATURE_HEADER = "Ratchet-Signature";

export class Webhooks {
  constructor(readonly rest: RestClient) {}

  /** Create a hook: requests to `POST /hooks/<tenant>/<name>` become events. */
  async create(body: Schemas["WebhookIn"]): Promise<Schemas["WebhookView"]> {
    return await unwrap(this.rest.POST("/webhooks", { body }));
  }

  async list(): Promise<Schemas["WebhookView"][]> {
    return await unwrap(this.rest.GET("/webhooks"));
  }

  async get(name: string): Promise<Schemas["WebhookView"]> {
    return await unwrap(this.rest.GET("/webhooks/{name}", { params: { path: { name } } }));
  }

  async delete(name: string): Promise<void> {
    await unwrap(this.rest.DELETE("/webhooks/{name}", { params: { path: { name } } }));
  }

  /** The hook's last requests (up to 100), newest first. */
  async deliveries(name: string, options: { limit?: number } = {}): Promise<Schemas["HookDeliveryView"][]> {
    return await unwrap(this.rest.GET("/webhooks/{name}/deliveries", { params: { path: { name }, query: options } }));
  }

  /** Outgoing deliveries (run callbacks, alert messages) and their retry state. */
  async outgoing(
    options: { run_id?: string; rule_id?: string; kind?: "callback" | "alert"; limit?: number } = {},
  ): Promise<Schemas["OutboundDeliveryView"][]> {
    return await unwrap(this.rest.GET("/deliveries", { params: { query: options } }));
  }

  /** The key outgoing deliveries are signed with. */
  async signingSecret(): Promise<string> {
    return (await unwrap(this.rest.GET("/signing-secret"))).secret;
  }

  async rotateSigningSecret(): Promise<string> {
    return (await unwrap(this.rest.POST("/signing-secret/rotate"))).secret;
  }
}

export class Alerts {
  constructor(readonly rest: RestClient) {}

  /** Create a rule (`on`: run.failed, worker.pool_empty, token.expiring, limit.reached). */
  async create(body: Schemas["AlertIn"]): Promise<Schemas["AlertView"]> {
    return await unwrap(this.rest.POST("/alerts", { body }));
  }

  async list(): Promise<Schemas["AlertView"][]> {
    return await unwrap(this.rest.GET("/alerts"));
  }

  async get(ruleId: string): Promise<Schemas["AlertView"]> {
    return await unwrap(this.rest.GET("/alerts/{rule_id}", { params: { path: { rule_id: ruleId } } }));
  }

  async delete(ruleId: string): Promise<void> {
    await unwrap(this.rest.DELETE("/alerts/{rule_id}", { params: { path: { rule_id: ruleId } } }));
  }

  /** Send a test message to each destination of the rule now. */
  async test(ruleId: string): Promise<Schemas["AlertTestSent"]> {
    return await unwrap(this.rest.POST("/alerts/{rule_id}/test", { params: { path: { rule_id: ruleId } } }));
  }
}

/** Whether `header` (a delivery's `Ratchet-Signature`, `t=<unix>,v1=<hex>`) signs `body` with
 * `secret` (HMAC-SHA256 of `<t>.<body>`) and its timestamp is within `toleranceS` of now. */
export function verifySignature(
  secret: string, header: string, body: Uint8Array | string,
  options: { toleranceS?: number; nowS?: number } = {},
): boolean {
  const parts = new Map(header.split(",").map((p) => {
    const [k, ...rest] = p.trim().split("=");
    return [k, rest.join("=")] as [string, string];
  }));
  const stamp = parts.get("t") ?? "";
  const given = parts.get("v1") ?? "";
  if (!/^\d+$/.test(stamp) || !given) return false;
  const now = options.nowS ?? Date.now() / 1000;
  if (Math.abs(now - Number(stamp)) > (options.toleranceS ?? 300)) return false;
  const mac = createHmac("sha256", secret).update(`${stamp}.`).update(body).digest("hex");
  const a = Buffer.from(mac);
  const b = Buffer.from(given);
  return a.length === b.length && timingSafeEqual(a, b);
}
