import type { KVCacheType } from "../../src/kernels/kernels.js";
import { DEFAULT_BLOCK_SIZE, KVCacheStorage } from "../../src/model/kv-cache.js";
import type { Model } from "../../src/model/model.js";

/**
 * The model's logits after `tokens`, from one forward pass over a fresh cache (contiguous block
 * table) of `kvType` (default f32: the plain float arithmetic the llama.cpp comparisons start from).
 */
export function logitsAfter(model: Model, tokens: number[], kvType: KVCacheType = "f32"): Float32Array {
  const n = Math.ceil(tokens.length / DEFAULT_BLOCK_SIZE);
  const kv = new KVCacheStorage(model.config, n, DEFAULT_BLOCK_SIZE, undefined, kvType);
  const blockTable = Array.from({ length: kv.numBlocks }, (_, i) => i);
  return model.transformer.forward(kv, [{ tokens, pos: 0, blockTable }])[0]!;
}
