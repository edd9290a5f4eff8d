import { abortMessage, oneLine, SpindleError } from "../errors.js";
import { abortOnSignal, EventStream, type RequestStream } from "../protocol/event-stream.js";
import type { EngineEvent } from "../protocol/events.js";
import { type FinishCounts, RequestOutput } from "../protocol/output.js";
import {
  type FinishReason,
  type RequestSpec,
  requestProblem,
  type SubmitOptions,
  type SubmitSpec,
} from "../protocol/request.js";
import type { SampleResult } from "../sampling/sampler.js";
import type { Tokenizer } from "../tokenizer/index.js";
import type { Backend, BackendInfo, QueueState } from "./backend.js";
import { SlotQueue, type SlotQueueOptions } from "./slot-queue.js";

/**
 * The common part of the backends that have a fixed number of slots and
 * compute elsewhere (llamacpp, openai): request checks, the wait for a slot in
 * a SlotQueue (priorities, aging), timeouts, aborts, timestamps, and the
 * events. A subclass says what a slot is (take/release) and runs one request
 * on a slot (run), reporting what it produces through a SlotRun:
 *
 *  - token(): a token id the backend sampled (llamacpp). The base hands it to
 *    the request's RequestOutput (src/protocol/output.ts), the same
 *    acceptance path as the engine's, and says whether to go on.
 *  - output(): tokens and text already decoded and stopped elsewhere (an
 *    upstream server), passed through as they are.
 *
 * run() returns when generation ended by itself, when token() said stop, or
 * soon after `signal` aborts (client gone, timeout, shutdown). A throw before
 * anything was sent fails the request (the client gets an HTTP error);
 * after, it finishes it with reason "error" (the stream ends with an error
 * event).
 */

export interface SlotRun {
  readonly spec: RequestSpec;
  /** Aborts when the request is aborted: stop computing, return. */
  readonly signal: AbortSignal;
  /** Whether anything was sent to the client yet. */
  readonly sentAny: boolean;
  /** One sampled token (with its logprobs when asked). Returns false once the request is done. */
  token(id: number, sample?: SampleResult): boolean;
  /** Tokens and text produced and stopped elsewhere, passed through. */
  output(tokens: number[], text: string, logprobs?: SampleResult[]): void;
}

export interface SlotOutcome extends FinishCounts {
  /** Why generation ended, when run() knows better than the base (an upstream's finish_reason). */
  reason?: "stop" | "length";
}

export interface SlotBackendOptions extends SlotQueueOptions {
  info: BackendInfo;
  tokenizer: Tokenizer;
}

interface Live {
  spec: RequestSpec;
  stream: EventStream;
  controller: AbortController;
  output: RequestOutput;
  /** The event the last token went into, sent with the finish when that token ended the request. */
  last?: EngineEvent;
  sentAny: boolean;
}

export abstract class SlotBackend<Slot> implements Backend {
  readonly info: BackendInfo;
  readonly tokenizer: Tokenizer;
  protected readonly queue: SlotQueue<Slot>;
  /** Requests not yet ended, with the promise of their end. */
  private readonly live = new Map<Live, Promise<void>>();
  private readonly queueListeners = new Set<(q: QueueState) => void>();
  private running = 0;
  private closing: Promise<void> | undefined;
  private nextId = 1;

  constructor(o: SlotBackendOptions) {
    this.info = o.info;
    this.tokenizer = o.tokenizer;
    this.queue = new SlotQueue<Slot>(() => this.take(), o);
    this.queue.onChange(() => this.queueChanged());
  }

  /** A free slot, or undefined when none is. */
  protected abstract take(): Slot | undefined;
  /** Gives a slot back (then the base pumps the queue). */
  protected abstract release(slot: Slot): void;
  /** Runs one request on a slot (see the class comment). */
  protected abstract run(slot: Slot, r: SlotRun): Promise<SlotOutcome>;
  /** Releases the backend's own resources, after every request ended. */
  protected abstract shutdown(): Promise<void>;

  /** Requests waiting for a slot and holding one. */
  get queueState(): QueueState {
    return { waiting: this.queue.waiting, running: this.running };
  }

  onQueue(cb: (q: QueueState) => void): () => void {
    this.queueListeners.add(cb);
    return () => this.queueListeners.delete(cb);
  }

  private queueChanged(): void {
    const q = this.queueState;
    for (const cb of this.queueListeners) cb(q);
  }

  submit(s: SubmitSpec, opts: SubmitOptions = {}): RequestStream {
    const spec: RequestSpec = { ...s, id: s.id ?? `${this.info.kind}-${this.nextId++}` };
    const controller = new AbortController();
    const stream = new EventStream(spec.id, (_id, message) => controller.abort(message ?? "aborted"));
    if (this.closing) {
      stream.fail(new SpindleError("the backend is closed", "engine_closed"));
      return stream;
    }
    const refused =
      spec.kind === "embed"
        ? new SpindleError(
            `the ${this.info.kind} backend computes no embeddings (the local backend does)`,
            "embeddings_unsupported",
          )
        : requestProblem(spec, this.info, "invalid_request_error");
    if (refused) {
      stream.fail(refused);
      return stream;
    }
    const r: Live = {
      spec,
      stream,
      controller,
      output: new RequestOutput(spec, this.tokenizer, this.info.contextLength, {
        arrival: performance.now(),
      }),
      sentAny: false,
    };
    const unhook = abortOnSignal(stream, opts.signal);
    const timer =
      spec.timeoutMs !== undefined
        ? setTimeout(() => stream.abort(`timed out after ${spec.timeoutMs} ms`), spec.timeoutMs)
        : undefined;
    const ended = this.serve(r).finally(() => {
      this.live.delete(r);
      unhook();
      if (timer) clearTimeout(timer);
    });
    this.live.set(r, ended);
    return stream;
  }

  private async serve(r: Live): Promise<void> {
    const { signal } = r.controller;
    let slot: Slot;
    try {
      slot = await this.queue.acquire(r.spec.priority ?? 0, signal);
    } catch (err) {
      this.finish(r, "abort", oneLine(err));
      return;
    }
    this.running++;
    this.queueChanged();
    r.output.times.firstScheduled = performance.now();
    let outcome: SlotOutcome = {};
    let failure: unknown;
    try {
      if (!signal.aborted) outcome = await this.run(slot, this.handle(r));
    } catch (err) {
      failure = err;
    } finally {
      this.running--;
      this.release(slot);
      this.queueChanged();
      this.queue.pump();
    }
    if (signal.aborted) this.finish(r, "abort", abortMessage(signal.reason));
    else if (failure !== undefined) {
      if (r.sentAny) this.finish(r, "error", oneLine(failure));
      else
        r.stream.fail(
          failure instanceof SpindleError ? failure : new SpindleError(oneLine(failure), "backend_error"),
        );
    } else this.finish(r, r.output.done?.reason ?? outcome.reason ?? "stop", undefined, outcome);
  }

  private handle(r: Live): SlotRun {
    return {
      spec: r.spec,
      signal: r.controller.signal,
      get sentAny() {
        return r.sentAny;
      },
      token: (id, sample) => {
        if (r.output.done || r.controller.signal.aborted) return false;
        const ev: EngineEvent = { id: r.spec.id, tokens: [], text: "" };
        r.output.accept(id, sample, performance.now(), ev);
        // The token that ended the request goes out with the finish.
        if (r.output.done) r.last = ev;
        else this.send(r, ev);
        return r.output.done === undefined;
      },
      output: (tokens, text, logprobs) => {
        if (r.controller.signal.aborted) return;
        const ev: EngineEvent = { id: r.spec.id, tokens: [], text: "" };
        r.output.passThrough(tokens, text, logprobs, performance.now(), ev);
        this.send(r, ev);
      },
    };
  }

  private send(r: Live, ev: EngineEvent): void {
    if (ev.tokens.length === 0 && ev.text.length === 0 && !ev.finish) return;
    r.sentAny = true;
    r.stream.deliver(ev);
  }

  private finish(r: Live, reason: FinishReason, msg?: string, counts: FinishCounts = {}): void {
    const ev: EngineEvent = r.last ?? { id: r.spec.id, tokens: [], text: "" };
    r.output.finish(ev, performance.now(), reason, msg, counts);
    this.send(r, ev);
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      const err = new SpindleError("the server is shutting down", "engine_closed");
      for (const r of this.live.keys()) r.controller.abort(err.message);
      this.queue.close(err);
      // Each request ends soon after its abort; wait for them (5 s at most) so shutdown() finds nothing running.
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<void>((res) => (timer = setTimeout(res, 5000)));
      await Promise.race([Promise.all(this.live.values()), timeout]);
      clearTimeout(timer);
      await this.shutdown();
    })();
    return this.closing;
  }
}
