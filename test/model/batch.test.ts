import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { GGMLType } from "../../src/gguf/types.js";
import type { KVCacheType } from "../../src/kernels/kernels.js";
import type { BatchSeq } from "../../src/model/forward.js";
import { DEFAULT_KV_CACHE_TYPE, KVCacheStorage } from "../../src/model/kv-cache.js";
import { loadModel, type Model } from "../../src/model/model.js";
import { SHAPES, synthModel } from "../../src/model/synth.js";
import { Rng } from "../../src/sampling/rng.js";
import { logitsAfter } from "../helpers/forward.js";
import { STORIES_260K, testModel } from "../helpers/models.js";
import { tempDir } from "../helpers/tmp.js";

const dir = tempDir();

function maxDiff(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/**
 * Four sequences share one paged cache with scattered, interleaved block ids and go through two
 * batched steps that mix a decode token, a fresh prefill, a second prefill chunk and a long prefill.
 * Each sequence's logits must equal those it gets alone (one forward over its whole history).
 */
function checkBatch(model: Model, kvType: KVCacheType) {
  const rng = new Rng(3);
  const V = model.config.vocabSize;
  const toks = (n: number) => Array.from({ length: n }, () => 3 + (rng.nextU32() % (V - 3)));
  const hist = { a: [1, ...toks(20)], b: [1, ...toks(36)], c: [1, ...toks(25)], d: [1, ...toks(5)] };
  const kv = new KVCacheStorage(model.config, 64, 16, undefined, kvType);
  // Scatter blocks: a permutation of 0..63 dealt out to the sequences.
  const perm = Array.from({ length: 64 }, (_, i) => i).sort(() => (rng.nextU32() & 1 ? 1 : -1));
  const tables = { a: perm.slice(0, 4), b: perm.slice(4, 10), c: perm.slice(10, 14), d: perm.slice(14, 16) };

  // Step 1: a prefills its first 20, c its first 16, d all but its last token.
  const s1: BatchSeq[] = [
    { tokens: hist.a.slice(0, 20), pos: 0, blockTable: tables.a },
    { tokens: hist.c.slice(0, 16), pos: 0, blockTable: tables.c, logits: "none" },
    { tokens: hist.d.slice(0, 5), pos: 0, blockTable: tables.d },
  ];
  const r1 = model.transformer.forward(kv, s1);
  expect(r1[1]).toBeUndefined();
  expect(maxDiff(r1[0]!, logitsAfter(model, hist.a.slice(0, 20), kvType))).toBeLessThan(1e-4);

  // Step 2: a decodes one token, b prefills everything, c its second chunk, d decodes.
  const s2: BatchSeq[] = [
    { tokens: hist.a.slice(20, 21), pos: 20, blockTable: tables.a },
    { tokens: hist.b, pos: 0, blockTable: tables.b, logits: "all" },
    { tokens: hist.c.slice(16), pos: 16, blockTable: tables.c },
    { tokens: hist.d.slice(5), pos: 5, blockTable: tables.d },
  ];
  const r2 = model.transformer.forward(kv, s2);
  expect(maxDiff(r2[0]!, logitsAfter(model, hist.a, kvType))).toBeLessThan(1e-4);
  expect(r2[1]!.length).toBe(hist.b.length * V);
  // "all" gives every position's logits: the last row and a middle row both match.
  expect(maxDiff(r2[1]!.subarray((hist.b.length - 1) * V), logitsAfter(model, hist.b, kvType))).toBeLessThan(
    1e-4,
  );
  expect(
    maxDiff(r2[1]!.subarray(9 * V, 10 * V), logitsAfter(model, hist.b.slice(0, 10), kvType)),
  ).toBeLessThan(1e-4);
  expect(maxDiff(r2[2]!, logitsAfter(model, hist.c, kvType))).toBeLessThan(1e-4);
  expect(maxDiff(r2[3]!, logitsAfter(model, hist.d, kvType))).toBeLessThan(1e-4);
}

describe("batched forward: a sequence's logits inside a mixed batch equal its logits alone", () => {
  it("stories260K (F32), f32 KV cache", () => checkBatch(loadModel(testModel(STORIES_260K)), "f32"));
  it("stories260K (F32), f16 KV cache", () => checkBatch(loadModel(testModel(STORIES_260K)), "f16"));

  it("synthesized Q4_K model", () => {
    const out = join(dir, "batch-q4k.gguf");
    synthModel({
      arch: "llama",
      shape: SHAPES.k256!,
      type: GGMLType.Q4_K,
      vocabPath: testModel(STORIES_260K),
      out,
    });
    checkBatch(loadModel(out), DEFAULT_KV_CACHE_TYPE);
  });

  it("synthesized mixture of experts (qwen3moe Q8_0, top-4 of 16): tokens grouped by expert across sequences", () => {
    const out = join(dir, "batch-moe.gguf");
    const shape = { ...SHAPES.k256!, experts: { count: 16, used: 4, ffnDim: 128 } };
    synthModel({ arch: "qwen3moe", shape, type: GGMLType.Q8_0, vocabPath: testModel(STORIES_260K), out });
    checkBatch(loadModel(out), DEFAULT_KV_CACHE_TYPE);
  });

  it("transient logits: the same values, in one buffer of the kernels' memory that the next call reuses", () => {
    const model = loadModel(testModel(STORIES_260K));
    const V = model.config.vocabSize;
    const kv = new KVCacheStorage(model.config, 8);
    const step = (transientLogits: boolean, tokens: number[], pos: number) =>
      model.transformer.forward(
        kv,
        [
          { tokens, pos, blockTable: [0, 1, 2, 3] },
          { tokens: tokens.slice(0, 1), pos, blockTable: [4, 5, 6, 7] },
        ],
        { transientLogits },
      );
    const fresh = step(false, [1, 20, 30], 0).map((l) => l!.slice());
    const a = step(true, [1, 20, 30], 0);
    expect(a.map((l) => l!.length)).toEqual([V, V]);
    expect(a.map((l) => [...l!])).toEqual(fresh.map((l) => [...l]));
    expect(a[0]!.buffer).toBeInstanceOf(SharedArrayBuffer); // the WebAssembly kernels' memory
    const kept = a[1]!.slice();
    const b = step(true, [40], 3);
    expect(b[0]!.buffer).toBe(a[0]!.buffer);
    expect(b[0]!.byteOffset).toBe(a[0]!.byteOffset);
    expect([...a[1]!]).toEqual([...b[1]!]); // overwritten in place
    expect([...b[1]!]).not.toEqual([...kept]);
    kv.dispose();
  });

  it("rejects a block table too short for the tokens", () => {
    const model = loadModel(testModel(STORIES_260K));
    const kv = new KVCacheStorage(model.config, 4);
    expect(() =>
      model.transformer.forward(kv, [{ tokens: new Array(17).fill(5), pos: 0, blockTable: [0] }]),
    ).toThrow(/block table/);
  });
});
