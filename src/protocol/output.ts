import type { GrammarMatcher } from "../grammar/constraint.js";
import type { SampleResult } from "../sampling/sampler.js";
import type { Tokenizer } from "../tokenizer/index.js";
import type { EngineEvent, FinishInfo } from "./events.js";
import type { FinishReason, RequestSpec, SeqTimes } from "./request.js";
import { TextOutput } from "./text-output.js";

/**
 * The one place that decides what a generated token does to a request. The engine, the slot
 * backends (llama.cpp, upstreams) and `generate()` all hand each sampled token to
 * `RequestOutput.accept`, and end every request through `RequestOutput.finish`:
 *
 *   token ─▶ end-of-generation? ── yes ─▶ done (stop), the token is not output
 *              │ no
 *              ▼
 *            output it: count, logprobs, text (decoded incrementally, stop strings held back)
 *              │
 *              ├─ a stop string completed ─▶ done (stop); the string and what follows are dropped
 *              └─ max_tokens reached, or the context full ─▶ done (length)
 *
 * At the finish, text held back (half a character, a possible stop-string prefix) is released,
 * except after a stop string, an abort or an error.
 *
 * A constrained request (RequestSpec.grammar) carries its grammar's matcher here, so the grammar
 * advances on the same path: every token is first accepted by the matcher (a token it refuses ends
 * the request with `error`: the mask should have made it impossible); an end-of-generation token
 * the grammar allowed ends it with `stop` as usual (even with stopAtEog false: the grammar decides
 * where the output ends), and so does a token after which the grammar is complete (isTerminated).
 * max_tokens still ends it with `length` and the partial output, and stop strings still apply.
 */

/** Why a request is done, decided by its output (aborts and errors are decided elsewhere). */
export interface Done {
  reason: "stop" | "length" | "error";
  /** Why, for an error. */
  message?: string;
  /** The end-of-generation token that ended it. */
  eogToken?: number;
  /** A stop string matched. */
  stopped: boolean;
}

/** What the producer knows better at the finish (an upstream's usage and stop token); completion tokens default to those accepted here. */
export interface FinishCounts {
  eogToken?: number;
  promptTokens?: number;
  cachedTokens?: number;
  completionTokens?: number;
  preemptions?: number;
}

export class RequestOutput {
  /** When each sampled token arrived. */
  readonly tokenTimes: number[] = [];
  /** Tokens output so far. */
  completion = 0;
  /** Set once a token ended the request. */
  done: Done | undefined;
  private readonly text: TextOutput | undefined;
  private readonly eog: ReadonlySet<number>;
  private readonly wantLogprobs: boolean;
  /** Output arrived as final text (passThrough): nothing is held back. */
  private passedThrough = false;

  /**
   * `tokenizer` turns tokens into text (without one, only ids are produced and there are no
   * end-of-generation tokens); `times` is the request's record, stamped here at each token;
   * `matcher` is the request's grammar matcher when it is constrained.
   */
  constructor(
    readonly spec: Pick<RequestSpec, "prompt" | "maxTokens" | "stop" | "stopAtEog" | "sampling">,
    tokenizer: Tokenizer | undefined,
    private readonly contextLength: number,
    readonly times: SeqTimes,
    readonly matcher?: GrammarMatcher,
  ) {
    this.text = tokenizer ? new TextOutput(tokenizer, spec.stop) : undefined;
    const eogApplies = (spec.stopAtEog ?? true) || matcher !== undefined;
    this.eog = eogApplies && tokenizer ? tokenizer.eogTokens : new Set();
    this.wantLogprobs = (spec.sampling?.logprobs ?? 0) > 0;
  }

  /** Whether the caller should ask for logprobs of the tokens it hands over. */
  get logprobs(): boolean {
    return this.wantLogprobs;
  }

  /**
   * One sampled token, added to `ev`. Returns whether it joins the request's tokens (false for an
   * end-of-generation token, or once the request is done); sets `done` when it ends the request.
   */
  accept(token: number, sample: SampleResult | undefined, now: number, ev: EngineEvent): boolean {
    if (this.done) return false;
    this.stamp(now, 1);
    if (this.matcher && !this.matcher.accept(token)) {
      this.done = { reason: "error", stopped: false, message: `the grammar does not allow token ${token}` };
      return false;
    }
    if (this.eog.has(token)) {
      this.done = { reason: "stop", eogToken: token, stopped: false };
      return false;
    }
    this.completion++;
    ev.tokens.push(token);
    if (sample && this.wantLogprobs) (ev.logprobs ??= []).push(sample);
    if (this.text) {
      const r = this.text.push(token);
      ev.text += r.text;
      if (r.stopped) {
        this.done = { reason: "stop", stopped: true };
        return true;
      }
    }
    if (this.matcher?.isTerminated()) {
      this.done = { reason: "stop", stopped: false };
      return true;
    }
    if (
      this.completion >= this.spec.maxTokens ||
      this.spec.prompt.length + this.completion >= this.contextLength
    ) {
      this.done = { reason: "length", stopped: false };
    }
    return true;
  }

  /** Tokens and text already decoded and stopped elsewhere (an upstream server), added to `ev` as they are. */
  passThrough(
    tokens: number[],
    text: string,
    logprobs: SampleResult[] | undefined,
    now: number,
    ev: EngineEvent,
  ): void {
    this.passedThrough = true;
    this.stamp(now, tokens.length);
    this.completion += tokens.length;
    for (const t of tokens) ev.tokens.push(t);
    ev.text += text;
    if (logprobs && logprobs.length > 0) (ev.logprobs ??= []).push(...logprobs);
  }

  /**
   * Ends the request: releases held-back text into `ev` (not after a stop string, an abort or an
   * error) and sets `ev.finish`. Reason and end-of-generation token default to `done`'s.
   */
  finish(
    ev: EngineEvent,
    now: number,
    reason: FinishReason = this.done?.reason ?? "stop",
    message?: string,
    counts: FinishCounts = {},
  ): FinishInfo {
    const stopped = reason === this.done?.reason && this.done.stopped;
    if (this.text && !this.passedThrough && !stopped && (reason === "stop" || reason === "length")) {
      ev.text += this.text.flush();
    }
    this.times.finished = now;
    ev.finish = {
      reason,
      message,
      eogToken: (reason === this.done?.reason ? this.done.eogToken : undefined) ?? counts.eogToken,
      promptTokens: counts.promptTokens ?? this.spec.prompt.length,
      cachedTokens: counts.cachedTokens ?? 0,
      completionTokens: counts.completionTokens ?? this.completion,
      preemptions: counts.preemptions ?? 0,
      times: this.times,
      tokenTimes: this.tokenTimes,
    };
    return ev.finish;
  }

  private stamp(now: number, n: number): void {
    this.times.firstToken ??= now;
    this.times.lastToken = now;
    for (let i = 0; i < n; i++) this.tokenTimes.push(now);
  }
}
