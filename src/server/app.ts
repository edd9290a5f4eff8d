import { STATUS_CODES } from "node:http";
import Fastify, { type FastifyInstance, type FastifyReply } from "fastify";
import { registerAdmission } from "./admission.js";
import { registerBodyParser } from "./body.js";
import type { ServerContext } from "./context.js";
import { ApiError, errorBody, toApiError } from "./errors.js";
import { registerOpenAIRoutes } from "./routes/openai.js";
import { registerOpsRoutes } from "./routes/ops.js";
import { registerTgiRoutes } from "./routes/tgi.js";
import { registerTokenizeRoutes } from "./routes/tokenize.js";

/**
 * The HTTP application: Fastify with OpenAI-shaped errors everywhere, the
 * admission hooks (auth, rate limit), and the route groups. Routes reach the
 * engine only through ctx.service (src/server/generation.ts).
 */
export function buildApp(ctx: ServerContext): FastifyInstance {
  const app = Fastify({
    logger: false,
    bodyLimit: ctx.opts.bodyLimit,
    // Keep-alive connections must not hold shutdown open.
    forceCloseConnections: "idle",
    // Fastify's own 503 while closing has its own body shape; instead requests that still arrive run,
    // and the generation service refuses new generations with an OpenAI-shaped 503 (ctx.draining).
    return503OnClosing: false,
    // Errors Fastify raises before routing (a malformed URL) and malformed HTTP get OpenAI's shape too.
    frameworkErrors: (err, _req, reply) => {
      const e = toApiError(err);
      void (reply as unknown as FastifyReply).code(e.status).send(errorBody(e));
    },
    clientErrorHandler: (err: NodeJS.ErrnoException, socket) => {
      if (err.code === "ECONNRESET" || socket.destroyed) return;
      const [status, message] =
        err.code === "ERR_HTTP_REQUEST_TIMEOUT"
          ? [408, "the request took too long to arrive"]
          : err.code === "HPE_HEADER_OVERFLOW"
            ? [431, "the request headers are too large"]
            : [400, "malformed HTTP request"];
      const body = JSON.stringify(errorBody(new ApiError(status, message)));
      if (socket.writable) {
        socket.write(
          `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
        );
      }
      socket.destroy(err);
    },
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
    void reply.code(e.status).send(errorBody(e));
  });

  app.setNotFoundHandler((req, reply) => {
    const e = new ApiError(404, `no route for ${req.method} ${req.url.split("?")[0]}`, "not_found_error");
    void reply.code(404).send(errorBody(e));
  });

  registerBodyParser(app, ctx);
  registerAdmission(app, ctx);
  registerOpenAIRoutes(app, ctx);
  registerTgiRoutes(app, ctx);
  registerTokenizeRoutes(app, ctx);
  registerOpsRoutes(app, ctx);
  return app;
}
