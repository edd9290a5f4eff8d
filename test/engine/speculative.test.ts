import { describe, expect, it } from "vitest";
import { EngineCore, VirtualClock } from "../../src/engine/engine.js";
import { proposeNgramDraft } from "../../src/engine/ngram-drafter.js";
import { ModelRunner } from "../../src/engine/runner.js";
import { Sequence } from "../../src/engine/sequence.js";
import { SimRunner } from "../../src/engine/sim-runner.js";
import { expectedTokens, type SpeculativeOptions, Speculator } from "../../src/engine/speculation.js";
import { loadModel } from "../../src/model/model.js";
import type { RequestSpec } from "../../src/protocol/request.js";
import {
  drive,
  expectNoLeaks,
  greedySpec as spec,
  stepUntilDrafted,
  withAndWithoutSpeculation,
} from "../helpers/engine.js";
import { STORIES_260K, testModel } from "../helpers/models.js";

const model = loadModel(testModel(STORIES_260K));
const tok = model.tokenizer;
// Verifying at no cost: drafts as long as they can be, the most work for the rollback paths.
const ngram: SpeculativeOptions = { method: "ngram", numTokens: 4, maxBatch: 64, tokenCost: 0 };

const engineWith = (speculative?: SpeculativeOptions, numBlocks = 256, maxNumBatchedTokens = 64) =>
  new EngineCore(new ModelRunner(model, numBlocks), {
    tokenizer: tok,
    clock: new VirtualClock(),
    maxNumBatchedTokens,
    speculative,
  });

const prompt = (text: string) => [tok.bos!, ...tok.encode(text)];
/** Text the model copies (it repeats itself), and text it does not. */
const COPY = "Tom has a red ball. Tom has a red ball. Tom has a red ball. Tom has a red ball. Tom has";
const FRESH = "Once upon a time, in a big forest, there lived a little bird named";

describe("prompt-lookup drafting", () => {
  it("proposes what followed the most recent occurrence of the longest matching suffix", () => {
    // Suffix [7, 8] occurred at 1..2 (followed by 9, 4) and 5..6 (followed by 1); [8] alone also at 3.
    expect(proposeNgramDraft([5, 7, 8, 9, 4, 7, 8, 1, 2, 7, 8], 2)).toEqual([1, 2]);
    expect(proposeNgramDraft([1, 2, 3, 4], 3)).toEqual([]);
    expect(proposeNgramDraft([3, 9, 9, 3], 2)).toEqual([9, 9]);
    // A match running into the suffix continues periodically.
    expect(proposeNgramDraft([1, 2, 1, 2], 5)).toEqual([1, 2, 1, 2, 1]);
    expect(proposeNgramDraft([1, 2, 3, 1], 0)).toEqual([]);
  });
});

describe("the draft length per sequence", () => {
  const looping = () => new Sequence({ id: "s", prompt: [1, 2, 3, 1, 2, 3, 1, 2, 3], maxTokens: 100 }, 0);

  it("grows while drafts are accepted, shrinks after rejections, pauses when acceptance stays low", () => {
    const sp = new Speculator({ method: "ngram", numTokens: 4, tokenCost: 0.6 });
    const seq = looping();
    expect(sp.propose(seq, 100)).toHaveLength(1); // the prior (2 of 3 accepted) pays for one token
    const lengths: number[] = [];
    for (let i = 0; i < 12; i++) {
      const d = sp.propose(seq, 100);
      lengths.push(d.length);
      sp.record(seq, d.length, d.length);
    }
    expect(lengths[0]).toBeLessThan(4);
    expect(lengths.at(-1)).toBe(4);
    expect([...lengths].sort((a, b) => a - b)).toEqual(lengths); // never shrank
    let rejections = 0;
    while (sp.propose(seq, 100).length === 4 && rejections < 20) {
      sp.record(seq, 4, 0);
      rejections++;
    }
    expect(rejections).toBeGreaterThan(0);
    expect(rejections).toBeLessThanOrEqual(8);
    let steps = 0;
    while (sp.propose(seq, 100).length > 0 && steps++ < 50) sp.record(seq, 1, 0);
    expect(steps).toBeLessThan(50);
    // Paused: 16 steps without a draft, then it tries again from the prior.
    const paused = Array.from({ length: 16 }, () => sp.propose(seq, 100).length);
    expect(paused).toEqual(new Array(16).fill(0));
    expect(sp.propose(seq, 100)).toHaveLength(1);
    // The room left (max_tokens, context) caps every draft.
    expect(new Speculator({ method: "ngram", numTokens: 4 }).propose(looping(), 0)).toEqual([]);
    expect(sp.stats.acceptedPerPosition[3]).toBeGreaterThan(0);
  });

  it("expects (1 − a^(k+1)) / (1 − a) tokens from k drafted", () => {
    expect(expectedTokens(0, 4)).toBe(1);
    expect(expectedTokens(1, 4)).toBe(5);
    expect(expectedTokens(0.5, 2)).toBeCloseTo(1.75);
  });
});

/** Runs the requests to the end with and without speculation; both engines end with nothing leaked. */
function both(specs: RequestSpec[], opts: { numBlocks?: number; budget?: number; at?: number[] } = {}) {
  const plain = engineWith(undefined, opts.numBlocks, opts.budget);
  return withAndWithoutSpeculation(plain, engineWith(ngram, opts.numBlocks, opts.budget), specs, opts.at);
}

describe("speculative decoding in the engine (stories260K)", () => {
  it("greedy output is identical with and without speculation, and copying text accepts drafts", () => {
    const r = both([spec("copy", prompt(COPY), 48), spec("fresh", prompt(FRESH), 48)]);
    for (const id of ["copy", "fresh"]) {
      expect(r.spec.tokens.get(id)).toEqual(r.plain.tokens.get(id));
      expect(r.spec.text.get(id)).toEqual(r.plain.text.get(id));
      expect(r.spec.finish.get(id)!.reason).toBe(r.plain.finish.get(id)!.reason);
      expect(r.spec.finish.get(id)!.completionTokens).toBe(r.plain.finish.get(id)!.completionTokens);
    }
    expect(r.stats.drafts).toBeGreaterThan(0);
    expect(r.stats.acceptedTokens).toBeGreaterThan(0);
    expect(r.stats.acceptedTokens).toBeLessThan(r.stats.draftTokens); // some were rejected, and rolled back
    expect(r.stats.acceptedPerPosition[0]).toBeGreaterThanOrEqual(r.stats.acceptedPerPosition[1]!);
    expect(r.steps[1]).toBeLessThan(r.steps[0]); // fewer steps for the same tokens
  });

  it("keeps max_tokens, stop strings and EOS inside an accepted run", () => {
    const copy = prompt(COPY);
    const specs = [1, 2, 3, 5, 7, 11].map((m) => spec(`m${m}`, copy, m));
    specs.push(spec("stop", copy, 40, { stop: ["ball."] }));
    // A boosted end-of-sequence logit: the model ends the text itself, some of it inside accepted runs.
    for (const b of [16, 17, 18, 19, 20, 22]) {
      const sampling = { temperature: 0, logitBias: new Map([[tok.eos!, b]]) };
      specs.push(spec(`eos${b}`, copy, 100, { sampling }));
    }
    const r = both(specs);
    for (const s of specs) {
      expect(r.spec.tokens.get(s.id), s.id).toEqual(r.plain.tokens.get(s.id));
      expect(r.spec.text.get(s.id), s.id).toEqual(r.plain.text.get(s.id));
      expect(r.spec.finish.get(s.id)!.reason, s.id).toBe(r.plain.finish.get(s.id)!.reason);
      expect(r.spec.tokens.get(s.id)!.length).toBeLessThanOrEqual(s.maxTokens);
    }
    expect(r.plain.finish.get("stop")!.reason).toBe("stop");
    const eos = specs.filter((s) => r.plain.finish.get(s.id)!.eogToken === tok.eos);
    expect(eos.length).toBeGreaterThan(0);
    for (const s of eos) expect(r.spec.finish.get(s.id)!.eogToken).toBe(tok.eos);
  });

  it("seeded sampling (with penalties and logprobs) gives the same tokens with and without speculation", () => {
    const specs = [1, 2, 3, 4, 5, 6].map((seed) =>
      spec(`s${seed}`, prompt(COPY), 40, {
        sampling: {
          temperature: 0.7,
          topP: 0.95,
          seed,
          logprobs: 2,
          frequencyPenalty: seed % 2 ? 0.3 : 0,
        },
      }),
    );
    const r = both(specs);
    for (const s of specs) expect(r.spec.tokens.get(s.id), s.id).toEqual(r.plain.tokens.get(s.id));
    expect(r.stats.acceptedTokens).toBeGreaterThan(0);
  });

  it("under preemption and a tight token budget, with staggered arrivals, nothing changes and nothing leaks", () => {
    const specs = [COPY, FRESH, COPY, "Tom and Tom and Tom and", COPY].map((t, i) =>
      spec(`p${i}`, prompt(t), 60),
    );
    const r = both(specs, { numBlocks: 14, budget: 16, at: [0, 0, 3, 5, 9] });
    for (const s of specs) expect(r.spec.tokens.get(s.id), s.id).toEqual(r.plain.tokens.get(s.id));
    expect(r.engine.scheduler.totalPreemptions).toBeGreaterThan(0);
    expect(r.stats.acceptedTokens).toBeGreaterThan(0);
  });

  it("rolls back rejected positions: K/V stops after the last accepted token, their blocks are freed", () => {
    // Verifying at no cost: every draft is as long as it can be, so rejected ones cross block boundaries.
    const engine = engineWith({ ...ngram, tokenCost: 0 });
    const bs = engine.blocks.blockSize;
    for (const [i, t] of [COPY, FRESH, COPY].entries()) engine.add(spec(`r${i}`, prompt(t), 120));
    let rejected = 0;
    while (engine.hasWork()) {
      engine.step();
      if (engine.lastStep.acceptedTokens < engine.lastStep.draftTokens) rejected++;
      let held = 0;
      for (const seq of engine.scheduler.running) {
        held += seq.blockTable.length;
        if (seq.numComputed < seq.promptLength) continue; // still prefilling
        expect(seq.numComputed).toBe(seq.tokens.length - 1);
        // No block past the one the next token goes into (a plain step leaves that one to the next).
        expect(seq.blockTable.length).toBeLessThanOrEqual(Math.ceil((seq.numComputed + 1) / bs));
        expect(seq.blockTable.length).toBeGreaterThanOrEqual(Math.ceil(seq.numComputed / bs));
      }
      // Nothing is held but the running sequences' blocks (shared prefix blocks are counted once).
      expect(engine.blocks.numBlocks - engine.blocks.numFree).toBeLessThanOrEqual(held);
    }
    expect(rejected).toBeGreaterThan(0);
    expectNoLeaks(engine);
  });

  it("an abort in the middle of speculation frees every block", () => {
    const engine = engineWith(ngram);
    engine.add(spec("a", prompt(COPY), 200));
    engine.add(spec("b", prompt(COPY), 200));
    expect(stepUntilDrafted(engine)).toBeGreaterThan(0);
    engine.abort("a");
    engine.abort("b");
    engine.step();
    expectNoLeaks(engine);
  });
});

/** Pearson's chi-square critical value at significance 1e-4 (Wilson–Hilferty). */
function chiSquareCritical(df: number): number {
  const z = 3.719;
  const a = 2 / (9 * df);
  return df * (1 - a + z * Math.sqrt(a)) ** 3;
}

describe("sampled output keeps its distribution under speculation", () => {
  it("the token at a drafted position follows the model's distribution (chi-square, 800 seeds)", () => {
    const copy = prompt(COPY);
    const N = 800;
    const engine = engineWith(ngram, 512, 512);
    const r = drive(
      engine,
      // In groups of 8, so no request waits while others decode (drafts yield to admissions).
      Array.from({ length: N }, (_, i) => ({
        at: Math.floor(i / 8) * 4,
        spec: spec(`x${i}`, copy, 3, { sampling: { temperature: 1, seed: 10_000 + i } }),
      })),
    );
    expectNoLeaks(engine);
    // The first token is sampled after the prompt (no draft); the second after a draft was verified.
    const first = new Map<number, number>();
    for (const t of r.tokens.values()) first.set(t[0]!, (first.get(t[0]!) ?? 0) + 1);
    const [lead] = [...first].sort((a, b) => b[1] - a[1])[0]!;
    const observed = new Map<number, number>();
    let n = 0;
    for (const t of r.tokens.values()) {
      if (t[0] !== lead || t.length < 2) continue;
      observed.set(t[1]!, (observed.get(t[1]!) ?? 0) + 1);
      n++;
    }
    const s = engine.speculator!.stats;
    expect(s.drafts).toBeGreaterThanOrEqual(n);
    expect(s.acceptedTokens).toBeGreaterThan(0);
    expect(s.acceptedTokens).toBeLessThan(s.draftTokens);
    // The exact distribution there, from the raw logprobs of a plain engine (temperature 1 = raw).
    const probe = engineWith(undefined);
    probe.add(spec("p", [...copy, lead], 1, { sampling: { temperature: 1, seed: 1, logprobs: 20 } }));
    const top = probe.step()[0]!.logprobs![0]!.topLogprobs;
    let chi = 0;
    let df = 0;
    let restP = 1;
    let restO = n;
    for (const { token, logprob } of top) {
      const e = n * Math.exp(logprob);
      if (e < 5) continue;
      const o = observed.get(token) ?? 0;
      chi += (o - e) ** 2 / e;
      df++;
      restP -= Math.exp(logprob);
      restO -= o;
    }
    const eRest = n * restP;
    chi += (restO - eRest) ** 2 / eRest;
    expect(n).toBeGreaterThan(N / 2);
    expect(df).toBeGreaterThanOrEqual(2);
    expect(chi).toBeLessThan(chiSquareCritical(df));
  });
});

describe("speculative decoding on the simulated runner", () => {
  it("gives the simulator's tokens unchanged, in fewer steps when drafts match", () => {
    // A vocabulary of 6: the simulator's pseudo-random tokens repeat, so drafts are found and some match.
    const run = (speculative?: SpeculativeOptions) => {
      const engine = new EngineCore(new SimRunner({ vocabSize: 6, numBlocks: 64 }), {
        clock: new VirtualClock(),
        speculative,
      });
      const r = drive(
        engine,
        [0, 1, 2].map((i) => ({ at: i, spec: spec(`q${i}`, [1, 2, 3, 4, 5, 1, 2, 3], 50) })),
      );
      expectNoLeaks(engine);
      return { r, stats: engine.speculator?.stats };
    };
    const a = run();
    const b = run(ngram);
    for (const id of ["q0", "q1", "q2"]) expect(b.r.tokens.get(id)).toEqual(a.r.tokens.get(id));
    expect(b.stats!.acceptedTokens).toBeGreaterThan(0);
    expect(b.stats!.acceptedTokens).toBeLessThan(b.stats!.draftTokens);
  });
});
