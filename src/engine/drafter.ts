import type { Sequence } from "./sequence.js";

/**
 * Where speculative decoding's drafts come from: prompt lookup (ngram-drafter.ts) or a small draft
 * model with the target's vocabulary (model-drafter.ts). The Speculator (speculation.ts) decides
 * which sequences draft and how many tokens; a Drafter only proposes them, for all the drafting
 * sequences of a step at once (so a draft model runs one batched forward pass per draft position),
 * and keeps whatever per-sequence state it needs until it is told the sequence is done.
 *
 * Drafts are deterministic (a point mass on each proposed token), which is what keeps
 * verifyDraft's rejection rule exact for sampled requests (src/sampling/speculative.ts).
 */

export interface DraftRequest {
  seq: Sequence;
  /** The most tokens to propose (≥ 1); what follows `seq.tokens`, whose last token is not yet computed. */
  k: number;
}

export interface Drafter {
  /**
   * What drafting one token costs the drafter itself, relative to a one-token decode step of the
   * target model (0 for prompt lookup; about the draft model's decode step over the target's for a
   * draft model). The Speculator adds it to the cost of verifying the token.
   */
  readonly tokenCost: number;
  /** Per request, its draft: at most `k` tokens, possibly none. */
  draft(requests: readonly DraftRequest[]): number[][];
  /** The sequence drafts no more for now (finished, aborted, preempted): free what it holds. */
  release(seq: Sequence): void;
  /** Forget every sequence (a fresh engine takes the drafter over). */
  reset(): void;
}
