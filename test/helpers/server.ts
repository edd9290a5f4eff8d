import pino from "pino";
import { engineOf } from "../../src/backends/engine-backend.js";
import { type RunningServer, type StartServerOptions, startServer } from "../../src/server/server.js";
import { STORIES_260K, testModel } from "./models.js";

export interface TestServer {
  /** Base URL, e.g. http://127.0.0.1:41234 (no trailing slash). */
  url: string;
  server: RunningServer;
  close(): Promise<void>;
}

/**
 * A real Spindle server on 127.0.0.1, on a free port, serving stories260K with the local backend
 * (unless opts.backend says otherwise), logging nothing (unless opts.log is given), with the model loaded. Registers nothing
 * global: call close() in afterAll.
 */
export async function startTestServer(opts: Partial<StartServerOptions> = {}): Promise<TestServer> {
  const server = await startServer({
    ...opts,
    host: "127.0.0.1",
    port: 0,
    backend: opts.backend ?? { kind: "local", modelPath: testModel(STORIES_260K) },
    log: opts.log ?? pino({ level: "silent" }),
  });
  try {
    await server.ready;
  } catch (err) {
    await server.close();
    throw err;
  }
  return { url: server.url, server, close: () => server.close() };
}

/** The engine's stats behind a test server with a local or sim backend. */
export async function engineStats(srv: TestServer) {
  const engine = engineOf(srv.server.ctx.model!.backend);
  if (!engine) throw new Error(`the ${srv.server.ctx.model!.info.kind} backend has no engine`);
  return engine.stats();
}
