import { proposeNgramDraft } from "./ngram-drafter.js";
import type { Sequence } from "./sequence.js";

/**
 * Speculative decoding's policy: which decoding sequence gets a draft this step, and how long.
 *
 * Drafts come from prompt lookup (ngram-drafter.ts). Each sequence keeps its own draft length:
 * it starts at `numTokens`, grows by one after a draft accepted in full, and shrinks to one more
 * than what was accepted after a rejection. A sequence whose drafts keep failing (acceptance below
 * MIN_ACCEPTANCE over its recent drafts) stops drafting for a pause that doubles each time (text
 * that did not copy its input may start to later). The scheduler gives drafts only the token budget
 * plain work leaves, so speculation switches itself off when the batch is full; `maxBatch` also
 * switches it off while more sequences run (past that, batched decode is compute-bound and
 * verifying extra tokens costs more than it saves).
 *
 * The counters are vLLM's (spec_decode_num_drafts, _num_draft_tokens, _num_accepted_tokens, and
 * accepted tokens per draft position).
 */

export interface SpeculativeOptions {
  /** Where drafts come from: "ngram" (prompt lookup: n-grams of the prompt and the output so far). */
  method: "ngram";
  /** The most draft tokens per sequence and step (`--spec-tokens`). */
  numTokens: number;
  /** Speculate only while at most this many sequences run (default 4). */
  maxBatch?: number;
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

/** Below this acceptance rate (over a sequence's recent draft tokens) it pauses drafting. */
const MIN_ACCEPTANCE = 0.25;
/** How many recent draft tokens the rate is measured over before it may pause a sequence. */
const RATE_WINDOW = 16;
/** The first pause, in steps (it doubles each time the sequence pauses again). */
const FIRST_PAUSE = 16;

interface SeqSpec {
  k: number;
  /** Draft tokens and accepted ones since the last pause decision. */
  proposed: number;
  accepted: number;
  /** Steps left without drafting, and the next pause's length. */
  pausedFor: number;
  nextPause: number;
}

export class Speculator {
  readonly stats: SpecStats;
  private readonly state = new WeakMap<Sequence, SeqSpec>();
  private readonly maxBatch: number;

  constructor(readonly opts: SpeculativeOptions) {
    if (!Number.isInteger(opts.numTokens) || opts.numTokens < 1) {
      throw new RangeError(`speculative decoding needs at least one draft token, got ${opts.numTokens}`);
    }
    this.maxBatch = opts.maxBatch ?? 4;
    this.stats = {
      drafts: 0,
      draftTokens: 0,
      acceptedTokens: 0,
      acceptedPerPosition: new Array(opts.numTokens).fill(0),
    };
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
    const s = this.stateOf(seq);
    if (s.pausedFor > 0) {
      s.pausedFor--;
      return [];
    }
    return proposeNgramDraft(seq.tokens, Math.min(s.k, room));
  }

  /** A draft of `proposed` tokens was verified and its first `accepted` kept. */
  record(seq: Sequence, proposed: number, accepted: number): void {
    if (proposed === 0) return;
    const st = this.stats;
    st.drafts++;
    st.draftTokens += proposed;
    st.acceptedTokens += accepted;
    for (let i = 0; i < accepted; i++) st.acceptedPerPosition[i]!++;
    const s = this.stateOf(seq);
    s.k = accepted === proposed ? Math.min(this.opts.numTokens, s.k + 1) : accepted + 1;
    s.proposed += proposed;
    s.accepted += accepted;
    if (s.proposed < RATE_WINDOW) return;
    if (s.accepted < MIN_ACCEPTANCE * s.proposed) {
      s.pausedFor = s.nextPause;
      s.nextPause *= 2;
      s.k = 1;
    }
    s.proposed = 0;
    s.accepted = 0;
  }

  private stateOf(seq: Sequence): SeqSpec {
    let s = this.state.get(seq);
    if (!s) {
      s = { k: this.opts.numTokens, proposed: 0, accepted: 0, pausedFor: 0, nextPause: FIRST_PAUSE };
      this.state.set(seq, s);
    }
    return s;
  }
}
