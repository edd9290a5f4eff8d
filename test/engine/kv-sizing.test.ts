import { describe, expect, it } from "vitest";
import { cappedContext, kvCacheBlocks } from "../../src/engine/kv-sizing.js";
import { SpindleError } from "../../src/errors.js";
import { KVCacheStorage } from "../../src/model/kv-cache.js";

/** Llama-3.2-1B's attention shape and trained context: 16 layers, 8 KV heads of 64, 131072 tokens. */
const LLAMA_1B = { nLayers: 16, nKVHeads: 8, headDim: 64, contextLength: 131072 };

describe("--ctx-size: the context cap and the KV pool it sizes", () => {
  it("caps the context at the model's, and refuses a size that is not a positive integer", () => {
    expect(cappedContext(2048, undefined)).toBe(2048);
    expect(cappedContext(2048, 512)).toBe(512);
    expect(cappedContext(2048, 8192)).toBe(2048);
    expect(() => cappedContext(2048, 0)).toThrow(SpindleError);
    expect(() => cappedContext(2048, 1.5)).toThrow(/positive integer/);
  });

  it("without a budget the pool holds at least one full context; never more than maxNumSeqs contexts", () => {
    const perBlock = KVCacheStorage.bytesPerToken(LLAMA_1B) * 16;
    const defaultFit = Math.floor((256 << 20) / perBlock);
    // No --ctx-size: the 256 MiB default, far less than one 128K context.
    expect(kvCacheBlocks(LLAMA_1B, {}, 64)).toBe(defaultFit);
    // 32K context for one sequence: more than the default budget, so the pool grows to hold it.
    expect(kvCacheBlocks(LLAMA_1B, { contextLength: 32768 }, 1)).toBe(2048);
    expect(kvCacheBlocks(LLAMA_1B, { contextLength: 32768 }, 8)).toBe(2048);
    // A small context: the default budget, capped at what maxNumSeqs contexts of it need.
    expect(kvCacheBlocks(LLAMA_1B, { contextLength: 1000 }, 1)).toBe(63);
    expect(kvCacheBlocks(LLAMA_1B, { contextLength: 1024 }, 64)).toBe(Math.min(defaultFit, 64 * 64));
    // An explicit budget wins over the one-context minimum.
    expect(kvCacheBlocks(LLAMA_1B, { contextLength: 32768, kvCacheBytes: 64 << 20 }, 1)).toBe(
      Math.floor((64 << 20) / perBlock),
    );
  });
});
