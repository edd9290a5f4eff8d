import { resolveModel } from "../../src/model/resolve.js";

/** Test models come through the product's resolver; vitest.config.ts points SPINDLE_MODELS at ../shared/models. */
export function testModel(name: string): string {
  return resolveModel(name);
}

export const STORIES_260K = "stories260K.gguf";
export const TINY_RANDOM = "llama-2-tiny-random.gguf";
export const VOCAB_SPM = "vocab/ggml-vocab-llama-spm.gguf";
export const VOCAB_GPT2 = "vocab/ggml-vocab-gpt-2.gguf";
export const VOCAB_PHI3 = "vocab/ggml-vocab-phi-3.gguf";
