import type { IncomingMessage, Server, ServerResponse } from "node:http";
import type { Socket } from "node:net";
import Fastify, { type FastifyInstance } from "fastify";
import pino, { type Logger } from "pino";
import { type Backend, type BackendInit, beginBackend, type StartingBackend } from "../backends/index.js";
import { SpindleError } from "../errors.js";
import { buildApp } from "./app.js";
import { DEFAULT_SERVE_OPTIONS, type ServeOptions, type ServerContext } from "./context.js";
import { GenerationService } from "./generation.js";
import { Metrics } from "./metrics.js";
import { logRequest, startEngineLog } from "./request-log.js";
import { registerOpsRoutes } from "./routes/ops.js";
import { type GrpcServer, startGrpcServer } from "./rpc/grpc-server.js";

/**
 * A running Spindle server: the backend starting first (the engine worker loads
 * the model) while the HTTP app starts listening (so /health can say 503 while
 * the model loads), then ready. `close()` is the graceful shutdown: stop accepting, let in-flight
 * requests finish until the deadline, abort what is left, stop the worker.
 */
export interface RunningServer {
  app: FastifyInstance;
  ctx: ServerContext;
  url: string;
  /** Where the RPC service listens over HTTP/2 (gRPC, Connect, gRPC-Web), with --grpc-port. */
  grpcUrl?: string;
  /** Where the operations routes listen on their own, with --admin-port. */
  adminUrl?: string;
  /** Resolves when the model is loaded (rejects with the load error). */
  ready: Promise<void>;
  close(): Promise<void>;
}

export interface StartServerOptions extends Partial<ServeOptions> {
  /** What computes the tokens (src/backends). */
  backend: BackendInit;
  /**
   * That backend, already starting (`spindle serve` starts it before this module loads, so the
   * model loads meanwhile); started here, before listening, when absent.
   */
  starting?: StartingBackend;
  /** Logger; default pino to stdout at "info". */
  log?: Logger;
  /** Called while the local backend reads the weights (bytes loaded, of total): `spindle serve`'s progress bar. */
  onLoadProgress?: (loaded: number, total: number) => void;
}

/**
 * Which connections are serving a request. Node's closeIdleConnections() misses a connection that
 * was opened but never sent a request (clients open spare ones), and such a socket would hold
 * shutdown until the deadline; `destroyIdle` closes every connection not serving a request.
 */
function trackIdleConnections(server: Server): { destroyIdle(): void } {
  const busy = new Map<Socket, number>();
  server.on("connection", (socket: Socket) => {
    busy.set(socket, 0);
    socket.once("close", () => busy.delete(socket));
  });
  server.on("request", (req: IncomingMessage, res: ServerResponse) => {
    const socket = req.socket;
    if (!busy.has(socket)) return;
    busy.set(socket, busy.get(socket)! + 1);
    let done = false;
    const end = () => {
      if (done) return;
      done = true;
      const n = busy.get(socket);
      if (n !== undefined) busy.set(socket, n - 1);
    };
    res.once("finish", end);
    res.once("close", end);
  });
  return {
    destroyIdle() {
      for (const [socket, n] of busy) if (n === 0) socket.destroy();
    },
  };
}

/** After the shutdown deadline and the aborts, how long responses may take to write their ending. */
const ABORTED_WRITE_GRACE_MS = 500;

/** Whether `p` settles within `ms` (a timer that does not outlive the answer). */
async function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((r) => (timer = setTimeout(() => r(false), ms)));
  try {
    return await Promise.race([p.then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** The http:// URL a listening Fastify app answers on. */
function urlOf(host: string, app: FastifyInstance): string {
  const addr = app.server.address();
  const port = typeof addr === "object" && addr ? addr.port : 0;
  return `http://${host.includes(":") ? `[${host}]` : host}:${port}`;
}

export async function startServer(o: StartServerOptions): Promise<RunningServer> {
  const { backend: init, starting: given, log = pino({ level: "info" }), onLoadProgress, ...rest } = o;
  // The backend loads while the server starts listening; if the server cannot start, the backend's
  // start is called off (a backend already up is closed).
  const starting = given ?? beginBackend(init, { log, onLoadProgress });
  try {
    return await listenAndServe(rest, init, log, starting.backend);
  } catch (err) {
    starting.cancel();
    throw listenError(err);
  }
}

/** A port that cannot be listened on (taken, not allowed, no such address) is the operator's to fix: one clear line. */
function listenError(err: unknown): unknown {
  const e = err as NodeJS.ErrnoException & { address?: string; port?: number };
  if (e?.syscall !== "listen" && e?.syscall !== "bind") return err;
  const why =
    e.code === "EADDRINUSE"
      ? "the address is already in use (is another server running there? choose another port)"
      : e.code === "EACCES"
        ? "permission denied"
        : e.message;
  return new SpindleError(`cannot listen on ${e.address ?? "?"}:${e.port ?? "?"}: ${why}`, "listen_failed");
}

async function listenAndServe(
  rest: Omit<StartServerOptions, "backend" | "starting" | "log" | "onLoadProgress">,
  init: BackendInit,
  log: Logger,
  starting: Promise<Backend>,
): Promise<RunningServer> {
  const given = Object.fromEntries(Object.entries(rest).filter(([, v]) => v !== undefined));
  const opts: ServeOptions = { ...DEFAULT_SERVE_OPTIONS, ...given };
  const metrics = new Metrics({ modelName: opts.modelName });
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
  const idle = trackIdleConnections(app.server);
  await app.listen({ host: opts.host, port: opts.port });
  const url = urlOf(opts.host, app);
  let grpc: GrpcServer | undefined;
  if (opts.grpcPort !== undefined) {
    try {
      grpc = await startGrpcServer(ctx, opts.host, opts.grpcPort);
    } catch (err) {
      await app.close();
      throw err;
    }
  }
  let admin: FastifyInstance | undefined;
  if (opts.adminPort !== undefined) {
    admin = Fastify({ logger: false, forceCloseConnections: true });
    registerOpsRoutes(admin, ctx);
    try {
      await admin.listen({ host: opts.host, port: opts.adminPort });
    } catch (err) {
      await Promise.all([app.close(), grpc?.close()]);
      throw err;
    }
  }
  const adminUrl = admin ? urlOf(opts.host, admin) : undefined;
  log.info(
    { url, ...(grpc ? { grpc_url: grpc.url } : {}), ...(adminUrl ? { admin_url: adminUrl } : {}) },
    "listening; loading the model",
  );

  let stopEngineLog: (() => void) | undefined;
  let closing: Promise<void> | undefined;
  const ready = (async () => {
    const backend: Backend = await starting;
    if (closing) {
      // close() came while the model was loading: nothing will serve with this backend.
      await backend.close();
      return;
    }
    backend.onStep?.((s) => metrics.onStep(s));
    backend.onQueue?.((q) => metrics.onQueue(q));
    if (backend.onStep) stopEngineLog = startEngineLog(log, backend, metrics);
    backend.onMeasured?.((facts) => log.info(facts, "measured"));
    ctx.model = {
      backend,
      info: backend.info,
      tokenizer: backend.tokenizer,
      chatTemplate: backend.info.chatTemplate,
      ...("modelPath" in init && typeof init.modelPath === "string" ? { modelPath: init.modelPath } : {}),
    };
    for (const w of backend.info.warnings ?? []) log.warn(w);
    log.info({ model: opts.modelName, backend: backend.info.kind, ...backend.info.details }, "ready");
  })();
  ready.catch((err) => log.error({ err: String(err) }, "model failed to load"));

  /**
   * Graceful shutdown. The listening socket closes at once (new connections are refused; on a
   * kept-alive connection a new generation gets 503 shutting_down and /health 503: ctx.draining). In-flight requests
   * may finish until shutdownTimeoutMs; then the engine is closed, which aborts what is left (streams
   * end with finish reason "abort"), and after a moment to write those endings every connection is
   * dropped. Resolves once the server and the engine worker are down.
   */
  const close = () => {
    closing ??= (async () => {
      ctx.draining = true;
      const server = app.server;
      const appClosed = Promise.all([app.close(), grpc?.close()]);
      // Node closes the connections idle at close() only: a kept-alive connection whose response
      // finishes later would hold the server open, so idle ones are swept until it is closed.
      const sweep = setInterval(() => {
        server.closeIdleConnections();
        idle.destroyIdle();
      }, 100);
      const drained = await within(appClosed, opts.shutdownTimeoutMs);
      stopEngineLog?.();
      await ctx.model?.backend.close();
      if (!drained && !(await within(appClosed, ABORTED_WRITE_GRACE_MS))) {
        server.closeAllConnections();
        grpc?.destroy();
        await appClosed;
      }
      clearInterval(sweep);
      // The admin plane answers (503 draining) until everything else is down.
      await admin?.close();
    })();
    return closing;
  };
  return {
    app,
    ctx,
    url,
    ...(grpc ? { grpcUrl: grpc.url } : {}),
    ...(adminUrl ? { adminUrl } : {}),
    ready,
    close,
  };
}
