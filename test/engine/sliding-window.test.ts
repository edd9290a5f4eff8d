import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { EngineCore, VirtualClock } from "../../src/engine/engine.js";
import { ModelRunner } from "../../src/engine/runner.js";
import type { SpeculativeOptions } from "../../src/engine/speculation.js";
import { GGMLType } from "../../src/gguf/types.js";
import { generate } from "../../src/model/generate.js";
import { slidingWindowOf } from "../../src/model/kv-cache.js";
import { loadModel } from "../../src/model/model.js";
import { synthModel } from "../../src/model/synth.js";
import { runCli } from "../helpers/cli.js";
import { drive, expectNoLeaks, greedySpec, withAndWithoutSpeculation } from "../helpers/engine.js";
import { llamaNextProbs } from "../helpers/llamacpp.js";
import { GEMMA_TEST_SHAPE, testModel, VOCAB_SPM } from "../helpers/models.js";
import { randomPrompt, tolerance } from "../helpers/parity.js";
import { engineStats, startTestServer } from "../helpers/server.js";
import { tempDir } from "../helpers/tmp.js";

/**
 * A Gemma 3 model's sliding-window layers in the engine: they keep their K/V in a pool of their own
 * (BlockManager's WindowPool), from which every sequence gives back, after each step, the blocks its
 * window has left behind. A 6-layer Gemma-3-shape model (5 sliding layers of window 16 to 1 global),
 * 4-token blocks and 8-token prefill chunks, so windows are crossed every few steps and prefill
 * chunks straddle them.
 */

const dir = tempDir();
const path = join(dir, "gemma3-window16.gguf");
synthModel({
  arch: "gemma3",
  shape: { ...GEMMA_TEST_SHAPE, nLayers: 6, ropeFreqBase: 1e6 },
  type: GGMLType.F32,
  vocabPath: testModel(VOCAB_SPM),
  out: path,
  tied: true,
});
const model = loadModel(path);
const V = model.config.vocabSize;
const bos = model.tokenizer.bos ?? 1;
const BLOCK = 4;
/** llama.cpp's GeGLU rounds through F16 (see arch-parity.test.ts): the F16 weight type's bound. */
const GELU_F16 = tolerance(GGMLType.F16);

/** An engine whose sliding-window pool has `windowBlocks` blocks of 4 tokens (the other pool 64). */
const engineWith = (windowBlocks: number, speculative?: SpeculativeOptions) =>
  new EngineCore(new ModelRunner(model, 64, BLOCK, undefined, "f32", windowBlocks), {
    tokenizer: model.tokenizer,
    clock: new VirtualClock(),
    maxNumBatchedTokens: 8,
    speculative,
  });

const alone = (prompt: number[], n: number) =>
  generate(model, prompt, { maxTokens: n, stopAtEog: false, sampling: { temperature: 0 } }).tokens;

describe("sliding-window layers' KV pool (Gemma)", () => {
  it("the model has one: window 16 on 5 of 6 layers", () => {
    expect(slidingWindowOf(model.config)).toBe(16);
    expect(engineWith(12).blocks.windowPool).toMatchObject({ window: 16, numBlocks: 12 });
  });

  it("an 80-token sequence runs in a 48-token window pool, with llama.cpp's log-probabilities", async () => {
    // 20 blocks of context; the window pool has 12: without giving blocks back it could not finish.
    // Sampled (temperature 1, seeded): random weights make greedy repeat one token, which would
    // hide a wrong window.
    const prompt = randomPrompt(40, V, bos);
    const sampling = { temperature: 1, seed: 11 };
    const engine = engineWith(12);
    engine.add(greedySpec("a", prompt, 40, { stopAtEog: false, sampling: { ...sampling, logprobs: 1 } }));
    const ours: number[] = [];
    const logprobs: number[] = [];
    let leastFree = Number.POSITIVE_INFINITY;
    let gaveBack = false;
    while (engine.hasWork()) {
      for (const e of engine.step()) {
        ours.push(...e.tokens);
        logprobs.push(...(e.logprobs ?? []).map((l) => l.logprob));
      }
      leastFree = Math.min(leastFree, engine.blocks.windowPool!.numFree);
      gaveBack ||= engine.get("a")?.windowTable.includes(-1) ?? false;
    }
    expect(ours).toHaveLength(40);
    expect(new Set(ours).size).toBeGreaterThan(20);
    expect(gaveBack).toBe(true);
    // At most a window (16 tokens: 5 blocks) and a chunk (8: 3 blocks) held at once.
    expect(12 - leastFree).toBeLessThanOrEqual(8);
    expectNoLeaks(engine);
    // The same run over one whole-context block table (generate), token for token...
    expect(ours).toEqual(generate(model, prompt, { maxTokens: 40, stopAtEog: false, sampling }).tokens);
    // ...and each sampled token's log-probability is llama.cpp's, at points well past the window.
    for (const i of [0, 13, 26, 39]) {
      const theirs = await llamaNextProbs(model.path, [...prompt, ...ours.slice(0, i)], V);
      expect(Math.abs(Math.log(theirs[ours[i]!]!) - logprobs[i]!), `token ${i}`).toBeLessThan(GELU_F16);
    }
  });

  it("concurrent sequences share it; a prefix hit needs the window's blocks, and reuses them", () => {
    const shared = randomPrompt(40, V, bos);
    const specs = [0, 1, 2].map((i) =>
      greedySpec(`s${i}`, [...shared, ...randomPrompt(6 + i, V, bos).slice(1)], 24, { stopAtEog: false }),
    );
    const engine = engineWith(24);
    const r = drive(engine, [
      { at: 0, spec: specs[0]! },
      { at: 12, spec: specs[1]! },
      { at: 13, spec: specs[2]! },
    ]);
    for (const s of specs) expect(r.tokens.get(s.id), s.id).toEqual(alone(s.prompt, 24));
    // 40 shared tokens: 10 blocks, all cached in the full pool; the window pool still holds the
    // last blocks the window of position 40 needs (s0 gave back only those before them).
    expect(r.finish.get("s1")!.cachedTokens).toBe(40);
    expect(r.finish.get("s2")!.cachedTokens).toBe(40);
    expectNoLeaks(engine);
    // Once those window blocks are evicted, a hit stops where the window pool's blocks stop.
    const small = engineWith(9);
    drive(small, [{ at: 0, spec: specs[0]! }]);
    drive(small, [{ at: 0, spec: greedySpec("x", randomPrompt(60, V, bos), 4) }]);
    const again = drive(small, [{ at: 0, spec: { ...specs[1]!, id: "again" } }]);
    expect(again.finish.get("again")!.cachedTokens).toBeLessThan(40);
    expect(again.tokens.get("again")).toEqual(alone(specs[1]!.prompt, 24));
    expectNoLeaks(small);
  });

  it("speculative decoding's rolled-back drafts give back window blocks too: same greedy output", () => {
    // A prompt that repeats itself, so prompt lookup drafts at every step (random weights reject most).
    const unit = randomPrompt(10, V, bos).slice(1);
    const prompt = [bos, ...unit, ...unit, ...unit, ...unit];
    const ngram: SpeculativeOptions = { method: "ngram", numTokens: 4, maxBatch: 64, tokenCost: 0 };
    const specs = [greedySpec("p", prompt, 40, { stopAtEog: false })];
    const r = withAndWithoutSpeculation(engineWith(14), engineWith(14, ngram), specs);
    expect(r.stats.draftTokens).toBeGreaterThan(0);
    expect(r.spec.tokens.get("p")).toEqual(r.plain.tokens.get("p"));
    expect(r.plain.tokens.get("p")).toEqual(alone(prompt, 40));
  });

  it("served: /api/ps shows both pools, and a request that crosses windows leaves no block held", async () => {
    const srv = await startTestServer({
      backend: {
        kind: "local",
        modelPath: path,
        numBlocks: 64,
        blockSize: BLOCK,
        options: { maxNumSeqs: 2, maxNumBatchedTokens: 8 },
      },
    });
    try {
      const ps = (await (await fetch(`${srv.url}/api/ps`)).json()) as {
        models: { kv_cache: { blocks: number; sliding_window?: { window: number; blocks: number } } }[];
      };
      // 2 sequences: (⌈15/4⌉ + 2) blocks each, and an 8-token step (2 blocks).
      expect(ps.models[0]!.kv_cache).toMatchObject({
        blocks: 64,
        sliding_window: { window: 16, blocks: 14 },
      });
      const ps2 = await runCli(["ps", "--url", srv.url]);
      expect(ps2.stdout).toMatch(/\(64 blocks, 256 tokens; window 16: 14 blocks\)/);
      // 90 tokens are 23 blocks: more than the 14 of the window pool.
      const res = await fetch(`${srv.url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ prompt: randomPrompt(60, V, bos), max_tokens: 30, ignore_eos: true }),
      });
      expect(res.status).toBe(200);
      expect(((await res.json()) as { usage: { completion_tokens: number } }).usage.completion_tokens).toBe(
        30,
      );
      const stats = await engineStats(srv);
      expect(stats.windowPool).toEqual({ window: 16, numBlocks: 14, freeBlocks: 14 });
      expect(stats.kvUsage).toBe(0);
    } finally {
      await srv.close();
    }
  });
});
