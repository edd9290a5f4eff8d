import type { Logger } from "pino";
import type { Backend, BackendInfo } from "../backends/backend.js";
import type { Tokenizer } from "../tokenizer/index.js";
import type { GenerationService } from "./generation.js";
import type { Metrics } from "./metrics.js";

/** What `spindle serve` was asked for: everything the HTTP layer needs to know. */
export interface ServeOptions {
  host: string;
  port: number;
  /**
   * Also serve the RPC service (src/server/rpc) on this port over HTTP/2 cleartext: gRPC, Connect and
   * gRPC-Web. undefined = not served (the main port still serves Connect and gRPC-Web over HTTP/1.1).
   */
  grpcPort?: number;
  /**
   * Also serve the operations routes (/health, /metrics, /version) on this port, without auth, so
   * operators can keep the admin plane apart from the data plane. undefined = not served (the main
   * port serves them either way).
   */
  adminPort?: number;
  /** Bearer keys; empty = no auth. */
  apiKeys: string[];
  /** Model id reported by /v1/models and accepted in requests. */
  modelName: string;
  /** Requests admitted but not yet started beyond this get 503 + Retry-After. */
  maxQueue: number;
  /** Token bucket per API key (or per client address without keys): requests/s and burst. */
  rateLimit?: { perSecond: number; burst: number };
  /** Abort a request still waiting for its first token after this long (ms). */
  queueTimeoutMs?: number;
  /** Abort a request running longer than this (ms). */
  requestTimeoutMs?: number;
  /** Largest accepted request body, bytes. */
  bodyLimit: number;
  /**
   * A request's headers and body must have arrived this long (ms) after its first byte; otherwise
   * 408 and the connection is closed (app.ts). Bounds slow or never-ending uploads and headers-only
   * sockets. 0 = no limit.
   */
  bodyTimeoutMs: number;
  logPrompts: boolean;
  /** How long SIGTERM waits for in-flight requests before aborting them (ms). */
  shutdownTimeoutMs: number;
}

export const DEFAULT_SERVE_OPTIONS: ServeOptions = {
  host: "127.0.0.1",
  port: 8000,
  apiKeys: [],
  modelName: "spindle",
  maxQueue: 256,
  bodyLimit: 4 * 1024 * 1024,
  bodyTimeoutMs: 30_000,
  logPrompts: false,
  shutdownTimeoutMs: 10_000,
};

/** The model side, once loaded. Until then /health answers 503 and generation routes 503. */
export interface LoadedModel {
  backend: Backend;
  info: BackendInfo;
  tokenizer: Tokenizer;
  chatTemplate: string | undefined;
  /** The GGUF the model (or, for gateway backends, its tokenizer) was read from, when known. */
  modelPath?: string;
}

export interface ServerContext {
  opts: ServeOptions;
  log: Logger;
  metrics: Metrics;
  service: GenerationService;
  /** Set when the model is ready. */
  model: LoadedModel | undefined;
  /** Set once shutdown began: new generation requests get 503. */
  draining: boolean;
}
