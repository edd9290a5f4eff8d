import { resolveModel } from "../../src/model/resolve.js";
import type { SynthShape } from "../../src/model/synth.js";

/** Test models come through the product's resolver; vitest.config.ts points SPINDLE_MODELS at ../shared/models. */
export function testModel(name: string): string {
  return resolveModel(name);
}

export const STORIES_260K = "stories260K.gguf";
export const TINY_RANDOM = "llama-2-tiny-random.gguf";
export const VOCAB_SPM = "vocab/ggml-vocab-llama-spm.gguf";
export const VOCAB_GPT2 = "vocab/ggml-vocab-gpt-2.gguf";
export const VOCAB_PHI3 = "vocab/ggml-vocab-phi-3.gguf";

/**
 * The Gemma test models' shape: head size 64 with 4 heads (q width 256 ≠ dim 128, as Gemma's
 * 256-wide heads are), windows of 16 tokens, so short prompts and a few greedy steps cross them.
 */
export const GEMMA_TEST_SHAPE: SynthShape = {
  dim: 128,
  nLayers: 2,
  nHeads: 4,
  nKVHeads: 2,
  headDim: 64,
  ffnDim: 256,
  contextLength: 256,
  rmsEps: 1e-6,
  slidingWindow: 16,
};
