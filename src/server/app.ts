import { type IncomingMessage, STATUS_CODES } from "node:http";
import type { Socket } from "node:net";
import { createContextValues } from "@connectrpc/connect";
import { fastifyConnectPlugin } from "@connectrpc/connect-fastify";
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import { registerAdmission } from "./admission.js";
import { registerBodyParser } from "./body.js";
import type { ServerContext } from "./context.js";
import {
  ApiError,
  type ErrorShape,
  errorBodyFor,
  errorShapeOf,
  GenerationEndedError,
  toApiError,
} from "./errors.js";
import { logPath, logRejection, logRequestId, rejectionReason } from "./request-log.js";
import { clientOf } from "./route-helpers.js";
import { registerEmbeddingRoutes } from "./routes/embeddings.js";
import { registerLlamaServerRoutes } from "./routes/llama-server.js";
import { registerOllamaRoutes } from "./routes/ollama.js";
import { registerOpenAIRoutes } from "./routes/openai.js";
import { registerOpsRoutes } from "./routes/ops.js";
import { registerResponsesRoutes } from "./routes/responses.js";
import { registerTgiRoutes } from "./routes/tgi.js";
import { registerTokenizeRoutes } from "./routes/tokenize.js";
import { inferenceRoutes, kClientAddress } from "./rpc/service.js";

declare module "fastify" {
  interface FastifyContextConfig {
    /** The shape of this route's errors (errors.ts); default OpenAI's. */
    errorShape?: ErrorShape;
  }
}

/**
 * The HTTP application: Fastify with OpenAI-shaped errors everywhere (Ollama's shape under /api/), the
 * admission hooks (auth, rate limit), and the route groups. Routes reach the
 * engine only through ctx.service (src/server/generation.ts).
 *
 * Slow requests: Node's own request timeouts bound how long a request may take to arrive.
 * `requestTimeout` and `headersTimeout` are both ctx.opts.bodyTimeoutMs, counted from the request's
 * first byte until its body is complete (a request whose body has arrived is never cut, however
 * long its response streams). Node checks them every `connectionsCheckingInterval` (30 s by
 * default, a tenth of the timeout here, at most 1 s); an expired connection reaches
 * clientErrorHandler as ERR_HTTP_REQUEST_TIMEOUT: 408 with Connection: close, then the socket is
 * destroyed. A connection that never sent a byte is closed without an answer.
 *
 * Every request answered with an error before it reached the engine gets one `rejected` log line
 * (request-log.ts), whichever path answered it: the error handler (body parsing, admission, route
 * validation, 503s), the not-found handler, frameworkErrors, clientErrorHandler.
 *
 * The RPC service (src/server/rpc) is registered here too, under /spindle.v1.InferenceService/*:
 * Connect and gRPC-Web over HTTP/1.1, answering and logging in its own protocol's shape.
 */
export function buildApp(ctx: ServerContext): FastifyInstance {
  const timeout = ctx.opts.bodyTimeoutMs;
  // The request each connection is receiving or answering, for clientErrorHandler (it gets the socket only).
  const current = new WeakMap<Socket, { req: FastifyRequest; reply: FastifyReply }>();
  const logged = new WeakSet<IncomingMessage>();
  /** The one `rejected` line of a request (a second call for the same request writes nothing). */
  const rejected = (req: FastifyRequest, e: ApiError) => {
    if (logged.has(req.raw)) return;
    logged.add(req.raw);
    logRejection(ctx.log, {
      status: e.status,
      reason: rejectionReason(e.status, e.code),
      ...(e.param !== null ? { param: e.param } : {}),
      method: req.method,
      endpoint: logPath(req.url),
      client: clientOf(req),
      ...optional("request_id", logRequestId(req.headers["x-request-id"])),
    });
  };

  const app = Fastify({
    logger: false,
    bodyLimit: ctx.opts.bodyLimit,
    requestTimeout: timeout,
    http: {
      requestTimeout: timeout,
      headersTimeout: timeout,
      ...(timeout > 0 ? { connectionsCheckingInterval: Math.min(1000, Math.max(10, timeout / 10)) } : {}),
    },
    // Keep-alive connections must not hold shutdown open.
    forceCloseConnections: "idle",
    // Fastify's own 503 while closing has its own body shape; instead requests that still arrive run,
    // and the generation service refuses new generations with an OpenAI-shaped 503 (ctx.draining).
    return503OnClosing: false,
    // Errors Fastify raises before routing (a malformed URL) and malformed HTTP get OpenAI's shape too.
    frameworkErrors: (err, req, reply) => {
      const e = toApiError(err);
      rejected(req as FastifyRequest, e);
      void (reply as unknown as FastifyReply).code(e.status).send(errorBodyFor(errorShapeOf(req), e));
    },
    clientErrorHandler: (err: NodeJS.ErrnoException, socket) => {
      if (err.code === "ECONNRESET" || socket.destroyed) return;
      const timedOut = err.code === "ERR_HTTP_REQUEST_TIMEOUT";
      if (timedOut && socket.bytesRead === 0) {
        // An idle connection that never asked anything (clients open spare ones): no request to answer.
        socket.destroy();
        return;
      }
      const [status, message] = timedOut
        ? [408, "the request took too long to arrive"]
        : err.code === "HPE_HEADER_OVERFLOW"
          ? [431, "the request headers are too large"]
          : [400, "malformed HTTP request"];
      const e = new ApiError(
        status,
        message,
        "invalid_request_error",
        null,
        timedOut ? "request_timeout" : null,
      );
      // A request whose headers were read and whose body is late is known by its method, path and client.
      const { req, reply } = current.get(socket) ?? {};
      if (req) rejected(req, e);
      else {
        logRejection(ctx.log, {
          status,
          reason: rejectionReason(status, e.code),
          method: null,
          endpoint: null,
          client: socket.remoteAddress ?? "unknown",
        });
      }
      // Not after a response already begun on this connection: that would corrupt it.
      if (socket.writable && !reply?.raw.headersSent) {
        const body = JSON.stringify(errorBodyFor(errorShapeOf(req), e));
        socket.write(
          `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
        );
      }
      socket.destroy(err);
    },
  });

  app.addHook("onRequest", async (req, reply) => {
    current.set(req.raw.socket, { req, reply });
  });
  app.addHook("onResponse", async (req) => {
    if (current.get(req.raw.socket)?.req === req) current.delete(req.raw.socket);
  });

  app.setErrorHandler((err, req, reply) => {
    const e = toApiError(err);
    if (e.status >= 500 && !(err instanceof ApiError)) {
      ctx.log.error({ err, url: req.url }, "unhandled error while serving a request");
    }
    if (e.retryAfter !== undefined) void reply.header("retry-after", String(e.retryAfter));
    if (reply.sent || reply.raw.headersSent) {
      reply.raw.end();
      return;
    }
    // Not rejections: a generation that was admitted and then ended (its `request` line says how),
    // a client that went away (499 client_closed, or its upload cut short: ECONNRESET).
    const clientGone = e.status === 499 || (err as NodeJS.ErrnoException).code === "ECONNRESET";
    if (!(err instanceof GenerationEndedError) && !clientGone) rejected(req, e);
    // Answered before the body has arrived (401, 404, 413…): the connection is not kept for the rest of it.
    if (!req.raw.complete) void reply.header("connection", "close");
    void reply.code(e.status).send(errorBodyFor(errorShapeOf(req), e));
  });

  app.setNotFoundHandler((req, reply) => {
    const e = new ApiError(404, `no route for ${req.method} ${req.url.split("?")[0]}`, "not_found_error");
    rejected(req, e);
    void reply.code(404).send(errorBodyFor(errorShapeOf(req), e));
  });

  registerBodyParser(app, ctx);
  registerAdmission(app, ctx);
  registerOpenAIRoutes(app, ctx);
  registerResponsesRoutes(app, ctx);
  registerTgiRoutes(app, ctx);
  registerOllamaRoutes(app, ctx);
  registerEmbeddingRoutes(app, ctx);
  registerTokenizeRoutes(app, ctx);
  registerLlamaServerRoutes(app, ctx);
  registerOpsRoutes(app, ctx);
  // The RPC service over HTTP/1.1: Connect and gRPC-Web (gRPC itself needs HTTP/2: --grpc-port). In
  // a scope of its own without body.ts's parsers: Connect reads its bodies itself (application/proto,
  // application/json, application/connect+*, application/grpc-web+*). admission.ts leaves its paths to it.
  app.register(async (scope) => {
    scope.removeAllContentTypeParsers();
    await scope.register(fastifyConnectPlugin, {
      routes: inferenceRoutes(ctx),
      readMaxBytes: ctx.opts.bodyLimit,
      contextValues: (req) => createContextValues().set(kClientAddress, req.ip ?? "unknown"),
    });
  });
  return app;
}

function optional<K extends string>(key: K, v: string | undefined): { [k in K]?: string } {
  return v === undefined ? {} : ({ [key]: v } as { [k in K]: string });
}
