/**
 * Logit adjustments before sampling, in place on a working copy of the logits:
 * logit bias, then the repetition / presence / frequency penalties.
 */

/** Adds each bias to its token's logit (-Infinity bans the token). Ids must be < w.length. */
export function applyLogitBias(w: Float32Array, bias: ReadonlyMap<number, number> | undefined): void {
  if (!bias) return;
  for (const [t, b] of bias) w[t] += b;
}

export interface PenaltyParams {
  repetitionPenalty: number;
  presencePenalty: number;
  frequencyPenalty: number;
  penaltyLastN: number;
}

/**
 * Penalises every distinct token among the last `penaltyLastN` ids of `history` (-1: all of it;
 * 0: none), with llama.cpp's arithmetic, applied once per distinct token with count c:
 *   repetition (HF / llama.cpp): logit > 0 → logit / r; logit ≤ 0 → logit × r
 *   then frequency and presence (OpenAI): logit −= c × frequency + presence
 * Ids outside [0, vocabSize) are ignored. `counts` is a reusable scratch map.
 */
export function applyPenalties(
  w: Float32Array,
  vocabSize: number,
  history: ArrayLike<number>,
  p: PenaltyParams,
  counts: Map<number, number> = new Map(),
): void {
  const { repetitionPenalty: rp, presencePenalty: pp, frequencyPenalty: fp, penaltyLastN } = p;
  if ((rp === 1 && pp === 0 && fp === 0) || penaltyLastN === 0 || history.length === 0) return;
  const start = penaltyLastN < 0 ? 0 : Math.max(0, history.length - penaltyLastN);
  counts.clear();
  for (let j = start; j < history.length; j++) {
    const t = history[j];
    if (t >= 0 && t < vocabSize) counts.set(t, (counts.get(t) ?? 0) + 1);
  }
  for (const [t, c] of counts) {
    let v = w[t];
    if (rp !== 1) v = v <= 0 ? v * rp : v / rp;
    w[t] = v - c * fp - pp;
  }
}
