import { describe, expect, it } from "vitest";
import { EngineCore, VirtualClock } from "../../src/engine/engine.js";
import { ModelRunner } from "../../src/engine/runner.js";
import type { BatchingMode } from "../../src/engine/scheduler.js";
import { generate } from "../../src/model/generate.js";
import { loadModel } from "../../src/model/model.js";
import { Rng } from "../../src/sampling/rng.js";
import { type Arrival, drive, expectNoLeaks } from "../helpers/engine.js";
import { STORIES_260K, testModel } from "../helpers/models.js";

/**
 * Parity: 32 concurrent greedy requests (prompts of 1–300 tokens, half of them sharing a 100-token
 * prefix; max_tokens 1–64; arriving at random steps) each produce exactly the tokens they produce
 * alone, in every batching mode, with prefix caching on and off, and with a KV cache so small that
 * sequences are preempted and recomputed.
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

// Each request alone, through the plain single-sequence path.
const alone = new Map(
  arrivals.map(({ spec }) => [
    spec.id,
    generate(model, spec.prompt, { maxTokens: spec.maxTokens, sampling: { temperature: 0 } }).tokens,
  ]),
);

function run(batching: BatchingMode, prefixCaching: boolean, numBlocks: number) {
  const engine = new EngineCore(new ModelRunner(model, numBlocks), {
    batching,
    prefixCaching,
    tokenizer: model.tokenizer,
    clock: new VirtualClock(),
    maxNumBatchedTokens: 256,
    maxNumSeqs: 16,
    batchWindowMs: 20,
  });
  const r = drive(engine, arrivals);
  for (const { spec } of arrivals) expect(r.tokens.get(spec.id), spec.id).toEqual(alone.get(spec.id));
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
});
