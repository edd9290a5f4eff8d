import { readFileSync } from "node:fs";
import type { FastifyInstance } from "fastify";
import type { ServerContext } from "../context.js";

/**
 * Operations endpoints:
 *
 *   GET /health               200 {status: "ok", model, …} when ready; 503 {status: "loading"} while the
 *                             model loads, 503 {status: "draining"} once shutdown began
 *   GET /metrics              Prometheus text (vLLM's metric names under `spindle_`)
 *   GET /metrics?format=json  the same numbers as one JSON object
 *   GET /version              {version}
 */

let cachedVersion: string | undefined;

/** package.json's version: the file is two folders up from both src/server/routes and dist/server/routes. */
export function spindleVersion(): string {
  if (cachedVersion === undefined) {
    try {
      const pkg = JSON.parse(readFileSync(new URL("../../../package.json", import.meta.url), "utf8")) as {
        version?: string;
      };
      cachedVersion = pkg.version ?? "unknown";
    } catch {
      cachedVersion = "unknown";
    }
  }
  return cachedVersion;
}

export function registerOpsRoutes(app: FastifyInstance, ctx: ServerContext): void {
  const started = Date.now();

  app.get("/health", async (_req, reply) => {
    if (ctx.draining) return reply.code(503).header("retry-after", "5").send({ status: "draining" });
    const m = ctx.model;
    if (!m) return reply.code(503).header("retry-after", "5").send({ status: "loading" });
    return {
      status: "ok",
      model: ctx.opts.modelName,
      backend: m.info.kind,
      version: spindleVersion(),
      uptime_s: Math.round((Date.now() - started) / 1000),
      running: ctx.metrics.numRunning,
      waiting: ctx.metrics.numWaiting,
      in_flight: ctx.service.numInFlight,
      kv_cache_usage: ctx.metrics.kvCacheUsage,
      max_model_len: m.info.contextLength,
      ...(m.backend.health ? { backend_health: m.backend.health() } : {}),
    };
  });

  app.get("/metrics", async (req, reply) => {
    const format = (req.query as Record<string, unknown> | undefined)?.format;
    if (format === "json") return ctx.metrics.snapshot();
    const text = await ctx.metrics.render();
    return reply.header("content-type", ctx.metrics.contentType).send(text);
  });

  app.get("/version", async () => ({ version: spindleVersion() }));
}
