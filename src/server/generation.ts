import { gather, type RequestStream } from "../protocol/event-stream.js";
import type { EngineEvent, FinishInfo } from "../protocol/events.js";
import type { RequestKind } from "../protocol/request.js";
import type { SamplingParams } from "../sampling/params.js";
import type { LoadedModel, ServeOptions } from "./context.js";
import { ApiError } from "./errors.js";

/**
 * The one path from any generation route to the engine: admission (loading,
 * draining, queue cap), the context-length check, submission with the client's
 * abort signal and timeouts, and one record per finished request for metrics
 * and the request log. Routes only translate their protocol to
 * GenerationParams and the stream's events back.
 */

export interface GenerationParams {
  /** Default "generate"; "embed" computes the prompt's embedding (maxTokens, sampling and stop then do not apply). */
  kind?: RequestKind;
  prompt: number[];
  maxTokens: number;
  sampling: Partial<SamplingParams>;
  stop: string[];
  /** false = ignore end-of-generation tokens (ignore_eos). */
  stopAtEog: boolean;
  priority: number;
  /** Who asks: API key label or client address (logs, rate limits). Never the key itself. */
  client: string;
  /** Route, for logs and metric labels. */
  endpoint: string;
  /** Prompt text, logged only with --log-prompts. */
  promptText?: string;
  /** The protocol's names of the prompt and max-tokens fields, for errors (default "prompt", "max_tokens"). */
  fields?: { prompt: string; maxTokens: string };
}

/**
 * max_tokens when a request gives none: the room the context leaves after the prompt (at least 1),
 * capped by the protocol's own default where it has one (TGI's 100; OpenAI chat has none).
 */
export function defaultMaxTokens(promptLength: number, contextLength: number, cap = Infinity): number {
  return Math.min(cap, Math.max(1, contextLength - promptLength));
}

/** Everything known about a request once it ended: what metrics and the request log are made of. */
export interface RequestRecord {
  id: string;
  endpoint: string;
  client: string;
  /** HTTP status the client got (200 even for an abort after streaming began). */
  status: number;
  finish: FinishInfo;
  /** Engine clock → milliseconds: arrival, first token, etc. are in FinishInfo.times. */
  promptText?: string;
}

export interface GenerationHooks {
  onFinish(r: RequestRecord): void;
  onReject(
    reason: "queue_full" | "rate_limited" | "loading" | "draining" | "invalid",
    endpoint: string,
  ): void;
  /** Right before onFinish, for a finish with reason "abort" whose client had gone away. */
  onAbortedByClient(endpoint: string): void;
}

let nextId = 0;

export class GenerationService {
  /** Submitted requests that have not received any event yet (queued in the engine). */
  private waiting = 0;
  private inFlight = 0;

  constructor(
    private readonly opts: ServeOptions,
    private readonly getModel: () => LoadedModel | undefined,
    private readonly isDraining: () => boolean,
    private readonly hooks: GenerationHooks,
  ) {}

  get numInFlight(): number {
    return this.inFlight;
  }
  get numWaiting(): number {
    return this.waiting;
  }

  /** The loaded model, or 503 while it loads. */
  model(endpoint: string): LoadedModel {
    const m = this.getModel();
    if (!m) {
      this.hooks.onReject("loading", endpoint);
      throw new ApiError(503, "the model is still loading", "server_overloaded", null, "model_loading", 5);
    }
    return m;
  }

  /** The one context check: a prompt must fit the context with room for its max tokens. 400 naming the field. */
  private checkContext(m: LoadedModel, p: GenerationParams): void {
    const ctx = m.info.contextLength;
    const n = p.prompt.length;
    const fields = p.fields ?? { prompt: "prompt", maxTokens: "max_tokens" };
    if (p.kind === "embed") {
      // Nothing is generated after an embedding's input: it may fill the context.
      if (n > ctx) {
        throw new ApiError(
          400,
          `this model's maximum context length is ${ctx} tokens, but the input has ${n} tokens`,
          "invalid_request_error",
          fields.prompt,
          "context_length_exceeded",
        );
      }
      return;
    }
    if (n >= ctx) {
      throw new ApiError(
        400,
        `this model's maximum context length is ${ctx} tokens, but the prompt has ${n} tokens`,
        "invalid_request_error",
        fields.prompt,
        "context_length_exceeded",
      );
    }
    if (n + p.maxTokens > ctx) {
      // Refused like vLLM and OpenAI do, naming both numbers, rather than silently cut short.
      throw new ApiError(
        400,
        `this model's maximum context length is ${ctx} tokens; the prompt has ${n} tokens and ${fields.maxTokens} is ${p.maxTokens} (${n + p.maxTokens} in all)`,
        "invalid_request_error",
        fields.maxTokens,
        "context_length_exceeded",
      );
    }
  }

  /**
   * Admits and submits one generation. Throws ApiError for 503 (loading, draining, queue full) and
   * for requests the engine refuses. `signal` aborting (client gone) aborts the request at once.
   */
  async start(p: GenerationParams, signal: AbortSignal): Promise<RequestStream> {
    const m = this.model(p.endpoint);
    if (this.isDraining()) {
      this.hooks.onReject("draining", p.endpoint);
      throw new ApiError(503, "the server is shutting down", "server_overloaded", null, "shutting_down", 5);
    }
    // A request that can never run is a 400 whatever the load.
    this.checkContext(m, p);
    if (this.waiting >= this.opts.maxQueue) {
      this.hooks.onReject("queue_full", p.endpoint);
      throw new ApiError(
        503,
        `the server is busy: ${this.waiting} requests are queued (limit ${this.opts.maxQueue}); retry later`,
        "server_overloaded",
        null,
        "queue_full",
        1,
      );
    }
    const id = `req-${Date.now().toString(36)}-${(nextId++).toString(36)}`;
    const stream = m.backend.submit(
      {
        id,
        ...(p.kind ? { kind: p.kind } : {}),
        prompt: p.prompt,
        maxTokens: p.maxTokens,
        sampling: p.sampling,
        stop: p.stop,
        stopAtEog: p.stopAtEog,
        priority: p.priority,
        timeoutMs: this.opts.requestTimeoutMs,
      },
      { signal },
    );
    return this.track(stream, p, signal);
  }

  /** Wraps a stream to count queue occupancy, enforce the queue timeout and report the finished request. */
  private track(inner: RequestStream, p: GenerationParams, signal: AbortSignal): RequestStream {
    this.waiting++;
    this.inFlight++;
    let started = false;
    let ended = false;
    const begin = () => {
      if (!started) {
        started = true;
        this.waiting--;
        if (queueTimer) clearTimeout(queueTimer);
      }
    };
    const end = (finish: FinishInfo | undefined) => {
      if (ended) return;
      ended = true;
      begin();
      this.inFlight--;
      if (finish) {
        // A client abort is an abort finish whose client was gone by then (metrics.ts): counted with
        // the finish, so it can never be counted for a request that finished otherwise.
        if (finish.reason === "abort" && signal.aborted) this.hooks.onAbortedByClient(p.endpoint);
        this.hooks.onFinish({
          id: inner.id,
          endpoint: p.endpoint,
          client: p.client,
          status: 200,
          finish,
          promptText: this.opts.logPrompts ? p.promptText : undefined,
        });
      }
    };
    const queueTimeout = this.opts.queueTimeoutMs;
    const queueTimer =
      queueTimeout !== undefined
        ? setTimeout(() => inner.abort(`waited ${queueTimeout} ms in the queue`), queueTimeout)
        : undefined;
    async function* events(): AsyncGenerator<EngineEvent> {
      let finish: FinishInfo | undefined;
      try {
        for await (const e of inner) {
          begin();
          if (e.finish) finish = e.finish;
          yield e;
        }
      } finally {
        // Left before the finish (the consumer stopped reading, which aborts the request): the
        // request still ends in the engine, and is reported once its finish arrives.
        if (finish) end(finish);
        else
          inner.result().then(
            (r) => end(r.finish),
            () => end(undefined),
          );
      }
    }
    let iterated = false;
    const wrapper: RequestStream = {
      id: inner.id,
      abort: (message?: string) => inner.abort(message),
      // Gathered through the events, so that the first one still marks the request started (queue
      // count, queue timeout) and a client gone is still counted, as for a streamed request.
      result: () => gather(wrapper, inner.id),
      [Symbol.asyncIterator](): AsyncIterator<EngineEvent> {
        if (iterated) throw new Error(`request ${inner.id}: a RequestStream can be iterated only once`);
        iterated = true;
        return events();
      },
    };
    return wrapper;
  }
}
