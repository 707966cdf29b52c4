/**
 * The REST client: openapi-fetch over the types openapi-typescript generated from
 * sdk/openapi.json. Every path, parameter and body is checked by the compiler against the
 * server's schema, and nothing but `fetch` runs at request time.
 */
import createClient, { type Client } from "openapi-fetch";

import type { ClientConfig } from "./config.js";
import { ApiError, ConfigError, MISSING_TOKEN } from "./errors.js";
import type { components, paths } from "./gen/openapi.js";

export type { components, paths };
/** The API's named request and response bodies, e.g. `Schemas["RunView"]`. */
export type Schemas = components["schemas"];
export type RestClient = Client<paths>;

export function createRestClient(config: ClientConfig): RestClient {
  return createClient<paths>({
    baseUrl: config.apiUrl,
    headers: { authorization: `Bearer ${config.token}` },
    fetch: explainingFetch(config),
  });
}

/**
 * `fetch`, failing with a ConfigError that says what to do when there is no token, or when
 * the API does not answer at all (instead of a bare `TypeError: fetch failed`).
 */
function explainingFetch(config: ClientConfig): (request: Request) => Promise<Response> {
  return async (request: Request): Promise<Response> => {
    if (!config.token) throw new ConfigError(MISSING_TOKEN);
    try {
      return await globalThis.fetch(request);
    } catch (err) {
      if (err instanceof Error && err.name === "AbortError") throw err;
      const cause = (err as { cause?: { code?: string; message?: string } }).cause;
      const why = cause?.code ?? cause?.message ?? String(err);
      throw new ConfigError(
        `cannot reach the Ratchet API at ${config.apiUrl} (${why}): is it running? ` +
          "Set RATCHET_API_URL or pass new Ratchet({ apiUrl })",
        { cause: err },
      );
    }
  };
}

interface Answer {
  data?: unknown;
  error?: unknown;
  response: Response;
}

/** The body of a successful answer; an ApiError carrying the server's `detail` otherwise. */
export async function unwrap<R extends Answer>(call: Promise<R>): Promise<Exclude<R["data"], undefined>> {
  const { data, error, response } = await call;
  if (!response.ok) {
    throw toApiError(response.status, error);
  }
  return data as Exclude<R["data"], undefined>;
}

function toApiError(status: number, body: unknown): ApiError {
  if (body && typeof body === "object" && "detail" in body) {
    const { detail, extra } = body as { detail: unknown; extra?: unknown };
    return new ApiError(status, String(detail), extra);
  }
  return new ApiError(status, typeof body === "string" ? body : JSON.stringify(body ?? null));
}
