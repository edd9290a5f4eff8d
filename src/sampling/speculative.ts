import type { SampleResult, Sampler } from "./sampler.js";

/**
 * Verifying a draft (speculative decoding). The model has computed logits for the k + 1 positions
 * after a sequence's last token and its k draft tokens; row j is the distribution of the token that
 * follows draft[0..j). The draft is accepted up to its first token the target model does not choose,
 * and the model's own token at that position (or, when all k are accepted, the bonus token after
 * them) ends the run.
 *
 * Greedy: the choice is the argmax, so the output is exactly the non-speculative one.
 *
 * Sampling: the draft is deterministic (q(d) = 1 for the proposed token d), so the standard rejection
 * rule — accept d with probability min(1, p(d) / q(d)) = p(d), otherwise draw from p with d removed
 * and renormalised — is the same distribution as one draw x ~ p that accepts d when x = d and
 * otherwise emits x: P(d) = p(d), and P(x ≠ d) = (1 − p(d)) · p(x) / (1 − p(d)) = p(x). So each
 * position is sampled by the request's own Sampler, through every transform it applies (logit bias,
 * penalties over the history including the accepted draft tokens, temperature, top-k/p, min-p), with
 * one draw of its RNG per emitted token, as without speculation. Consequence: a seeded request's
 * output is the same token for token with and without speculation (the forward pass is
 * batch-invariant), and logprobs are those of the emitted tokens under the raw distribution.
 */

/**
 * The accepted run: the draft tokens the model chose, then one token of the model's own
 * (1 to k + 1 results). `rows` holds (k + 1) × vocabSize logits.
 */
export function verifyDraft(
  sampler: Sampler,
  rows: Float32Array,
  history: readonly number[],
  draft: readonly number[],
): SampleResult[] {
  const V = sampler.vocabSize;
  const run: SampleResult[] = [];
  for (let j = 0; j <= draft.length; j++) {
    const h = j === 0 ? history : history.concat(draft.slice(0, j));
    const r = sampler.sample(rows.subarray(j * V, (j + 1) * V), h);
    run.push(r);
    if (j === draft.length || r.token !== draft[j]) break;
  }
  return run;
}
