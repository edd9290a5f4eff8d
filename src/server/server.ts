import type { FastifyInstance } from "fastify";
import pino, { type Logger } from "pino";
import { EngineClient, type EngineInit } from "../engine/engine-client.js";
import { readGGUF } from "../gguf/reader.js";
import { tokenizerFromGGUF } from "../tokenizer/index.js";
import { buildApp } from "./app.js";
import { DEFAULT_SERVE_OPTIONS, type ServeOptions, type ServerContext } from "./context.js";
import { GenerationService } from "./generation.js";
import { Metrics } from "./metrics.js";
import { logRequest, startEngineLog } from "./request-log.js";

/**
 * A running Spindle server: the HTTP app listening first (so /health can say
 * 503 while the model loads), then the engine worker and the tokenizer, then
 * ready. `close()` is the graceful shutdown: stop accepting, let in-flight
 * requests finish until the deadline, abort what is left, stop the worker.
 */
export interface RunningServer {
  app: FastifyInstance;
  ctx: ServerContext;
  url: string;
  /** Resolves when the model is loaded (rejects with the load error). */
  ready: Promise<void>;
  close(): Promise<void>;
}

export interface StartServerOptions extends Partial<ServeOptions> {
  engine: EngineInit;
  /** Logger; default pino to stdout at "info". */
  log?: Logger;
}

export async function startServer(o: StartServerOptions): Promise<RunningServer> {
  const { engine: init, log = pino({ level: "info" }), ...rest } = o;
  const given = Object.fromEntries(Object.entries(rest).filter(([, v]) => v !== undefined));
  const opts: ServeOptions = { ...DEFAULT_SERVE_OPTIONS, ...given };
  const metrics = new Metrics();
  const ctx = {
    opts,
    log,
    metrics,
    model: undefined,
    draining: false,
  } as Omit<ServerContext, "service"> as ServerContext;
  ctx.service = new GenerationService(
    opts,
    () => ctx.model,
    () => ctx.draining,
    {
      onFinish: (r) => {
        metrics.onFinish(r);
        logRequest(log, r);
      },
      onReject: (reason, endpoint) => metrics.onReject(reason, endpoint),
      onAbortedByClient: (endpoint) => metrics.onAbortedByClient(endpoint),
    },
  );
  const app = buildApp(ctx);
  await app.listen({ host: opts.host, port: opts.port });
  const addr = app.server.address();
  const port = typeof addr === "object" && addr ? addr.port : opts.port;
  const url = `http://${opts.host.includes(":") ? `[${opts.host}]` : opts.host}:${port}`;
  log.info({ url }, "listening; loading the model");

  let stopEngineLog: (() => void) | undefined;
  const ready = (async () => {
    const engine = await EngineClient.start(init);
    const tokenizer =
      init.kind === "model" ? tokenizerFromGGUF(readGGUF(init.modelPath)) : undefined;
    engine.onStep((s) => metrics.onStep(s));
    stopEngineLog = startEngineLog(log, engine, metrics);
    if (!tokenizer) throw new Error("the simulated backend has no tokenizer (not supported by the HTTP API yet)");
    ctx.model = { engine, info: engine.info, tokenizer, chatTemplate: engine.info.chatTemplate };
    log.info({ model: opts.modelName, numBlocks: engine.info.numBlocks, kvCacheBytes: engine.info.kvCacheBytes }, "ready");
  })();
  ready.catch((err) => log.error({ err: String(err) }, "model failed to load"));

  let closing: Promise<void> | undefined;
  const close = () => {
    closing ??= (async () => {
      ctx.draining = true;
      const deadline = new Promise<void>((r) => setTimeout(r, opts.shutdownTimeoutMs).unref());
      await Promise.race([app.close(), deadline]);
      stopEngineLog?.();
      await ctx.model?.engine.close();
      await app.close();
    })();
    return closing;
  };
  return { app, ctx, url, ready, close };
}
