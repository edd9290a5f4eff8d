import { describe, expect, it } from "vitest";
import { EngineCore, VirtualClock } from "../../src/engine/engine.js";
import { ModelRunner } from "../../src/engine/runner.js";
import { SIM_EMBEDDING_LENGTH, SimRunner } from "../../src/engine/sim-runner.js";
import { loadModel, type Model } from "../../src/model/model.js";
import type { PoolingType } from "../../src/model/pooling.js";
import type { RequestSpec } from "../../src/protocol/request.js";
import { qwen3LastPooling, storiesWithPooling } from "../helpers/embedding-models.js";
import { type Arrival, drive, expectNoLeaks } from "../helpers/engine.js";
import { cosine, llamaEmbedding } from "../helpers/llamacpp.js";
import { tempDir } from "../helpers/tmp.js";

/**
 * Embedding requests in the engine: prefill-only sequences, batched with generation, pooled as the
 * GGUF says and L2-normalized; compared with llama.cpp's embedding context (node-llama-cpp) on
 * stories260K (mean, cls, last pooling written into a copy) and on a synthesized qwen3 with
 * last-token pooling.
 */

const dir = tempDir("spindle-embed-");
const TEXTS = [
  "Once upon a time, there was a little girl named Lily.",
  "The cat sat on the mat",
  "Tom and his dog went to the park. They played with a big red ball all day long, and then they went home to eat.",
  "hi",
];

function engineFor(model: Model, opts: { numBlocks?: number; chunk?: number; prefixCaching?: boolean } = {}) {
  return new EngineCore(new ModelRunner(model, opts.numBlocks ?? 64), {
    tokenizer: model.tokenizer,
    clock: new VirtualClock(),
    // Small chunks: long inputs are pooled over several prefill steps.
    maxNumBatchedTokens: opts.chunk ?? 16,
    prefixCaching: opts.prefixCaching ?? true,
  });
}

const embedSpec = (id: string, prompt: number[]): RequestSpec => ({
  id,
  kind: "embed",
  prompt,
  maxTokens: 1,
});

function embedAlone(model: Model, prompt: number[]): Float32Array {
  const engine = engineFor(model);
  const r = drive(engine, [{ at: 0, spec: embedSpec("e", prompt) }]);
  expectNoLeaks(engine);
  return r.embedding.get("e")!;
}

const norm = (v: Float32Array) => Math.sqrt(v.reduce((s, x) => s + x * x, 0));

describe("embeddings match llama.cpp's (node-llama-cpp embedding context)", () => {
  for (const pooling of ["mean", "cls", "last"] as PoolingType[]) {
    it(`stories260K, ${pooling} pooling: cosine ≥ 0.999, unit length`, async () => {
      const path = storiesWithPooling(dir, pooling);
      const model = loadModel(path);
      expect(model.config.pooling).toBe(pooling);
      for (const text of TEXTS) {
        const ids = model.tokenizer.encode(text);
        const ours = embedAlone(model, ids);
        expect(ours).toHaveLength(model.config.dim);
        expect(norm(ours)).toBeCloseTo(1, 5);
        const ref = await llamaEmbedding(path, ids);
        expect(cosine(ours, ref), `${pooling}: ${text}`).toBeGreaterThanOrEqual(0.999);
      }
    });
  }

  it("the pooling types differ (the check above can tell them apart)", () => {
    const ids = loadModel(storiesWithPooling(dir, "mean")).tokenizer.encode(TEXTS[0]!);
    const vs = (["mean", "cls", "last"] as PoolingType[]).map((p) =>
      embedAlone(loadModel(storiesWithPooling(dir, p)), ids),
    );
    expect(cosine(vs[0]!, vs[1]!)).toBeLessThan(0.99);
    expect(cosine(vs[0]!, vs[2]!)).toBeLessThan(0.99);
    expect(cosine(vs[1]!, vs[2]!)).toBeLessThan(0.99);
  });

  it("synthesized qwen3 with last-token pooling: cosine ≥ 0.999", async () => {
    const path = qwen3LastPooling(dir);
    const model = loadModel(path);
    expect(model.config.pooling).toBe("last");
    for (const text of TEXTS) {
      const ids = model.tokenizer.encode(text);
      const ours = embedAlone(model, ids);
      const ref = await llamaEmbedding(path, ids);
      expect(cosine(ours, ref), text).toBeGreaterThanOrEqual(0.999);
    }
  });
});

describe("embedding requests in the engine", () => {
  const model = loadModel(storiesWithPooling(dir, "mean"));
  const tok = model.tokenizer;

  it("batched with greedy generation: generation's tokens and the vectors are those of each request alone", () => {
    const gens: Arrival[] = TEXTS.map((t, i) => ({
      at: i,
      spec: { id: `g${i}`, prompt: tok.encode(t), maxTokens: 24, sampling: { temperature: 0 } },
    }));
    const embeds: Arrival[] = TEXTS.map((t, i) => ({ at: i * 2, spec: embedSpec(`e${i}`, tok.encode(t)) }));
    const aloneTokens = gens.map((g) => {
      const e = engineFor(model);
      return drive(e, [g]).tokens.get(g.spec.id);
    });
    const engine = engineFor(model);
    const r = drive(engine, [...gens, ...embeds]);
    expect(r.maxBatch).toBeGreaterThan(1);
    for (const [i, g] of gens.entries()) expect(r.tokens.get(g.spec.id), g.spec.id).toEqual(aloneTokens[i]);
    embeds.forEach((e) => {
      expect(r.embedding.get(e.spec.id), e.spec.id).toEqual(embedAlone(model, e.spec.prompt));
      const f = r.finish.get(e.spec.id)!;
      expect(f.reason).toBe("stop");
      expect(f.completionTokens).toBe(0);
      expect(f.promptTokens).toBe(e.spec.prompt.length);
      expect(r.tokens.get(e.spec.id)).toEqual([]);
    });
    expectNoLeaks(engine);
  });

  it("an embedding holds no block once it finishes, and an aborted one frees its blocks", () => {
    const engine = engineFor(model, { chunk: 8 });
    const long = tok.encode(TEXTS[2]!);
    engine.add(embedSpec("a", long));
    engine.add(embedSpec("b", long));
    engine.step();
    expect(engine.blocks.usage).toBeGreaterThan(0);
    engine.abort("a");
    const events = [];
    while (engine.hasWork()) events.push(...engine.step());
    expect(events.find((e) => e.id === "a")?.finish?.reason).toBe("abort");
    expect(events.find((e) => e.id === "a")?.embedding).toBeUndefined();
    expect(events.find((e) => e.id === "b")?.embedding).toBeDefined();
    expectNoLeaks(engine);
  });

  it("preempted and recomputed (a KV pool too small for all at once), the vectors do not change", () => {
    const prompts = [0, 1, 2, 3].map((i) => tok.encode(`${TEXTS[2]!} ${TEXTS[i]!}`));
    const engine = engineFor(model, { numBlocks: 12, chunk: 32 });
    const r = drive(engine, [
      ...prompts.map((p, i) => ({ at: 0, spec: embedSpec(`e${i}`, p) })),
      ...prompts.map((p, i) => ({
        at: 0,
        spec: { id: `g${i}`, prompt: p, maxTokens: 40, sampling: { temperature: 0 } },
      })),
    ]);
    expect(engine.scheduler.totalPreemptions).toBeGreaterThan(0);
    for (const [i, p] of prompts.entries()) expect(r.embedding.get(`e${i}`)).toEqual(embedAlone(model, p));
    expectNoLeaks(engine);
  });

  it("mean pooling computes every position (no prefix reuse) but leaves its blocks for later requests", () => {
    const engine = engineFor(model, { chunk: 256 });
    const ids = tok.encode(TEXTS[2]!);
    const r = drive(engine, [
      { at: 0, spec: embedSpec("e1", ids) },
      { at: 2, spec: embedSpec("e2", ids) },
      { at: 4, spec: { id: "g", prompt: ids, maxTokens: 4, sampling: { temperature: 0 } } },
    ]);
    expect(r.finish.get("e2")!.cachedTokens).toBe(0);
    expect(r.embedding.get("e2")).toEqual(r.embedding.get("e1"));
    expect(r.finish.get("g")!.cachedTokens).toBeGreaterThan(0);
    expectNoLeaks(engine);
  });

  it("last-token pooling takes the cached prefix and gives the same vector", () => {
    const last = loadModel(storiesWithPooling(dir, "last"));
    const engine = engineFor(last, { chunk: 256 });
    const ids = last.tokenizer.encode(TEXTS[2]!);
    const r = drive(engine, [
      { at: 0, spec: embedSpec("e1", ids) },
      { at: 2, spec: embedSpec("e2", ids) },
    ]);
    expect(r.finish.get("e2")!.cachedTokens).toBeGreaterThan(0);
    const a = r.embedding.get("e1")!;
    const b = r.embedding.get("e2")!;
    expect(cosine(a, b)).toBeGreaterThan(0.99999);
    expectNoLeaks(engine);
  });

  it("refuses what can never run: an empty input, ids outside the vocabulary, more tokens than the context", () => {
    const engine = engineFor(model);
    expect(() => engine.add(embedSpec("x", []))).toThrow(/empty/);
    expect(() => engine.add(embedSpec("x", [1, 99999]))).toThrow(/outside the vocabulary/);
    const ctx = model.config.contextLength;
    expect(() => engine.add(embedSpec("x", new Array(ctx + 1).fill(5)))).toThrow(/context/);
    // An input may fill the context (nothing is generated after it).
    const full = engineFor(model, { numBlocks: ctx / 16 + 1, chunk: 512 });
    const r = drive(full, [{ at: 0, spec: embedSpec("f", [1, ...new Array(ctx - 1).fill(5)]) }]);
    expect(r.embedding.get("f")).toHaveLength(model.config.dim);
    expectNoLeaks(full);
  });
});

describe("embedding requests on the simulated runner", () => {
  it("give unit vectors of the simulator's width, equal for equal inputs, different for different ones", () => {
    const engine = new EngineCore(new SimRunner({ numBlocks: 64, vocabSize: 512 }), {
      clock: new VirtualClock(),
      maxNumBatchedTokens: 16,
    });
    const a = [1, ...Array.from({ length: 40 }, (_, i) => 3 + i)];
    const r = drive(engine, [
      { at: 0, spec: embedSpec("a1", a) },
      { at: 0, spec: embedSpec("b", [1, 7, 9]) },
      { at: 3, spec: embedSpec("a2", a) },
      { at: 0, spec: { id: "g", prompt: a, maxTokens: 8 } },
    ]);
    const v = r.embedding.get("a1")!;
    expect(v).toHaveLength(SIM_EMBEDDING_LENGTH);
    expect(norm(v)).toBeCloseTo(1, 5);
    expect(r.embedding.get("a2")).toEqual(v);
    expect(cosine(v, r.embedding.get("b")!)).toBeLessThan(0.99);
    expect(r.tokens.get("g")).toHaveLength(8);
    expectNoLeaks(engine);
  });
});
