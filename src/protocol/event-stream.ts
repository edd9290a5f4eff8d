import { abortMessage, SpindleError } from "../errors.js";
import type { EngineEvent, FinishInfo, RequestResult } from "./events.js";

/**
 * One request's output as the serving layer reads it, whatever produced it: the
 * in-process engine (engine-client.ts) or an external backend (src/backends/).
 * The producer calls deliver() with each event and fail() if the request cannot
 * go on; the consumer iterates the events, or awaits result(), or both. Output
 * is accumulated for result() only: a stream read by iteration alone (every
 * streaming response) keeps nothing but the events not yet read.
 */

/**
 * One request's output. Iterate it (once) for its events, one per producer step that made
 * something for it (iteration ends after the event that carries `finish`); await `result()` for
 * the whole output. Both may be used: result() then has every token and all the text when it was
 * asked for before iteration began, and only the finish otherwise (the reader had the rest). A
 * request the producer refused (or a dead worker) makes both throw the SpindleError. Leaving the
 * loop early (break) aborts the request.
 */
export interface RequestStream extends AsyncIterable<EngineEvent> {
  readonly id: string;
  result(): Promise<RequestResult>;
  /** Aborts the request; the stream then ends with finish reason "abort". No effect once it has finished. */
  abort(message?: string): void;
}

export type Settle<T> = { resolve: (v: T) => void; reject: (e: unknown) => void };

/** Reads a request's events to the end and puts them together. */
export async function gather(events: AsyncIterable<EngineEvent>, id: string): Promise<RequestResult> {
  const tokens: number[] = [];
  let text = "";
  let embedding: Float32Array | undefined;
  for await (const e of events) {
    for (const t of e.tokens) tokens.push(t);
    text += e.text;
    if (e.embedding) embedding = e.embedding;
    if (e.finish) return { tokens, text, ...(embedding ? { embedding } : {}), finish: e.finish };
  }
  throw new SpindleError(`request ${id} ended without finishing`, "internal_error");
}

/** Aborts the stream when `signal` does; returns the function that unhooks it. */
export function abortOnSignal(stream: RequestStream, signal: AbortSignal | undefined): () => void {
  if (!signal) return () => {};
  const onAbort = () => stream.abort(abortMessage(signal.reason));
  if (signal.aborted) {
    onAbort();
    return () => {};
  }
  signal.addEventListener("abort", onAbort, { once: true });
  return () => signal.removeEventListener("abort", onAbort);
}

export class EventStream implements RequestStream {
  private readonly queue: EngineEvent[] = [];
  private readonly pulls: Settle<IteratorResult<EngineEvent>>[] = [];
  private readonly results: Settle<RequestResult>[] = [];
  /** What result() returns, accumulated until iteration begins without result() having been asked. */
  private accumulate = true;
  private resultAsked = false;
  private tokens: number[] = [];
  private text = "";
  private embedding: Float32Array | undefined;
  private finish: FinishInfo | undefined;
  private error: Error | undefined;
  private iterated = false;
  /** The consumer left the loop: events are no longer queued. */
  private detached = false;
  /** Called once when the stream ends (finish or failure): the producer forgets it. */
  onEnd: (() => void) | undefined;

  /** `sendAbort` asks the producer to stop; the producer then delivers the finish (reason "abort"). */
  constructor(
    readonly id: string,
    private readonly sendAbort: (id: string, message?: string) => void,
  ) {}

  get ended(): boolean {
    return this.finish !== undefined || this.error !== undefined;
  }

  deliver(e: EngineEvent): void {
    if (this.ended) return;
    if (this.accumulate) {
      for (const t of e.tokens) this.tokens.push(t);
      this.text += e.text;
    }
    if (e.embedding) this.embedding = e.embedding;
    if (e.finish) this.finish = e.finish;
    if (!this.detached) {
      const pull = this.pulls.shift();
      if (pull) pull.resolve({ value: e, done: false });
      else this.queue.push(e);
    }
    if (e.finish) {
      for (const p of this.pulls.splice(0)) p.resolve({ value: undefined, done: true });
      const r = this.gathered(e.finish);
      for (const s of this.results.splice(0)) s.resolve(r);
      this.end();
    }
  }

  fail(err: Error): void {
    if (this.ended) return;
    this.error = err;
    // Events already queued are still read first; a waiting reader gets the error now.
    for (const p of this.pulls.splice(0)) p.reject(err);
    for (const s of this.results.splice(0)) s.reject(err);
    this.end();
  }

  private end(): void {
    const cb = this.onEnd;
    this.onEnd = undefined;
    cb?.();
  }

  private gathered(finish: FinishInfo): RequestResult {
    return {
      tokens: this.tokens,
      text: this.text,
      ...(this.embedding ? { embedding: this.embedding } : {}),
      finish,
    };
  }

  abort(message?: string): void {
    if (!this.ended) this.sendAbort(this.id, message);
  }

  result(): Promise<RequestResult> {
    this.resultAsked = true;
    if (this.finish) return Promise.resolve(this.gathered(this.finish));
    if (this.error) return Promise.reject(this.error);
    return new Promise((resolve, reject) => this.results.push({ resolve, reject }));
  }

  [Symbol.asyncIterator](): AsyncIterator<EngineEvent> {
    if (this.iterated) throw new Error(`request ${this.id}: a RequestStream can be iterated only once`);
    this.iterated = true;
    if (!this.resultAsked) {
      this.accumulate = false;
      this.tokens = [];
      this.text = "";
    }
    let threw = false;
    return {
      next: (): Promise<IteratorResult<EngineEvent>> => {
        const e = this.queue.shift();
        if (e) return Promise.resolve({ value: e, done: false });
        if (this.error && !threw) {
          threw = true;
          return Promise.reject(this.error);
        }
        if (this.ended || this.detached) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve, reject) => this.pulls.push({ resolve, reject }));
      },
      return: (): Promise<IteratorResult<EngineEvent>> => {
        this.detached = true;
        this.queue.length = 0;
        for (const p of this.pulls.splice(0)) p.resolve({ value: undefined, done: true });
        this.abort("the consumer stopped reading");
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}
