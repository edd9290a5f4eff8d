import { expect } from "vitest";
import { GGMLType, typeName } from "../../src/gguf/types.js";
import type { KVCacheType } from "../../src/kernels/kernels.js";
import { generate } from "../../src/model/generate.js";
import type { Model } from "../../src/model/model.js";
import { Rng } from "../../src/sampling/rng.js";
import { logitsAfter } from "./forward.js";
import { llamaGreedy, llamaNextProbs } from "./llamacpp.js";
import { argmax, logSoftmax, maxAbsDiffWhere, top2Margin } from "./logits.js";

/**
 * A synthesized model against llama.cpp (through node-llama-cpp, F32 KV cache): next-token
 * log-probabilities after prompts of 1, 7 and 64 tokens, and greedy steps.
 *
 * Tolerances per weight type (max |Δ log p| over tokens llama.cpp gives p > 1e-6):
 * - F32: both sides compute in float32 (llama.cpp with an F32 KV cache here), differing only in
 *   summation order: 1e-4 (measured: 1-7e-6).
 * - F16 / BF16: llama.cpp rounds the activations to F16 / BF16 before each matmul (ggml's
 *   vec_dot for those types takes both operands in the same type); Spindle keeps them in float32.
 *   Rounding to 11 (8) significant bits gives about 5e-4 (4e-3) relative error per product, which
 *   accumulates over layers: 1e-2 / 3e-2 (measured: 1-2e-3 / 8e-3-1.3e-2).
 * - Quantized types: llama.cpp quantizes activations to 8-bit blocks for its integer dot products
 *   (Q8_0, one scale per 32 values, for the legacy types; Q8_K, one scale per 256, for the K-quants);
 *   Spindle uses float activations against the same dequantized weights. An 8-bit step is 1/127 of
 *   the block's max, a few percent of a logit's scale (logits here have std ≈ 1) after two layers:
 *   1e-1 (measured: 3-7e-2). A layout mistake in any type gives differences of order 1.
 * A caller may widen a tolerance where llama.cpp itself rounds more (Gemma's GeGLU, below).
 * Greedy: llama.cpp generates 16 tokens greedily; at each step, given the same history (its tokens so
 * far), Spindle's argmax must be llama.cpp's token wherever Spindle's top-2 logit margin is above twice
 * the tolerance (so the errors above cannot flip it). Random weights give thin margins at some
 * steps; those are skipped, and callers check that enough steps were compared.
 */

const rng = new Rng(7);
export const randomPrompt = (n: number, vocab: number, bos: number) => [
  bos,
  ...Array.from({ length: n - 1 }, () => 3 + (rng.nextU32() % (vocab - 3))),
];

const TOLERANCE: Partial<Record<GGMLType, number>> = {
  [GGMLType.F32]: 1e-4,
  [GGMLType.F16]: 1e-2,
  [GGMLType.BF16]: 3e-2,
};
export const tolerance = (t: GGMLType) => TOLERANCE[t] ?? 1e-1;

export interface ParityResult {
  /** Greedy steps compared (margin above twice the tolerance), of 16. */
  compared: number;
  /** The largest |Δ log p| seen over the three prompts. */
  maxDiff: number;
}

/**
 * The tolerance for the f16 KV cache cases, on top of the weight type's: Spindle rounds K and V to
 * f16; llama.cpp (F16 cache, no flash attention) rounds them the same way and also rounds q and the
 * attention weights to f16 for its f16 matmuls (ggml's vec_dot_f16 takes both operands in f16):
 * about 5e-4 relative per product, through a few layers (measured: see the f16 cases).
 */
export const KV_F16_TOLERANCE = 1e-2;

/**
 * `type` sets the tolerance unless `tol` is given; `label` names it in failures. `kvType`: both
 * sides' KV cache (Spindle's f16 against llama.cpp's F16), default f32.
 */
export async function compareWithLlamaCpp(
  model: Model,
  type: GGMLType,
  label = typeName(type),
  tol = tolerance(type),
  kvType: KVCacheType = "f32",
): Promise<ParityResult> {
  const lk = kvType === "f16" ? "F16" : "F32";
  const V = model.config.vocabSize;
  const bos = model.tokenizer.bos ?? 1;
  let maxDiff = 0;
  for (const len of [1, 7, 64]) {
    const prompt = randomPrompt(len, V, bos);
    const ours = logSoftmax(logitsAfter(model, prompt, kvType));
    const theirs = (await llamaNextProbs(model.path, prompt, V, lk)).map(Math.log);
    const diff = maxAbsDiffWhere(ours, theirs, (i) => theirs[i]! > Math.log(1e-6));
    maxDiff = Math.max(maxDiff, diff);
    expect(diff, `${label} prompt of ${len}`).toBeLessThan(tol);
  }
  // Greedy for 16 steps, step by step on llama.cpp's own history.
  const prompt = randomPrompt(7, V, bos);
  const theirs = await llamaGreedy(model.path, prompt, 16, lk);
  let compared = 0;
  for (let i = 0; i < 16; i++) {
    const logits = logitsAfter(model, [...prompt, ...theirs.slice(0, i)], kvType);
    if (top2Margin(logits) < 2 * tol) continue;
    expect(argmax(logits), `${label} greedy step ${i}`).toBe(theirs[i]);
    compared++;
  }
  // Spindle's own greedy run (prefill, then one decode step at a time over the paged cache) agrees
  // up to the first thin step.
  const ours = generate(model, prompt, {
    maxTokens: 16,
    stopAtEog: false,
    sampling: { temperature: 0 },
    kvCacheType: kvType,
  }).tokens;
  for (let i = 0; i < 16; i++) {
    if (top2Margin(logitsAfter(model, [...prompt, ...ours.slice(0, i)], kvType)) < 2 * tol) break;
    expect(ours[i], `${label} own greedy step ${i}`).toBe(theirs[i]);
  }
  return { compared, maxDiff };
}
