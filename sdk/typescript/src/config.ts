/** Client configuration from options or the environment, like the Python SDK. */

export interface ClientOptions {
  /** API token of the tenant; default `RATCHET_TOKEN`. */
  token?: string;
  /** Base URL of the REST API; default `RATCHET_API_URL` or http://127.0.0.1:8080. */
  apiUrl?: string;
  /**
   * host:port of a dispatcher's gRPC endpoint, or several (`"a:7077,b:7077"` or a list): a worker
   * fails over between them. Default `RATCHET_GRPC_ADDR` or 127.0.0.1:7077.
   */
  grpcAddr?: string | string[];
}

export interface ClientConfig {
  readonly token: string;
  readonly apiUrl: string;
  /** One address or several, comma-separated. */
  readonly grpcAddr: string;
}

export function resolveConfig(options: ClientOptions = {}): ClientConfig {
  const env = process.env;
  const apiUrl = options.apiUrl || env.RATCHET_API_URL || "http://127.0.0.1:8080";
  return {
    token: options.token || env.RATCHET_TOKEN || "",
    apiUrl: apiUrl.replace(/\/+$/, ""),
    grpcAddr: joinAddrs(options.grpcAddr) || env.RATCHET_GRPC_ADDR || "127.0.0.1:7077",
  };
}

function joinAddrs(addrs: string | string[] | undefined): string {
  return Array.isArray(addrs) ? addrs.join(",") : (addrs ?? "");
}
