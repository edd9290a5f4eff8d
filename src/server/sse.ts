import { PassThrough } from "node:stream";
import type { FastifyReply } from "fastify";

/**
 * Server-sent events for the streaming routes (OpenAI `stream: true`, TGI `/generate_stream`):
 *
 *   startSSE(reply)          200, text/event-stream; the body is a stream Fastify pipes to the client,
 *                            so onSend/onResponse hooks and headers set earlier still apply
 *   sendSSE(reply, data)     one event: `data: <JSON>\n\n`; false once the client is gone
 *   endSSE(reply)            `data: [DONE]\n\n` (OpenAI's end marker; `{ done: false }` leaves it out, as TGI
 *                            does) and the end of the response
 *
 * Headers go out with the first event. Writes after the client disconnected or after endSSE are
 * dropped, never thrown: a route finishing its loop after a disconnect needs no special case.
 */

const streams = new WeakMap<FastifyReply, PassThrough>();

export function startSSE(reply: FastifyReply): void {
  if (streams.has(reply)) return;
  const body = new PassThrough();
  // A client gone mid-stream destroys the body; nothing listens for that error but us.
  body.on("error", () => {});
  streams.set(reply, body);
  void reply
    .code(200)
    .header("content-type", "text/event-stream; charset=utf-8")
    .header("cache-control", "no-cache")
    .header("x-accel-buffering", "no")
    .send(body);
}

function open(reply: FastifyReply): PassThrough | undefined {
  const body = streams.get(reply);
  if (!body || body.destroyed || body.writableEnded || reply.raw.destroyed) return undefined;
  return body;
}

/** Whether events can still reach the client (started, not ended, connection open). */
export function isSSEOpen(reply: FastifyReply): boolean {
  return open(reply) !== undefined;
}

/** Sends one event whose data is `data` as JSON. Returns false (and sends nothing) when the stream is closed. */
export function sendSSE(reply: FastifyReply, data: unknown): boolean {
  const body = open(reply);
  if (!body) return false;
  body.write(`data: ${JSON.stringify(data)}\n\n`);
  return true;
}

/** Ends the stream, after `data: [DONE]` unless `done` is false. Idempotent. */
export function endSSE(reply: FastifyReply, opts: { done?: boolean } = {}): void {
  const body = open(reply);
  if (!body) return;
  if (opts.done ?? true) body.write("data: [DONE]\n\n");
  body.end();
}
