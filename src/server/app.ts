import Fastify, { type FastifyInstance } from "fastify";
import { registerBodyParser } from "./body.js";
import { registerAdmission } from "./admission.js";
import type { ServerContext } from "./context.js";
import { ApiError, errorBody, toApiError } from "./errors.js";
import { registerOpenAIRoutes } from "./routes/openai.js";
import { registerOpsRoutes } from "./routes/ops.js";
import { registerTgiRoutes } from "./routes/tgi.js";

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
    return503OnClosing: true,
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
  registerOpsRoutes(app, ctx);
  return app;
}
