import type { EngineEvent, FinishInfo } from "../engine/engine.js";
import {
  EventStream,
  type RequestStream,
  type SubmitOptions,
  type SubmitSpec,
} from "../engine/request-stream.js";
import { type FinishReason, type RequestSpec, requestProblem, type SeqTimes } from "../engine/sequence.js";
import { TextOutput } from "../engine/text-output.js";
import { SpindleError } from "../errors.js";
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
 *  - token(): a token id the backend sampled (llamacpp). The base decodes it,
 *    applies end-of-generation, stop strings and max_tokens exactly as the
 *    engine does, and says whether to go on.
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

export interface SlotOutcome {
  /** Why generation ended, when run() knows better than the base (an upstream's finish_reason). */
  reason?: "stop" | "length";
  eogToken?: number;
  /** Counts from the backend (an upstream's usage), when it has them. */
  promptTokens?: number;
  cachedTokens?: number;
  completionTokens?: number;
}

export interface SlotBackendOptions extends SlotQueueOptions {
  info: BackendInfo;
  tokenizer: Tokenizer;
}

interface Live {
  spec: RequestSpec;
  stream: EventStream;
  controller: AbortController;
  times: SeqTimes;
  tokenTimes: number[];
  completion: number;
  text: TextOutput;
  /** Set once the base decided the request is done (stop string, EOG, length). */
  done?: { reason: FinishReason; eogToken?: number; stopped: boolean };
  /** The last token's event, sent with the finish. */
  last?: EngineEvent;
  /** Output came through output(): text is final as given, nothing to flush. */
  passthrough?: boolean;
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
    const refused = requestProblem(spec, this.info, "invalid_request_error");
    if (refused) {
      stream.fail(refused);
      return stream;
    }
    const now = performance.now();
    const r: Live = {
      spec,
      stream,
      controller,
      times: { arrival: now },
      tokenTimes: [],
      completion: 0,
      text: new TextOutput(this.tokenizer, spec.stop),
      sentAny: false,
    };
    const { signal } = opts;
    const onAbort = () => stream.abort(abortMessage(signal?.reason));
    if (signal?.aborted) onAbort();
    else signal?.addEventListener("abort", onAbort, { once: true });
    const timer =
      spec.timeoutMs !== undefined
        ? setTimeout(() => stream.abort(`timed out after ${spec.timeoutMs} ms`), spec.timeoutMs)
        : undefined;
    const ended = this.serve(r).finally(() => {
      this.live.delete(r);
      signal?.removeEventListener("abort", onAbort);
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
      this.finish(r, "abort", message(err));
      return;
    }
    this.running++;
    this.queueChanged();
    r.times.firstScheduled = performance.now();
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
      if (r.sentAny) this.finish(r, "error", message(failure));
      else
        r.stream.fail(
          failure instanceof SpindleError ? failure : new SpindleError(message(failure), "backend_error"),
        );
    } else if (r.done) this.finish(r, r.done.reason, undefined, r.done.eogToken, r.done.stopped, outcome);
    else this.finish(r, outcome.reason ?? "stop", undefined, outcome.eogToken, false, outcome);
  }

  private handle(r: Live): SlotRun {
    const maxLen = this.info.contextLength;
    const eog = this.tokenizer.eogTokens;
    return {
      spec: r.spec,
      signal: r.controller.signal,
      get sentAny() {
        return r.sentAny;
      },
      token: (id, sample) => {
        if (r.done || r.controller.signal.aborted) return false;
        this.stamp(r, 1);
        if ((r.spec.stopAtEog ?? true) && eog.has(id)) {
          r.done = { reason: "stop", eogToken: id, stopped: false };
          return false;
        }
        r.completion++;
        const ev: EngineEvent = { id: r.spec.id, tokens: [id], text: "" };
        if (sample && (r.spec.sampling?.logprobs ?? 0) > 0) ev.logprobs = [sample];
        const t = r.text.push(id);
        ev.text = t.text;
        if (t.stopped) r.done = { reason: "stop", stopped: true };
        else if (r.completion >= r.spec.maxTokens || r.spec.prompt.length + r.completion >= maxLen) {
          r.done = { reason: "length", stopped: false };
        }
        // The last token's event goes out with the finish.
        if (r.done) r.last = ev;
        else this.send(r, ev);
        return r.done === undefined;
      },
      output: (tokens, text, logprobs) => {
        if (r.controller.signal.aborted) return;
        this.stamp(r, tokens.length);
        r.completion += tokens.length;
        r.passthrough = true;
        const ev: EngineEvent = { id: r.spec.id, tokens, text };
        if (logprobs && logprobs.length > 0) ev.logprobs = logprobs;
        this.send(r, ev);
      },
    };
  }

  /** Token times: `n` tokens arrived now. */
  private stamp(r: Live, n: number): void {
    const now = performance.now();
    r.times.firstToken ??= now;
    r.times.lastToken = now;
    for (let i = 0; i < n; i++) r.tokenTimes.push(now);
  }

  private send(r: Live, ev: EngineEvent): void {
    if (ev.tokens.length === 0 && ev.text.length === 0 && !ev.finish) return;
    r.sentAny = true;
    r.stream.deliver(ev);
  }

  private finish(
    r: Live,
    reason: FinishReason,
    msg?: string,
    eogToken?: number,
    stopped = false,
    outcome: SlotOutcome = {},
  ): void {
    const ev: EngineEvent = r.last ?? { id: r.spec.id, tokens: [], text: "" };
    if (!stopped && reason !== "abort" && reason !== "error" && !r.passthrough) ev.text += r.text.flush();
    r.times.finished = performance.now();
    ev.finish = {
      reason,
      message: msg,
      eogToken,
      promptTokens: outcome.promptTokens ?? r.spec.prompt.length,
      cachedTokens: outcome.cachedTokens ?? 0,
      completionTokens: outcome.completionTokens ?? r.completion,
      preemptions: 0,
      times: r.times,
      tokenTimes: r.tokenTimes,
    } satisfies FinishInfo;
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

function message(err: unknown): string {
  const m = err instanceof Error ? err.message : String(err);
  return m.split("\n", 1)[0]!.trim() || "unknown error";
}

function abortMessage(reason: unknown): string {
  if (typeof reason === "string" && reason.length > 0) return reason;
  if (reason instanceof Error && reason.name !== "AbortError") return message(reason);
  return "aborted";
}
