import { KVCacheStorage } from "../../src/model/kv-cache.js";
import type { Model } from "../../src/model/model.js";

/** The model's logits after `tokens`, from one forward pass over a fresh cache (contiguous block table). */
export function logitsAfter(model: Model, tokens: number[]): Float32Array {
  const kv = new KVCacheStorage(model.config, Math.ceil(tokens.length / 16));
  const blockTable = Array.from({ length: kv.numBlocks }, (_, i) => i);
  return model.transformer.forward(kv, [{ tokens, pos: 0, blockTable }])[0]!;
}
