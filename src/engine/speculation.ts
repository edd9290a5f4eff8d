import type { Drafter } from "./drafter.js";
import { NgramDrafter } from "./ngram-drafter.js";
import type { Sequence } from "./sequence.js";

/**
 * Speculative decoding's policy: which decoding sequence gets a draft this step, and how long.
 *
 * Drafts come from a Drafter (drafter.ts): prompt lookup (ngram-drafter.ts) or a draft model
 * (model-drafter.ts). Verifying is not free: each draft token is one more token in the step's
 * forward pass, which on a CPU costs `tokenCost` of a one-token decode step; making it costs the
 * drafter's own `draftTokenCost` (0 for prompt lookup, a draft model's forward pass for a model), so
 * the cost of a step of 1 + k tokens is taken as 1 + (tokenCost + draftTokenCost) · k. Each sequence keeps an
 * estimate of how often its draft tokens are accepted (α, decaying counts with a prior of two
 * acceptances and one rejection, enough to try one token); k drafted tokens then give (1 − α^(k+1)) / (1 − α) tokens per step,
 * and the sequence drafts the k (at most `numTokens`) that gives the most tokens per unit of cost —
 * so its draft grows while drafts are accepted and shrinks after rejections. When no k gains
 * (acceptance too low for the cost) it stops drafting for a pause that doubles each time, then tries
 * again from the prior (text that did not copy its input may start to later) — but only once it has
 * tested a few draft tokens (PROBES, one a step) since it started or last resumed, so a costly
 * drafter (a draft model) gets to show that its drafts are accepted. The scheduler gives
 * drafts only the token budget plain work leaves, so speculation switches itself off when the batch is
 * full; `maxBatch` also switches it off while more sequences run (batched decode is compute-bound:
 * verifying extra tokens then costs nearly as much as decoding them).
 *
 * The counters are vLLM's (spec_decode_num_drafts, _num_draft_tokens, _num_accepted_tokens, and
 * accepted tokens per draft position).
 */

export interface SpeculativeOptions {
  /**
   * Where drafts come from: "ngram" (prompt lookup: n-grams of the prompt and the output so far) or
   * "draft" (a draft model with the target's vocabulary: `draftModel`, proposing greedily).
   */
  method: "ngram" | "draft";
  /** method "draft": the draft model's GGUF (`--draft-model`); the engine worker loads it. */
  draftModel?: string;
  /**
   * What drafting one token costs relative to a one-token decode step of the target; default: the
   * drafter's own figure (0 for prompt lookup; a draft model's is measured at load).
   */
  draftTokenCost?: number;
  /** The most draft tokens per sequence and step (`--spec-tokens`). */
  numTokens: number;
  /** Speculate only while at most this many sequences run (default DEFAULT_MAX_BATCH, 4). */
  maxBatch?: number;
  /**
   * What one more token in a step costs, relative to a one-token decode step (`--spec-token-cost`).
   * When absent, the engine worker measures it after start (a step of 1 + numTokens tokens against
   * one of 1: 0.24 on a 2-core VNNI Xeon with a 135M-shape Q8_0 model), and 0.6 (the figure of a
   * 2-core AMD EPYC without VNNI) stands until then.
   */
  tokenCost?: number;
}

export interface SpecStats {
  /** Drafts verified. */
  drafts: number;
  /** Draft tokens verified. */
  draftTokens: number;
  /** Draft tokens accepted. */
  acceptedTokens: number;
  /** Per draft position (0 = first draft token): how many times it was accepted. */
  acceptedPerPosition: number[];
}

/**
 * The most running sequences for which a step takes extra tokens of one sequence (draft tokens here,
 * a grammar's forced tokens in the engine's jump-forward). Above it a CPU's batched step is
 * compute-bound, its time proportional to its tokens (135M shape, 2 cores: 32 one-token rows take
 * 169 ms, 16 one-token and 16 three-token rows 305 ms, 64 one-token rows 318 ms), so a sequence's
 * extra tokens make every other sequence's step longer by what they cost.
 */
export const DEFAULT_MAX_BATCH = 4;

/** How much of its past a sequence's acceptance estimate keeps per verified draft token. */
const DECAY = 0.95;
/** The first pause, in steps (it doubles each time the sequence pauses again). */
const FIRST_PAUSE = 16;
/**
 * Draft tokens a sequence tests (one a step) before its estimate may pause it, at the start and
 * after each pause: the prior alone (2 of 3 accepted) does not pay for a token that costs more than
 * 2/3 of a step (a draft model's forward plus verifying it), so without probes such a drafter would
 * never learn that its drafts are accepted.
 */
const PROBES = 4;

interface SeqSpec {
  /** Decaying counts of accepted and rejected draft tokens (prior: 2 and 1). */
  accepted: number;
  rejected: number;
  /** Steps left without drafting, and the next pause's length. */
  pausedFor: number;
  nextPause: number;
  /** Draft tokens still to test before the estimate may pause drafting (PROBES). */
  probes: number;
}

const prior = (s: SeqSpec) => {
  s.accepted = 2;
  s.rejected = 1;
  s.probes = PROBES;
};

/** Expected tokens from a step that verifies k draft tokens, each accepted with probability a. */
export function expectedTokens(a: number, k: number): number {
  return a >= 1 ? k + 1 : (1 - a ** (k + 1)) / (1 - a);
}

export class Speculator {
  readonly stats: SpecStats;
  readonly drafter: Drafter;
  private readonly state = new WeakMap<Sequence, SeqSpec>();
  private readonly maxBatch: number;
  /**
   * What verifying one draft token costs, relative to a one-token decode step: `tokenCost` when
   * given, else 0.6 until the engine worker measures it after start (engine-build.ts).
   */
  verifyCost: number;

  /** `drafter`: required for method "draft" (the worker builds it from `draftModel`); prompt lookup otherwise. */
  constructor(
    readonly opts: SpeculativeOptions,
    drafter?: Drafter,
  ) {
    if (!Number.isInteger(opts.numTokens) || opts.numTokens < 1) {
      throw new RangeError(`speculative decoding needs at least one draft token, got ${opts.numTokens}`);
    }
    if (opts.method === "draft" && !drafter) {
      throw new RangeError("speculative decoding with a draft model needs the model (a ModelDrafter)");
    }
    this.drafter = opts.method === "draft" ? drafter! : new NgramDrafter();
    this.drafter.reset();
    this.maxBatch = opts.maxBatch ?? DEFAULT_MAX_BATCH;
    this.verifyCost = opts.tokenCost ?? 0.6;
    this.stats = {
      drafts: 0,
      draftTokens: 0,
      acceptedTokens: 0,
      acceptedPerPosition: new Array(opts.numTokens).fill(0),
    };
  }

  /** What one draft token costs a step: verifying it, plus making it (a draft model's cost is measured after start). */
  get tokenCost(): number {
    return this.verifyCost + (this.opts.draftTokenCost ?? this.drafter.tokenCost);
  }

  /** Whether drafts are worth making with this many sequences running. */
  active(running: number): boolean {
    return running <= this.maxBatch;
  }

  /**
   * The draft for a decoding sequence, at most `room` tokens (what max_tokens and the context
   * leave after the token the step samples anyway); empty when it pauses or nothing matches.
   */
  propose(seq: Sequence, room: number): number[] {
    return this.proposeAll([{ seq, room }])[0]!;
  }

  /**
   * The drafts of all the decoding sequences of a step, made together (a draft model runs them as
   * one batch): per request, its draft.
   */
  proposeAll(requests: readonly { seq: Sequence; room: number }[]): number[][] {
    const drafts: number[][] = requests.map(() => []);
    const asked: number[] = [];
    const asks = [];
    for (const [i, { seq, room }] of requests.entries()) {
      const k = Math.min(this.lengthFor(seq), room);
      if (k <= 0) continue;
      asked.push(i);
      asks.push({ seq, k });
    }
    if (asks.length === 0) return drafts;
    const made = this.drafter.draft(asks);
    for (const [j, i] of asked.entries()) drafts[i] = made[j]!;
    return drafts;
  }

  /** The sequence is done drafting for now (finished, aborted or preempted): its drafter frees its state. */
  release(seq: Sequence): void {
    this.drafter.release(seq);
  }

  /** This step's draft length for the sequence: 0 while it pauses (and when it starts a pause). */
  private lengthFor(seq: Sequence): number {
    const s = this.stateOf(seq);
    if (s.pausedFor > 0) {
      if (--s.pausedFor === 0) prior(s);
      return 0;
    }
    const k = this.draftLength(s);
    if (k > 0) return k;
    if (s.probes > 0) return 1;
    s.pausedFor = s.nextPause;
    s.nextPause *= 2;
    return 0;
  }

  /** The draft length with the most expected tokens per unit of step cost; 0 when none gains. */
  draftLength(s: SeqSpec): number {
    const a = s.accepted / (s.accepted + s.rejected);
    let best = 0;
    let bestGain = 1;
    for (let k = 1; k <= this.opts.numTokens; k++) {
      const gain = expectedTokens(a, k) / (1 + this.tokenCost * k);
      if (gain > bestGain) {
        best = k;
        bestGain = gain;
      }
    }
    return best;
  }

  /** A draft of `proposed` tokens was verified and its first `accepted` kept. */
  record(seq: Sequence, proposed: number, accepted: number): void {
    if (proposed === 0) return;
    const st = this.stats;
    st.drafts++;
    st.draftTokens += proposed;
    st.acceptedTokens += accepted;
    for (let i = 0; i < accepted; i++) st.acceptedPerPosition[i]!++;
    // Each accepted token is a success; the first rejected one (if any) a failure. Tokens after it
    // were never tested.
    const s = this.stateOf(seq);
    const tested = accepted + (accepted < proposed ? 1 : 0);
    const keep = DECAY ** tested;
    s.accepted = s.accepted * keep + accepted;
    s.rejected = s.rejected * keep + (tested - accepted);
    s.probes = Math.max(0, s.probes - tested);
  }

  private stateOf(seq: Sequence): SeqSpec {
    let s = this.state.get(seq);
    if (!s) {
      s = { accepted: 0, rejected: 0, pausedFor: 0, nextPause: FIRST_PAUSE, probes: 0 };
      prior(s);
      this.state.set(seq, s);
    }
    return s;
  }
}
