import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { EngineCore, VirtualClock } from "../../src/engine/engine.js";
import { checkSameVocabulary, ModelDrafter, measureDecodeMs } from "../../src/engine/model-drafter.js";
import { ModelRunner } from "../../src/engine/runner.js";
import type { SpeculativeOptions } from "../../src/engine/speculation.js";
import { readGGUF } from "../../src/gguf/reader.js";
import { GGMLType } from "../../src/gguf/types.js";
import { meta, withMetadata, writeGGUF } from "../../src/gguf/writer.js";
import { loadModel, type Model } from "../../src/model/model.js";
import { SHAPES, synthModel } from "../../src/model/synth.js";
import type { RequestSpec } from "../../src/protocol/request.js";
import {
  drive,
  expectNoLeaks,
  greedySpec as spec,
  stepUntilDrafted,
  withAndWithoutSpeculation,
} from "../helpers/engine.js";
import { STORIES_260K, testModel, VOCAB_SPM } from "../helpers/models.js";
import { tempDir } from "../helpers/tmp.js";

/**
 * Speculative decoding with drafts from a draft model (model-drafter.ts): stories260K is the target;
 * drafts come from stories260K itself (every draft token accepted) or from a random tiny model with
 * stories260K's vocabulary (few accepted). Either way the output is the plain engine's, token for
 * token, and the draft model's cache is given back.
 */

const dir = tempDir("spindle-draft-");
const targetPath = testModel(STORIES_260K);
const model = loadModel(targetPath);
const tok = model.tokenizer;
const kernels = model.transformer.kernels;

/** A random tiny llama with stories260K's vocabulary. */
function randomDraft(name: string, vocabPath = targetPath): string {
  const out = join(dir, name);
  synthModel({ arch: "llama", shape: SHAPES.tiny!, type: GGMLType.F32, vocabPath, out, seed: 7 });
  return out;
}
const selfDraft = loadModel(targetPath, { kernels });
const random = loadModel(randomDraft("random-draft.gguf"), { kernels });

// Drafting and verifying at no cost: drafts as long as they can be, the most work for the rollback paths.
const draftOpts: SpeculativeOptions = {
  method: "draft",
  numTokens: 4,
  maxBatch: 64,
  tokenCost: 0,
  draftTokenCost: 0,
};

const drafterOf = (m: Model, numBlocks = 256) => new ModelDrafter(m, { numBlocks, tokenCost: 1 });

const engineWith = (drafter?: ModelDrafter, numBlocks = 256, maxNumBatchedTokens = 64) =>
  new EngineCore(new ModelRunner(model, numBlocks), {
    tokenizer: tok,
    clock: new VirtualClock(),
    maxNumBatchedTokens,
    speculative: drafter ? draftOpts : undefined,
    drafter,
  });

const prompt = (text: string) => [tok.bos!, ...tok.encode(text)];
const COPY = "Tom has a red ball. Tom has a red ball. Tom has a red ball. Tom has";
const FRESH = "Once upon a time, in a big forest, there lived a little bird named";

function expectDrafterEmpty(d: ModelDrafter): void {
  expect(d.numSequences).toBe(0);
  expect(d.numFreeBlocks).toBe(d.numBlocks);
}

/** Runs the requests to the end without speculation and with the drafter; nothing leaked either way. */
function both(
  drafter: ModelDrafter,
  specs: RequestSpec[],
  opts: { numBlocks?: number; budget?: number; at?: number[] } = {},
) {
  const plain = engineWith(undefined, opts.numBlocks, opts.budget);
  const r = withAndWithoutSpeculation(
    plain,
    engineWith(drafter, opts.numBlocks, opts.budget),
    specs,
    opts.at,
  );
  expectDrafterEmpty(drafter);
  return r;
}

describe("drafts from a draft model (target stories260K)", () => {
  it("with the target itself as the draft model: every draft token accepted, the same tokens", () => {
    const specs = [
      spec("copy", prompt(COPY), 48),
      spec("fresh", prompt(FRESH), 48),
      spec("m3", prompt(FRESH), 3),
    ];
    const r = both(drafterOf(selfDraft), specs);
    for (const s of specs) {
      expect(r.spec.tokens.get(s.id), s.id).toEqual(r.plain.tokens.get(s.id));
      expect(r.spec.text.get(s.id), s.id).toEqual(r.plain.text.get(s.id));
      expect(r.spec.finish.get(s.id)!.reason).toBe(r.plain.finish.get(s.id)!.reason);
    }
    expect(r.stats.drafts).toBeGreaterThan(0);
    expect(r.stats.acceptedTokens).toBe(r.stats.draftTokens);
    expect(r.stats.acceptedPerPosition[3]).toBeGreaterThan(0);
    // Up to 5 tokens a step instead of 1.
    expect(r.steps[1]! * 2).toBeLessThan(r.steps[0]!);
  });

  it("catches up only on what it has not computed: each position's K/V once, plus the rejected", () => {
    for (const draft of [selfDraft, random]) {
      const fed: number[] = [];
      const forward = draft.transformer.forward.bind(draft.transformer);
      draft.transformer.forward = (kv, batch, opts) => {
        for (const b of batch) fed.push(b.tokens.length);
        return forward(kv, batch, opts);
      };
      try {
        const p = prompt(COPY);
        const r = both(drafterOf(draft), [spec("c", p, 40)]);
        const total = p.length + r.spec.tokens.get("c")!.length;
        const s = r.stats;
        // The first chunk is the prompt and the token sampled after it; then every fed token is a
        // sequence token (each once) or a rejected draft token (its position computed again).
        expect(fed[0]).toBe(p.length + 1);
        const sum = fed.reduce((a, b) => a + b, 0);
        expect(sum).toBeLessThanOrEqual(total + (s.draftTokens - s.acceptedTokens));
        expect(sum).toBeGreaterThanOrEqual(p.length + s.acceptedTokens);
      } finally {
        draft.transformer.forward = forward;
      }
    }
  });

  it("with a random draft model of the same vocabulary: few accepted, the same tokens", () => {
    const specs = [spec("copy", prompt(COPY), 40), spec("fresh", prompt(FRESH), 40)];
    const r = both(drafterOf(random), specs);
    for (const s of specs) expect(r.spec.tokens.get(s.id), s.id).toEqual(r.plain.tokens.get(s.id));
    expect(r.stats.drafts).toBeGreaterThan(0);
    expect(r.stats.acceptedTokens).toBeLessThan(r.stats.draftTokens / 2);
  });

  it("seeded sampling (penalties, logprobs) gives the same tokens with and without drafts", () => {
    const specs = [1, 2, 3, 4].map((seed) =>
      spec(`s${seed}`, prompt(COPY), 32, {
        sampling: { temperature: 0.7, topP: 0.95, seed, logprobs: 2, frequencyPenalty: seed % 2 ? 0.3 : 0 },
      }),
    );
    for (const draft of [selfDraft, random]) {
      const r = both(drafterOf(draft), specs);
      for (const s of specs) expect(r.spec.tokens.get(s.id), s.id).toEqual(r.plain.tokens.get(s.id));
      expect(r.stats.drafts).toBeGreaterThan(0);
    }
  });

  it("under preemption and a tight budget, with staggered arrivals and a small draft pool, nothing changes or leaks", () => {
    const specs = [COPY, FRESH, COPY, "Tom and Tom and Tom and", FRESH].map((t, i) =>
      spec(`p${i}`, prompt(t), 60),
    );
    // A draft pool too small for all of them: some sequences draft nothing for a while.
    const drafter = drafterOf(selfDraft, 10);
    const r = both(drafter, specs, { numBlocks: 14, budget: 16, at: [0, 0, 3, 5, 9] });
    for (const s of specs) expect(r.spec.tokens.get(s.id), s.id).toEqual(r.plain.tokens.get(s.id));
    expect(r.engine.scheduler.totalPreemptions).toBeGreaterThan(0);
    expect(r.stats.acceptedTokens).toBe(r.stats.draftTokens);
    expect(r.stats.acceptedTokens).toBeGreaterThan(0);
  });

  it("an abort in the middle of drafting frees the draft model's blocks too", () => {
    const drafter = drafterOf(random);
    const engine = engineWith(drafter);
    engine.add(spec("a", prompt(COPY), 200));
    engine.add(spec("b", prompt(FRESH), 200));
    expect(stepUntilDrafted(engine)).toBeGreaterThan(0);
    expect(drafter.numSequences).toBe(2);
    expect(drafter.numFreeBlocks).toBeLessThan(drafter.numBlocks);
    engine.abort("a");
    expect(drafter.numSequences).toBe(1);
    engine.abort("b");
    engine.step();
    expectNoLeaks(engine);
    expectDrafterEmpty(drafter);
  });

  it("a fresh engine taking the drafter over frees what the old one's sequences held", () => {
    const drafter = drafterOf(random);
    const engine = engineWith(drafter);
    engine.add(spec("a", prompt(COPY), 200));
    for (let i = 0; i < 5; i++) engine.step();
    expect(drafter.numSequences).toBe(1);
    engineWith(drafter);
    expectDrafterEmpty(drafter);
  });

  it("its token cost joins the policy's: a draft model as slow as the target only probes, then pauses", () => {
    const drafter = drafterOf(selfDraft);
    const engine = new EngineCore(new ModelRunner(model, 256), {
      tokenizer: tok,
      clock: new VirtualClock(),
      // The default verification cost (0.6) plus a draft token as dear as a decode step: never pays.
      speculative: { method: "draft", numTokens: 4 },
      drafter,
    });
    drive(engine, [{ at: 0, spec: spec("c", prompt(COPY), 60) }]);
    // Every draft accepted, yet not worth its cost (0.6 + 1 per token): one-token probes, 4 at the
    // start and 4 after the 16-step pause, then a 32-step pause.
    const s = engine.speculator!.stats;
    expect(s.drafts).toBe(8);
    expect(s.draftTokens).toBe(8);
    expect(s.acceptedTokens).toBe(8);
    expect(measureDecodeMs(random)).toBeGreaterThan(0);
  });
});

describe("the draft model's vocabulary", () => {
  it("must be the target's: the same size and the same token texts, or a clear refusal naming both files", () => {
    expect(() => checkSameVocabulary(model, random)).not.toThrow();
    const other = loadModel(randomDraft("spm-draft.gguf", testModel(VOCAB_SPM)), { kernels });
    expect(() => checkSameVocabulary(model, other)).toThrow(
      new RegExp(
        `draft model .*spm-draft\\.gguf.* vocabulary of the model .*${STORIES_260K}.*32000 tokens against 512`,
      ),
    );
    // Same size, one token's text changed.
    const src = readGGUF(targetPath);
    const tokens = [...(src.getArray("tokenizer.ggml.tokens") as string[])];
    tokens[300] = "▁changed";
    const vocabPath = join(dir, "vocab-changed.gguf");
    writeGGUF(vocabPath, withMetadata(src.metadata, { "tokenizer.ggml.tokens": meta.strings(tokens) }), []);
    src.close();
    const changed = loadModel(randomDraft("changed-draft.gguf", vocabPath), { kernels });
    expect(() => checkSameVocabulary(model, changed)).toThrow(/changed-draft\.gguf.*token 300 is "▁changed"/);
  });
});
