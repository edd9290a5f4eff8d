import type { FastifyReply, FastifyRequest } from "fastify";

/** Helpers every generation route shares. */

/** An AbortSignal that fires when the client goes away before the response is complete. */
export function clientSignal(req: FastifyRequest, reply: FastifyReply): AbortSignal {
  const ac = new AbortController();
  const res = reply.raw;
  res.once("close", () => {
    if (!res.writableFinished) ac.abort("the client disconnected");
  });
  if (req.raw.socket?.destroyed) ac.abort("the client disconnected");
  return ac.signal;
}

/** The request's client label (set by admission.ts), or its address. Never an API key. */
export function clientOf(req: FastifyRequest): string {
  return req.spindleClient || req.ip || "unknown";
}
