/**
 * Large payloads, as the Python SDK moves them. An input, parent output or task output larger
 * than the inline limit travels as a *reference*: the magic prefix `\0RREF\x01`, then msgpack
 * of (tenant, scope id, raw sha256, size). The blob itself goes through the API's
 * `PUT /payloads/{scope}` (upload, answered with its key) and `GET /payloads/blobs/{key}?size=`
 * (download, its sha256 checked by the server).
 */
import { decode, encode } from "@msgpack/msgpack";

import { ApiError, ConfigError, MISSING_TOKEN } from "./errors.js";

/** Must equal the server's: NUL (never valid JSON), a tag, a format version. */
export const REF_MAGIC = Uint8Array.from([0x00, 0x52, 0x52, 0x45, 0x46, 0x01]);
/** Defaults of RATCHET_PAYLOAD_INLINE_BYTES and RATCHET_MAX_PAYLOAD_BYTES (the server's). */
export const DEFAULT_INLINE_BYTES = 128 * 1024;
export const DEFAULT_MAX_BYTES = 64 * 1024 * 1024;

/** A task's output is larger than the largest payload the server accepts. */
export class PayloadTooLarge extends Error {
  override name = "PayloadTooLarge";
  constructor(
    readonly size: number,
    readonly limit: number,
  ) {
    super(`payload too large: ${size} bytes, the limit is ${limit} bytes`);
  }
}

/** A stored payload: its key `<tenant>/<scope>/<sha256>`, the sha256 (hex) and size. */
export interface PayloadRef {
  key: string;
  sha256: string;
  size: number;
}

export function isRef(data: Uint8Array): boolean {
  return data.length >= REF_MAGIC.length && REF_MAGIC.every((b, i) => data[i] === b);
}

export function encodeRef(ref: PayloadRef): Uint8Array {
  const [tenant, scope] = ref.key.split("/");
  const body = encode([tenant, scope, Buffer.from(ref.sha256, "hex"), ref.size]);
  const out = new Uint8Array(REF_MAGIC.length + body.length);
  out.set(REF_MAGIC, 0);
  out.set(body, REF_MAGIC.length);
  return out;
}

/** The reference `data` encodes, or undefined when it is an inline payload. */
export function decodeRef(data: Uint8Array): PayloadRef | undefined {
  if (!isRef(data)) return undefined;
  const doc = decode(data.subarray(REF_MAGIC.length));
  if (!Array.isArray(doc) || doc.length !== 4 || !(doc[2] instanceof Uint8Array)) {
    throw new Error("malformed payload reference");
  }
  const [tenant, scope, digest, size] = doc as [string, string, Uint8Array, number];
  const sha256 = Buffer.from(digest).toString("hex");
  return { key: `${tenant}/${scope}/${sha256}`, sha256, size: Number(size) };
}

/** (inline bytes, max bytes): the settings the server reads, with its defaults. */
export function limitsFromEnv(env: NodeJS.ProcessEnv = process.env): { inline: number; max: number } {
  const inline = Number(env.RATCHET_PAYLOAD_INLINE_BYTES ?? DEFAULT_INLINE_BYTES);
  const max = Number(env.RATCHET_MAX_PAYLOAD_BYTES ?? DEFAULT_MAX_BYTES);
  if (!(inline >= 0) || !(max > 0)) {
    throw new RangeError("RATCHET_PAYLOAD_INLINE_BYTES must be >= 0, RATCHET_MAX_PAYLOAD_BYTES > 0");
  }
  return { inline, max };
}

/** Moves blobs through the API. */
export class PayloadStore {
  constructor(private readonly config: { readonly apiUrl: string; readonly token: string }) {}

  #headers(extra: Record<string, string> = {}): Record<string, string> {
    if (!this.config.token) throw new ConfigError(MISSING_TOKEN);
    return { authorization: `Bearer ${this.config.token}`, ...extra };
  }

  /** Store `data` as a payload of `scopeId` (a run id). */
  async upload(scopeId: string, data: Uint8Array): Promise<PayloadRef> {
    const resp = await fetch(`${this.config.apiUrl}/payloads/${encodeURIComponent(scopeId)}`, {
      method: "PUT",
      headers: this.#headers({ "content-type": "application/octet-stream" }),
      body: data,
    });
    const body = (await resp.json().catch(() => ({}))) as Record<string, unknown>;
    if (resp.status === 413) {
      const extra = (body.extra ?? {}) as { size?: number; limit?: number };
      throw new PayloadTooLarge(Number(extra.size ?? data.length), Number(extra.limit ?? 0));
    }
    if (!resp.ok) throw new ApiError(resp.status, String(body.detail ?? resp.statusText), body.extra);
    return { key: String(body.key), sha256: String(body.sha256), size: Number(body.size) };
  }

  /** The payload `ref` names. */
  async download(ref: PayloadRef): Promise<Uint8Array> {
    const resp = await fetch(`${this.config.apiUrl}/payloads/blobs/${ref.key}?size=${ref.size}`, {
      headers: this.#headers(),
    });
    if (!resp.ok) {
      const body = (await resp.json().catch(() => ({}))) as Record<string, unknown>;
      throw new ApiError(resp.status, String(body.detail ?? resp.statusText), body.extra);
    }
    const data = new Uint8Array(await resp.arrayBuffer());
    if (data.length !== ref.size) throw new ApiError(502, `payload ${ref.key}: got ${data.length} bytes of ${ref.size}`);
    return data;
  }
}
