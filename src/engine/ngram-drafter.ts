import type { Drafter, DraftRequest } from "./drafter.js";

/**
 * Prompt-lookup drafting (speculative decoding without a second model): text that copies its input —
 * an edit, a summary quoting its source, code — repeats n-grams of the prompt and of the output so
 * far. The drafter finds the longest suffix of a sequence's tokens (n from `maxN` down to `minN`)
 * that occurred earlier in them, and proposes the tokens that followed its most recent earlier
 * occurrence (a match that runs into the suffix itself continues periodically: "a b a b" → "a b"). The engine verifies those tokens in one batched forward pass (see speculation.ts).
 */

export interface NgramOptions {
  /** The longest suffix tried first (default 3). */
  maxN: number;
  /** The shortest suffix still trusted (default 1). */
  minN: number;
  /** How far back (tokens) matches are searched (default 4096), so a step stays O(window). */
  window: number;
}

export const DEFAULT_NGRAM_OPTIONS: NgramOptions = { maxN: 3, minN: 1, window: 4096 };

/**
 * Up to `k` tokens that followed the most recent earlier occurrence of the longest matching suffix
 * of `tokens`; empty when no suffix of at least `minN` tokens occurred before.
 */
export function proposeNgramDraft(
  tokens: ArrayLike<number>,
  k: number,
  opts: NgramOptions = DEFAULT_NGRAM_OPTIONS,
): number[] {
  const len = tokens.length;
  if (k <= 0 || len < 2) return [];
  const lo = Math.max(0, len - opts.window);
  for (let n = Math.min(opts.maxN, len - 1); n >= opts.minN; n--) {
    // The suffix is tokens[len-n, len); a match starts at s < len - n, most recent first.
    for (let s = len - n - 1; s >= lo; s--) {
      let j = 0;
      while (j < n && tokens[s + j] === tokens[len - n + j]) j++;
      if (j < n) continue;
      // What followed; past the end it goes on copying itself (a loop keeps looping).
      const from = s + n;
      const draft: number[] = [];
      for (let i = from; i < from + k; i++) draft.push(i < len ? tokens[i]! : draft[i - len]!);
      return draft;
    }
  }
  return [];
}

/** Prompt lookup behind the Drafter interface: no model, no state, no cost of its own. */
export class NgramDrafter implements Drafter {
  readonly tokenCost = 0;
  constructor(private readonly opts: NgramOptions = DEFAULT_NGRAM_OPTIONS) {}
  draft(requests: readonly DraftRequest[]): number[][] {
    return requests.map(({ seq, k }) => proposeNgramDraft(seq.tokens, k, this.opts));
  }
  release(): void {}
  reset(): void {}
}
