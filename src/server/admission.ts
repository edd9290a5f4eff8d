import { createHash, timingSafeEqual } from "node:crypto";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { ServerContext } from "./context.js";
import { ApiError } from "./errors.js";

/**
 * Admission before a request's body is even read (an onRequest hook):
 *
 * 1. Authentication, when `ctx.opts.apiKeys` is non-empty: `Authorization: Bearer <key>` on every
 *    route except /health and /metrics. Those two stay open, as operators expect of probes and
 *    Prometheus scrapers (they reveal load, never prompts or keys); put /metrics behind the network
 *    or a proxy if that matters. Unknown routes need a key too, so the API cannot be probed without one.
 *    Keys are compared in constant time (SHA-256 of both, then timingSafeEqual) and never logged:
 *    the client is known by a label, `key-<6 hex of the key's SHA-256>`, or by its address when the
 *    server has no keys. The label is `request.spindleClient`; routes pass it on as GenerationParams.client.
 * 2. Rate limiting, when `ctx.opts.rateLimit` is set: a token bucket per client (refilled at
 *    `perSecond`, holding at most `burst`). Only generation requests take a token; over the limit
 *    is a 429 with Retry-After (seconds until the next token).
 *
 * The RPC service (src/server/rpc, under /spindle.v1.* on this port) is skipped here: it asks the same
 * `Admission` itself and answers in its protocol's error shape.
 *
 * The queue cap (503 + Retry-After) is the GenerationService's (generation.ts): it is decided when
 * the request is submitted, with the engine's queue in view.
 */

declare module "fastify" {
  interface FastifyRequest {
    /** Who asks: `key-1a2b3c` (API key label) or the remote address. Never the key itself. */
    spindleClient: string;
  }
}

/** Open without a key. */
const OPEN_PATHS = new Set(["/health", "/metrics"]);

/** The routes that run the model, and so take a rate-limit token. */
export const GENERATION_PATHS = new Set([
  "/v1/completions",
  "/v1/chat/completions",
  "/v1/responses",
  "/generate",
  "/generate_stream",
  "/api/generate",
  "/api/chat",
]);

/** A short, stable, non-reversible name for a key, for logs and metrics. */
export function keyLabel(key: string): string {
  return `key-${createHash("sha256").update(key).digest("hex").slice(0, 6)}`;
}

/** Where the RPC service is served on the main port: it does its own admission, in its own error shape. */
export const RPC_PATH_PREFIX = "/spindle.v1.";

/**
 * The admission decisions, whatever the protocol: the HTTP hook below and the RPC service
 * (src/server/rpc) ask the same instance (`admissionOf(ctx)`), so a client has one rate-limit bucket
 * whichever way it calls.
 */
export class Admission {
  private readonly keys: { digest: Buffer; label: string }[];
  private readonly limiter: RateLimiter | undefined;

  constructor(private readonly ctx: ServerContext) {
    this.keys = ctx.opts.apiKeys.map((k) => ({ digest: sha256(k), label: keyLabel(k) }));
    this.limiter = ctx.opts.rateLimit
      ? new RateLimiter(ctx.opts.rateLimit.perSecond, ctx.opts.rateLimit.burst)
      : undefined;
  }

  /**
   * Who asks: the label of the key in `authorization` ("Bearer <key>") when the server has keys,
   * else `address`. Throws a 401 when a key is needed and missing or wrong.
   */
  client(authorization: string | undefined, address: string): string {
    return this.keys.length > 0 ? authenticate(authorization, this.keys) : address;
  }

  /** Takes a rate-limit token for a generation request of `client`; a 429 with Retry-After when there is none. */
  takeToken(client: string, endpoint: string): void {
    const limiter = this.limiter;
    if (!limiter) return;
    const wait = limiter.take(client);
    if (wait <= 0) return;
    this.ctx.metrics.onReject("rate_limited", endpoint);
    const retryAfter = Math.max(1, Math.ceil(wait));
    throw new ApiError(
      429,
      `rate limit exceeded: ${limiter.perSecond} requests/s with bursts of ${limiter.burst}; retry in ${retryAfter} s`,
      "rate_limit_error",
      null,
      "rate_limit_exceeded",
      retryAfter,
    );
  }
}

const admissions = new WeakMap<ServerContext, Admission>();

/** The server's one Admission (created on first use). */
export function admissionOf(ctx: ServerContext): Admission {
  let a = admissions.get(ctx);
  if (!a) admissions.set(ctx, (a = new Admission(ctx)));
  return a;
}

export function registerAdmission(app: FastifyInstance, ctx: ServerContext): void {
  const admission = admissionOf(ctx);
  app.decorateRequest("spindleClient", "");
  app.addHook("onRequest", async (req: FastifyRequest, reply: FastifyReply) => {
    const path = pathOf(req.url);
    req.spindleClient = req.ip ?? "unknown";
    if (path.startsWith(RPC_PATH_PREFIX)) return;
    if (!OPEN_PATHS.has(path)) {
      try {
        req.spindleClient = admission.client(req.headers.authorization, req.spindleClient);
      } catch (err) {
        if (err instanceof ApiError && err.status === 401) {
          void reply.header("www-authenticate", 'Bearer realm="spindle"');
        }
        throw err;
      }
    }
    if (req.method === "POST" && GENERATION_PATHS.has(path)) admission.takeToken(req.spindleClient, path);
  });
}

function pathOf(url: string): string {
  const q = url.indexOf("?");
  return q < 0 ? url : url.slice(0, q);
}

function sha256(s: string): Buffer {
  return createHash("sha256").update(s).digest();
}

/** The label of the key in `header`, or throws a 401. */
function authenticate(header: string | undefined, keys: { digest: Buffer; label: string }[]): string {
  const m = header === undefined ? null : /^\s*bearer\s+(\S+)\s*$/i.exec(header);
  if (!m) {
    throw new ApiError(
      401,
      header === undefined || header.trim() === ""
        ? "no API key given: send it as 'Authorization: Bearer <key>'"
        : "the Authorization header must be 'Bearer <key>'",
      "authentication_error",
      null,
      "missing_api_key",
    );
  }
  // Same-length digests, every key compared: the time taken says nothing about the key or which one matched.
  const given = sha256(m[1]!);
  let label: string | undefined;
  for (const k of keys) {
    if (timingSafeEqual(given, k.digest) && label === undefined) label = k.label;
  }
  if (label === undefined) {
    throw new ApiError(401, "the API key is not valid", "authentication_error", null, "invalid_api_key");
  }
  return label;
}

/** Token buckets, one per client, created full; refilled lazily when a client asks. */
export class RateLimiter {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();

  constructor(
    readonly perSecond: number,
    readonly burst: number,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** Takes a token for `client`: 0 if it had one, otherwise the seconds until it will. */
  take(client: string): number {
    const now = this.now();
    let b = this.buckets.get(client);
    if (!b) {
      if (this.buckets.size >= 10_000) this.prune(now);
      b = { tokens: this.burst, at: now };
      this.buckets.set(client, b);
    } else {
      b.tokens = Math.min(this.burst, b.tokens + ((now - b.at) / 1000) * this.perSecond);
      b.at = now;
    }
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return 0;
    }
    return (1 - b.tokens) / this.perSecond;
  }

  /** Forgets clients whose bucket has refilled: they would be created full anyway. */
  private prune(now: number): void {
    for (const [client, b] of this.buckets) {
      if (b.tokens + ((now - b.at) / 1000) * this.perSecond >= this.burst) this.buckets.delete(client);
    }
  }
}
