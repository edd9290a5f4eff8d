import { describe, expect, it } from "vitest";
import { EngineCore, VirtualClock } from "../../src/engine/engine.js";
import { ModelRunner } from "../../src/engine/runner.js";
import { generate } from "../../src/model/generate.js";
import { loadModel } from "../../src/model/model.js";
import { Rng } from "../../src/sampling/rng.js";
import { drive, expectNoLeaks } from "../helpers/engine.js";
import { STORIES_260K, testModel } from "../helpers/models.js";

const model = loadModel(testModel(STORIES_260K));
const rng = new Rng(5);
const V = model.config.vocabSize;
const randomTokens = (n: number) => Array.from({ length: n }, () => 3 + (rng.nextU32() % (V - 3)));
const greedy = { temperature: 0 };
const engineWith = (numBlocks = 256, maxNumBatchedTokens = 64) =>
  new EngineCore(new ModelRunner(model, numBlocks), {
    tokenizer: model.tokenizer,
    clock: new VirtualClock(),
    maxNumBatchedTokens,
  });

describe("automatic prefix caching", () => {
  const prefix = [model.tokenizer.bos!, ...randomTokens(199)];
  const a = { id: "a", prompt: [...prefix, ...randomTokens(20)], maxTokens: 16, sampling: greedy };
  const b = { id: "b", prompt: [...prefix, ...randomTokens(37)], maxTokens: 16, sampling: greedy };
  const aloneB = generate(model, b.prompt, { maxTokens: 16, sampling: greedy }).tokens;

  it("a second request sharing a 200-token prefix reuses 192 tokens and produces identical output", () => {
    const engine = engineWith();
    const r = drive(engine, [
      { at: 0, spec: a },
      { at: 30, spec: b },
    ]);
    expect(r.finish.get("a")!.cachedTokens).toBe(0);
    expect(r.finish.get("b")!.cachedTokens).toBe(192); // 12 full blocks of 16 out of the 200 shared
    expect(engine.prefixStats.hits).toBe(192);
    expect(engine.prefixStats.hitRequests).toBe(1);
    expect(r.tokens.get("b")).toEqual(aloneB);
    expectNoLeaks(engine);
  });

  it("hits blocks of a request that is still running, and blocks of finished ones until evicted", () => {
    const engine = engineWith();
    // b arrives while a is still decoding: a's prompt blocks are already registered.
    const r = drive(engine, [
      { at: 0, spec: a },
      { at: 5, spec: b },
    ]);
    expect(r.finish.get("b")!.cachedTokens).toBe(192);
    expect(r.tokens.get("b")).toEqual(aloneB);
    // A tiny cache: filling it with unrelated requests evicts the prefix, and b must recompute it.
    const small = engineWith(20);
    drive(small, [{ at: 0, spec: a }]);
    drive(small, [{ at: 0, spec: { id: "x", prompt: randomTokens(310), maxTokens: 4, sampling: greedy } }]);
    const again = drive(small, [{ at: 0, spec: { ...b, id: "b2" } }]);
    expect(again.finish.get("b2")!.cachedTokens).toBe(0);
    expect(small.prefixStats.evictions).toBeGreaterThan(0);
    expect(again.tokens.get("b2")).toEqual(aloneB);
    expectNoLeaks(small);
  });

  it("an identical prompt leaves its last token to compute and gives identical output", () => {
    const engine = engineWith();
    const p = [model.tokenizer.bos!, ...randomTokens(63)]; // exactly 4 blocks
    drive(engine, [{ at: 0, spec: { id: "p1", prompt: p, maxTokens: 8, sampling: greedy } }]);
    const r = drive(engine, [{ at: 0, spec: { id: "p2", prompt: p, maxTokens: 8, sampling: greedy } }]);
    expect(r.finish.get("p2")!.cachedTokens).toBe(48);
    expect(r.tokens.get("p2")).toEqual(generate(model, p, { maxTokens: 8, sampling: greedy }).tokens);
    expectNoLeaks(engine);
  });
});

describe("abort and deadlines free everything, in every state", () => {
  const spec = (id: string, promptLen = 40, maxTokens = 30) => ({
    id,
    prompt: [model.tokenizer.bos!, ...randomTokens(promptLen - 1)],
    maxTokens,
    sampling: greedy,
  });

  it("waiting, mid-prefill, decoding, preempted, and already finished", () => {
    const engine = engineWith(40, 32);
    engine.add(spec("waiting"));
    expect(engine.abort("waiting")).toBe(true);
    engine.add(spec("decode", 10));
    const events = engine.step();
    for (let i = 0; i < 2; i++) events.push(...engine.step());
    expect(engine.get("decode")!.numOutput).toBe(3);
    engine.add(spec("prefill", 200));
    events.push(...engine.step()); // one decode token, then 31 of 200 prompt tokens in the 32-token budget
    expect(engine.get("prefill")!.numComputed).toBe(31);
    engine.abort("decode");
    engine.abort("prefill");
    events.push(...engine.step());
    expect(events.filter((e) => e.finish).map((e) => [e.id, e.finish?.reason])).toEqual([
      ["waiting", "abort"],
      ["decode", "abort"],
      ["prefill", "abort"],
    ]);
    expectNoLeaks(engine);
    expect(engine.abort("decode")).toBe(false); // already finished

    // Preempted: two long requests in a cache that holds one at a time.
    const tight = engineWith(24, 64);
    tight.add(spec("p1", 200, 100));
    tight.add(spec("p2", 200, 100));
    let preempted: string | undefined;
    for (let i = 0; i < 200 && !preempted; i++) {
      tight.step();
      preempted = tight.scheduler.waiting.find((s) => s.preemptions > 0)?.id;
    }
    expect(preempted).toBeDefined();
    tight.abort(preempted!);
    for (let i = 0; i < 500 && tight.hasWork(); i++) tight.step();
    expectNoLeaks(tight);
  });

  it("a per-request timeout aborts the request with a message", () => {
    const engine = engineWith();
    const r = drive(engine, [{ at: 0, spec: { ...spec("slow", 40, 60), timeoutMs: 50 } }], 10);
    const f = r.finish.get("slow")!;
    expect(f.reason).toBe("abort");
    expect(f.message).toMatch(/timed out after 50 ms/);
    expect(f.completionTokens).toBeLessThan(60);
    expectNoLeaks(engine);
  });

  it("requests that can never run are refused with one clear line", () => {
    const engine = engineWith(8);
    expect(() => engine.add({ id: "e", prompt: [], maxTokens: 4 })).toThrow(/the prompt is empty/);
    expect(() => engine.add({ id: "l", prompt: randomTokens(2048), maxTokens: 4 })).toThrow(
      /the prompt has 2048 tokens but the model's context is 2048/,
    );
    expect(() => engine.add({ id: "k", prompt: randomTokens(200), maxTokens: 4 })).toThrow(
      /the KV cache holds 128; raise --kv-cache-memory/,
    );
    expect(() => engine.add({ id: "v", prompt: [1, 99999], maxTokens: 4 })).toThrow(/outside the vocabulary/);
    expectNoLeaks(engine);
  });

  it("a sequence that outgrows the whole cache finishes with length instead of looping", () => {
    const engine = engineWith(4); // 64 tokens in all
    const r = drive(engine, [{ at: 0, spec: { ...spec("grow", 50, 100), stopAtEog: false } }]);
    expect(r.finish.get("grow")!.reason).toBe("length");
    // 64 slots: 50 prompt + 14 computed outputs, and a 15th sampled whose K/V would need a 65th slot.
    expect(r.tokens.get("grow")!.length).toBe(15);
    expectNoLeaks(engine);
  });
});

describe("end of generation", () => {
  it("an EOS token finishes with stop, names the token, and is not part of the output", () => {
    const engine = engineWith();
    const eos = model.tokenizer.eos!;
    // A logit bias makes EOS the greedy choice for the very first token.
    const prompt = [model.tokenizer.bos!, ...randomTokens(10)];
    const free = drive(engine, [{ at: 0, spec: { id: "free", prompt, maxTokens: 2, sampling: greedy } }]);
    const forced = drive(engine, [
      {
        at: 0,
        spec: {
          id: "eos",
          prompt,
          maxTokens: 50,
          sampling: { temperature: 0, logitBias: new Map([[eos, 100]]) },
        },
      },
    ]);
    expect(free.finish.get("free")!.eogToken).toBeUndefined();
    const f = forced.finish.get("eos")!;
    expect(f.reason).toBe("stop");
    expect(f.eogToken).toBe(eos);
    expect(f.completionTokens).toBe(0);
    expect(forced.tokens.get("eos")).toEqual([]);
    expectNoLeaks(engine);
  });
});
