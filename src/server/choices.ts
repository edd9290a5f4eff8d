import type { FastifyReply } from "fastify";
import type { RequestStream } from "../protocol/event-stream.js";
import type { EngineEvent, FinishInfo } from "../protocol/events.js";
import type { ServerContext } from "./context.js";
import { ApiError, finishError, toApiError } from "./errors.js";
import type { GenerationParams } from "./generation.js";
import { endSSE, type Framing, SSE, sendSSE, startSSE } from "./sse.js";

/**
 * What every generation route does between its protocol and the backend, whatever the protocol
 * (OpenAI's completions, chat and Responses, TGI, llama-server, Ollama, the RPC service): a response has one or more
 * choices (n per prompt, per prompt of a batch), each one backend request; they start together
 * (`startChoices`) and are read as one merged stream, either to the end (`readChoices`, for a
 * whole response), as an event stream (`streamChoices`: server-sent events, or NDJSON for Ollama),
 * or event by event for a protocol that streams its own way (`choiceEvents`: the RPC service's
 * server streams). A route only says how its events
 * and errors look.
 *
 * Failure rules, the same for every route: a choice that cannot start aborts the others and the
 * error is the response; a choice that ends in abort or error makes a whole response that error,
 * and ends a stream with one error event (in the route's shape); a client that went away gets 499
 * (never seen by it, but logged and counted so).
 */

export interface Choice {
  /** Index in the response's choices. */
  index: number;
  /** Which prompt it answers (usage counts each prompt once). */
  prompt: number;
  params: GenerationParams;
}

/**
 * Starts every choice's request. If one cannot start (queue full, context too long…) the ones
 * already started are aborted and drained, and the error is thrown.
 */
export async function startChoices(
  ctx: ServerContext,
  choices: Choice[],
  signal: AbortSignal,
): Promise<RequestStream[]> {
  const settled = await Promise.allSettled(choices.map((c) => ctx.service.start(c.params, signal)));
  const failed = settled.find((s): s is PromiseRejectedResult => s.status === "rejected");
  if (!failed) return settled.map((s) => (s as PromiseFulfilledResult<RequestStream>).value);
  for (const s of settled) {
    if (s.status === "fulfilled") {
      s.value.abort("another choice of the same request could not start");
      // Reading it to the end releases its place in the service's counters.
      s.value.result().catch(() => {});
    }
  }
  throw failed.reason;
}

/**
 * The events of all streams as they come, tagged with the stream's position. Leaving early (break,
 * an error) aborts every stream that has not finished.
 */
async function* merge(streams: RequestStream[]): AsyncGenerator<[number, EngineEvent]> {
  const its = streams.map((s) => s[Symbol.asyncIterator]());
  const pending = new Map<number, Promise<[number, IteratorResult<EngineEvent>]>>();
  const pull = (i: number) =>
    pending.set(
      i,
      its[i]!.next().then((r) => [i, r]),
    );
  for (let i = 0; i < its.length; i++) pull(i);
  try {
    while (pending.size > 0) {
      const [i, r] = await Promise.race(pending.values());
      if (r.done) {
        pending.delete(i);
        continue;
      }
      // Pulled again even after its finish, so the stream's own bookkeeping runs to its end.
      pull(i);
      yield [i, r.value];
    }
  } finally {
    for (const [i, p] of pending) {
      p.catch(() => {});
      streams[i]!.abort("the request ended early");
      its[i]!.return?.()?.catch(() => {});
    }
  }
}

const failed = (f: FinishInfo | undefined) =>
  f !== undefined && (f.reason === "abort" || f.reason === "error");

function clientGone(): ApiError {
  return new ApiError(499, "the client closed the request", "invalid_request_error", null, "client_closed");
}

/**
 * Reads every choice to its end, handing each event to `onEvent` (the route keeps what its
 * response needs), and returns each choice's finish. Throws the error of a choice that was
 * aborted or failed, or 499 when the client went away.
 */
export async function readChoices(
  streams: RequestStream[],
  signal: AbortSignal,
  onEvent: (i: number, e: EngineEvent) => void,
): Promise<FinishInfo[]> {
  const finish: (FinishInfo | undefined)[] = streams.map(() => undefined);
  for await (const [i, e] of merge(streams)) {
    if (e.finish) {
      finish[i] = e.finish;
      if (failed(e.finish)) break;
    }
    onEvent(i, e);
  }
  if (signal.aborted) throw clientGone();
  const bad = finish.find(failed);
  if (bad) throw finishError(bad);
  if (finish.some((f) => f === undefined)) throw new ApiError(500, "a generation ended without finishing");
  return finish as FinishInfo[];
}

/**
 * The events of every choice as they come, for a protocol that writes its own stream (the RPC
 * service): each event of a choice that has not failed is yielded; a choice aborted or failed ends
 * the iteration with its error (`finishError`), a client gone with 499. Leaving early aborts every
 * choice that has not finished.
 */
export async function* choiceEvents(
  streams: RequestStream[],
  signal: AbortSignal,
): AsyncGenerator<[number, EngineEvent]> {
  const finish: (FinishInfo | undefined)[] = streams.map(() => undefined);
  for await (const [i, e] of merge(streams)) {
    if (signal.aborted) throw clientGone();
    if (e.finish) {
      finish[i] = e.finish;
      if (failed(e.finish)) throw finishError(e.finish);
    }
    yield [i, e];
  }
  if (signal.aborted) throw clientGone();
  if (finish.some((f) => f === undefined)) throw new ApiError(500, "a generation ended without finishing");
}

export interface StreamHooks {
  /** Runs once, right after the event stream opens. */
  open(): void;
  /** Every event of a choice that has not failed. */
  onEvent(i: number, e: EngineEvent): void;
  /** Runs once all choices finished normally (before the end marker). */
  close(finishes: FinishInfo[]): void;
  /** The route's error event for an error once the stream is open. */
  errorEvent(e: ApiError, finish?: FinishInfo): unknown;
  /** Whether the stream ends with `data: [DONE]` (OpenAI) or not (TGI). Default true. */
  doneMarker?: boolean;
  /** How events go on the wire: server-sent events (default) or NDJSON (Ollama). */
  framing?: Framing;
}

/**
 * Streams a request as server-sent events (or the route's framing): waits for the first event (so that an early timeout or
 * failure is still a plain HTTP error), then opens the event stream and hands every event to the
 * route. A choice aborted or failed midway ends the stream with the route's error event.
 */
export async function streamChoices(
  ctx: ServerContext,
  reply: FastifyReply,
  streams: RequestStream[],
  signal: AbortSignal,
  hooks: StreamHooks,
): Promise<FastifyReply> {
  const it = merge(streams);
  const finishes: (FinishInfo | undefined)[] = streams.map(() => undefined);
  let first: IteratorResult<[number, EngineEvent]>;
  try {
    first = await it.next();
  } catch (err) {
    await it.return(undefined);
    throw err;
  }
  if (signal.aborted) {
    await it.return(undefined);
    throw clientGone();
  }
  if (!first.done && failed(first.value[1].finish)) {
    await it.return(undefined);
    throw finishError(first.value[1].finish!);
  }
  startSSE(reply, hooks.framing ?? SSE);
  try {
    hooks.open();
    let next = first;
    while (!next.done) {
      const [i, e] = next.value;
      if (e.finish) finishes[i] = e.finish;
      if (failed(e.finish)) {
        if (!signal.aborted) sendSSE(reply, hooks.errorEvent(finishError(e.finish!), e.finish));
        break;
      }
      hooks.onEvent(i, e);
      next = await it.next();
    }
    if (finishes.every((f) => f !== undefined && !failed(f))) hooks.close(finishes as FinishInfo[]);
  } catch (err) {
    const e = toApiError(err);
    if (e.status >= 500 && !(err instanceof ApiError)) {
      ctx.log.error({ err }, "error while streaming a response");
    }
    sendSSE(reply, hooks.errorEvent(e));
  } finally {
    await it.return(undefined);
    endSSE(reply, { done: hooks.doneMarker ?? true });
  }
  return reply;
}
