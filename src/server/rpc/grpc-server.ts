import { createServer, type Http2Server, type ServerHttp2Session } from "node:http2";
import { createContextValues } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { ServerContext } from "../context.js";
import { inferenceRoutes, kClientAddress } from "./service.js";

/**
 * The RPC service on its own port (--grpc-port): HTTP/2 cleartext (h2c with prior knowledge, as
 * gRPC clients speak it), serving gRPC, Connect and gRPC-Web. gRPC needs HTTP/2 and its trailers,
 * which the main port's HTTP/1.1 server cannot carry, hence a second listener; the main port serves
 * Connect and gRPC-Web over HTTP/1.1 (app.ts).
 */
export interface GrpcServer {
  server: Http2Server;
  /** http://host:port */
  url: string;
  /** Stops accepting and asks every connection to finish its calls (GOAWAY); resolves once all are closed. */
  close(): Promise<void>;
  /** Drops every connection still open (after the shutdown deadline). */
  destroy(): void;
}

export async function startGrpcServer(ctx: ServerContext, host: string, port: number): Promise<GrpcServer> {
  const server = createServer(
    connectNodeAdapter({
      routes: inferenceRoutes(ctx),
      readMaxBytes: ctx.opts.bodyLimit,
      contextValues: (req) =>
        createContextValues().set(kClientAddress, req.socket.remoteAddress ?? "unknown"),
    }),
  );
  const sessions = new Set<ServerHttp2Session>();
  server.on("session", (s: ServerHttp2Session) => {
    sessions.add(s);
    s.once("close", () => sessions.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const addr = server.address();
  const bound = typeof addr === "object" && addr ? addr.port : port;
  const url = `http://${host.includes(":") ? `[${host}]` : host}:${bound}`;
  let closed: Promise<void> | undefined;
  return {
    server,
    url,
    close() {
      closed ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sessions) s.close();
      });
      return closed;
    },
    destroy() {
      for (const s of sessions) s.destroy();
    },
  };
}
