import { PassThrough } from "node:stream";
import type { FastifyReply } from "fastify";

/**
 * Event streams for the streaming routes: server-sent events (OpenAI `stream: true`, TGI
 * `/generate_stream`; with `event: <type>` lines, TYPED_SSE, for /v1/responses) or newline-delimited
 * JSON (Ollama's /api/generate and /api/chat), one framing per response, chosen when it starts:
 *
 *   startSSE(reply, framing?) 200 with the framing's content type (SSE by default); the body is a stream
 *                            Fastify pipes to the client, so onSend/onResponse hooks and headers set
 *                            earlier still apply
 *   sendSSE(reply, data)     one event: `data: <JSON>\n\n` (SSE) or `<JSON>\n` (NDJSON); false once the
 *                            client is gone
 *   endSSE(reply)            the framing's end marker (SSE: `data: [DONE]\n\n`, OpenAI's; `{ done: false }`
 *                            leaves it out, as TGI does; NDJSON has none) and the end of the response
 *
 * Headers go out with the first event. Writes after the client disconnected or after endSSE are
 * dropped, never thrown: a route finishing its loop after a disconnect needs no special case.
 */

/** How events are written on the wire. */
export interface Framing {
  contentType: string;
  /** One event on the wire: `json` is `data` serialized. */
  event(json: string, data: unknown): string;
  /** The end-of-stream marker, if the protocol has one. */
  endMarker?: string;
}

export const SSE: Framing = {
  contentType: "text/event-stream; charset=utf-8",
  event: (json) => `data: ${json}\n\n`,
  endMarker: "data: [DONE]\n\n",
};

/**
 * Server-sent events named by their data's `type` (`event: <type>` before `data:`), without an end
 * marker: OpenAI's Responses API streams this way.
 */
export const TYPED_SSE: Framing = {
  contentType: SSE.contentType,
  event: (json, data) => `event: ${String((data as { type?: unknown }).type)}\ndata: ${json}\n\n`,
};

export const NDJSON: Framing = {
  contentType: "application/x-ndjson",
  event: (json) => `${json}\n`,
};

const streams = new WeakMap<FastifyReply, { body: PassThrough; framing: Framing }>();

export function startSSE(reply: FastifyReply, framing: Framing = SSE): void {
  if (streams.has(reply)) return;
  const body = new PassThrough();
  // A client gone mid-stream destroys the body; nothing listens for that error but us.
  body.on("error", () => {});
  streams.set(reply, { body, framing });
  void reply
    .code(200)
    .header("content-type", framing.contentType)
    .header("cache-control", "no-cache")
    .header("x-accel-buffering", "no")
    .send(body);
}

function open(reply: FastifyReply): { body: PassThrough; framing: Framing } | undefined {
  const s = streams.get(reply);
  if (!s || s.body.destroyed || s.body.writableEnded || reply.raw.destroyed) return undefined;
  return s;
}

/** Whether events can still reach the client (started, not ended, connection open). */
export function isSSEOpen(reply: FastifyReply): boolean {
  return open(reply) !== undefined;
}

/** Sends one event whose data is `data` as JSON. Returns false (and sends nothing) when the stream is closed. */
export function sendSSE(reply: FastifyReply, data: unknown): boolean {
  const s = open(reply);
  if (!s) return false;
  s.body.write(s.framing.event(JSON.stringify(data), data));
  return true;
}

/** Ends the stream, after the framing's end marker (SSE: `data: [DONE]`) unless `done` is false. Idempotent. */
export function endSSE(reply: FastifyReply, opts: { done?: boolean } = {}): void {
  const s = open(reply);
  if (!s) return;
  if ((opts.done ?? true) && s.framing.endMarker !== undefined) s.body.write(s.framing.endMarker);
  s.body.end();
}
