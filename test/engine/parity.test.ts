import { describe, expect, it } from "vitest";
import { EngineCore, VirtualClock } from "../../src/engine/engine.js";
import { ModelRunner } from "../../src/engine/runner.js";
import type { BatchingMode } from "../../src/engine/scheduler.js";
import type { KVCacheType } from "../../src/kernels/kernels.js";
import { generate } from "../../src/model/generate.js";
import { DEFAULT_KV_CACHE_TYPE } from "../../src/model/kv-cache.js";
import { loadModel } from "../../src/model/model.js";
import { Rng } from "../../src/sampling/rng.js";
import { type Arrival, drive, expectNoLeaks } from "../helpers/engine.js";
import { STORIES_260K, testModel } from "../helpers/models.js";

/**
 * Parity: 32 concurrent greedy requests (prompts of 1–300 tokens, half of them sharing a 100-token
 * prefix; max_tokens 1–64; arriving at random steps) each produce exactly the tokens they produce
 * alone, in every batching mode, with prefix caching on and off, and with a KV cache so small that
 * sequences are preempted and recomputed; with the default f16 KV cache, and with an f32 one.
 */

const model = loadModel(testModel(STORIES_260K));
const rng = new Rng(11);
const V = model.config.vocabSize;
const bos = model.tokenizer.bos!;
const shared = Array.from({ length: 100 }, () => 3 + (rng.nextU32() % (V - 3)));
const arrivals: Arrival[] = Array.from({ length: 32 }, (_, i) => {
  const len = i === 0 ? 1 : 1 + (rng.nextU32() % 300);
  const body = Array.from({ length: len - 1 }, () => 3 + (rng.nextU32() % (V - 3)));
  const prompt = i % 2 === 0 && len > 101 ? [bos, ...shared, ...body.slice(100)] : [bos, ...body];
  return {
    at: rng.nextU32() % 40,
    spec: { id: `r${i}`, prompt, maxTokens: 1 + (rng.nextU32() % 64), sampling: { temperature: 0 } },
  };
});

// Each request alone, through the plain single-sequence path, per KV cache type.
const aloneByType = new Map<KVCacheType, Map<string, number[]>>();
function aloneWith(kvCacheType: KVCacheType): Map<string, number[]> {
  let m = aloneByType.get(kvCacheType);
  if (m === undefined) {
    m = new Map(
      arrivals.map(({ spec }) => [
        spec.id,
        generate(model, spec.prompt, { maxTokens: spec.maxTokens, sampling: { temperature: 0 }, kvCacheType })
          .tokens,
      ]),
    );
    aloneByType.set(kvCacheType, m);
  }
  return m;
}
const alone = aloneWith(DEFAULT_KV_CACHE_TYPE);

function run(
  batching: BatchingMode,
  prefixCaching: boolean,
  numBlocks: number,
  kvCacheType: KVCacheType = DEFAULT_KV_CACHE_TYPE,
) {
  const runner = new ModelRunner(model, numBlocks, undefined, undefined, kvCacheType);
  expect(runner.kv.type).toBe(kvCacheType);
  const want = aloneWith(kvCacheType);
  const engine = new EngineCore(runner, {
    batching,
    prefixCaching,
    tokenizer: model.tokenizer,
    clock: new VirtualClock(),
    maxNumBatchedTokens: 256,
    maxNumSeqs: 16,
    batchWindowMs: 20,
  });
  const r = drive(engine, arrivals);
  for (const { spec } of arrivals) expect(r.tokens.get(spec.id), spec.id).toEqual(want.get(spec.id));
  expectNoLeaks(engine);
  return { engine, r };
}

describe("engine parity with requests run alone (stories260K, greedy)", () => {
  it("the workload is mixed: short and long prompts, short and long outputs, shared prefixes", () => {
    const lens = arrivals.map(({ spec }) => spec.prompt.length);
    const outs = arrivals.map(({ spec }) => alone.get(spec.id)!.length);
    expect(Math.min(...lens)).toBe(1);
    expect(Math.max(...lens)).toBeGreaterThan(250);
    expect(Math.min(...outs)).toBeLessThan(5);
    expect(Math.max(...outs)).toBeGreaterThan(55);
  });

  for (const batching of ["continuous", "static", "window"] as const) {
    for (const prefixCaching of [true, false]) {
      it(`${batching}, prefix caching ${prefixCaching ? "on" : "off"}`, () => {
        const { engine, r } = run(batching, prefixCaching, 512);
        expect(r.maxBatch).toBeGreaterThan(1);
        if (prefixCaching) expect(engine.prefixStats.hits).toBeGreaterThanOrEqual(96);
        else expect(engine.prefixStats.hits).toBe(0);
      });
    }
  }

  for (const batching of ["continuous", "static", "window"] as const) {
    it(`${batching} with a KV cache small enough to force preemptions`, () => {
      const { engine } = run(batching, true, 30);
      expect(engine.scheduler.totalPreemptions).toBeGreaterThan(0);
    });
  }

  it("f32 KV cache: continuous with prefix caching, then with preemptions", () => {
    const cached = run("continuous", true, 512, "f32");
    expect(cached.engine.prefixStats.hits).toBeGreaterThanOrEqual(96);
    const small = run("continuous", true, 30, "f32");
    expect(small.engine.scheduler.totalPreemptions).toBeGreaterThan(0);
  });

  it("the runner's KV cache has the type asked for: f16 pools take half the bytes of f32 ones", () => {
    const f16 = new ModelRunner(model, 4, undefined, undefined, "f16").kv;
    const f32 = new ModelRunner(model, 4, undefined, undefined, "f32").kv;
    expect(f16.bytes * 2).toBe(f32.bytes);
    expect(f16.layers[0]!.k).toBeInstanceOf(Uint16Array);
    expect(f32.layers[0]!.k).toBeInstanceOf(Float32Array);
  });
});
