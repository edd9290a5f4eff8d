import { join } from "node:path";
import { monitorEventLoopDelay } from "node:perf_hooks";
import type { Worker } from "node:worker_threads";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type EngineClient as Client, EngineClient } from "../../src/engine/engine-client.js";
import type { DecodeSplits, EngineInit } from "../../src/engine/engine-protocol.js";
import { kvCachePools } from "../../src/engine/kv-sizing.js";
import { SpindleError } from "../../src/errors.js";
import { GGMLType } from "../../src/gguf/types.js";
import { generate } from "../../src/model/generate.js";
import { KVCacheStorage } from "../../src/model/kv-cache.js";
import { loadModel } from "../../src/model/model.js";
import { SHAPES, synthModel } from "../../src/model/synth.js";
import type { RequestStream } from "../../src/protocol/event-stream.js";
import type { FinishInfo } from "../../src/protocol/events.js";
import type { RequestSpec } from "../../src/protocol/request.js";
import { Rng } from "../../src/sampling/rng.js";
import { STORIES_260K, testModel, VOCAB_SPM } from "../helpers/models.js";
import { tempDir } from "../helpers/tmp.js";

/**
 * The engine in its worker thread, through EngineClient: real worker, real stories260K model (and a
 * synthesized stories15M-sized one for timing), and the simulated runner.
 */

const modelPath = testModel(STORIES_260K);
const model = loadModel(modelPath);
const V = model.config.vocabSize;
const greedy = { temperature: 0 };

interface Collected {
  tokens: number[];
  text: string;
  events: number;
  finish: FinishInfo | undefined;
}

/** Iterates a stream to its end, checking that every event belongs to it. */
async function collect(s: RequestStream): Promise<Collected> {
  const c: Collected = { tokens: [], text: "", events: 0, finish: undefined };
  for await (const e of s) {
    expect(e.id).toBe(s.id);
    expect(c.finish, `${s.id}: an event after the finish`).toBeUndefined();
    c.tokens.push(...e.tokens);
    c.text += e.text;
    c.events++;
    if (e.finish) c.finish = e.finish;
  }
  return c;
}

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
}

describe("the decode split, measured after ready while idle, and again once the engine has served and gone idle", () => {
  it("is measured first after ready, re-measured after an idle spell, not before serving; requests arriving during it get their own tokens", async () => {
    // Two kernel threads in the worker (vitest runs with one): it reads the variable at start.
    const threads = process.env.SPINDLE_THREADS;
    process.env.SPINDLE_THREADS = "2";
    const started = EngineClient.start({
      kind: "model",
      modelPath,
      kvCacheBytes: 8 << 20,
      retune: { idleMs: 50, everyMs: 0 },
    });
    process.env.SPINDLE_THREADS = threads;
    const c = await started;
    try {
      expect(c.info.kernels).toBe("wasm kernels (relaxed build), 2 threads");
      // Ready does not wait for the measurement: it comes after, while the engine is idle.
      expect(c.info.decodeSplits).toBeUndefined();
      const first = await new Promise<DecodeSplits>((resolve) => c.onDecodeSplits(resolve));
      expect(first.retunes).toBe(0);
      expect(first.smallSplits).toBe(first.splitMs < first.singleMs);
      expect(c.info.decodeSplits).toEqual({
        splitMs: first.splitMs,
        singleMs: first.singleMs,
        smallSplits: first.smallSplits,
      });
      expect((await c.stats()).decodeSplits).toEqual(first);
      // Nothing served yet: an idle engine measures nothing more.
      await new Promise((r) => setTimeout(r, 300));
      expect((await c.stats()).decodeSplits!.retunes).toBe(0);
      const spec = (id: string): RequestSpec => ({
        id,
        prompt: model.tokenizer.encode("Once upon a time", { addSpecial: true }),
        maxTokens: 24,
        sampling: greedy,
      });
      const alone = generate(model, spec("x").prompt, { maxTokens: 24, sampling: greedy }).tokens;
      expect((await collect(c.submit(spec("first")))).tokens).toEqual(alone);
      // Requests every 150 ms while the engine re-measures whenever it has been idle 50 ms: some
      // arrive during a measurement and stop it.
      for (let i = 0; i < 8; i++) {
        await new Promise((r) => setTimeout(r, 150));
        expect((await collect(c.submit(spec(`r${i}`)))).tokens).toEqual(alone);
      }
      const deadline = Date.now() + 15_000;
      while ((await c.stats()).decodeSplits!.retunes === 0 && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 100));
      const s = (await c.stats()).decodeSplits!;
      expect(s.retunes).toBeGreaterThan(0);
      expect(s.smallSplits).toBe(s.splitMs < s.singleMs);
      expect((await collect(c.submit(spec("last")))).tokens).toEqual(alone);
    } finally {
      await c.close();
    }
  }, 30_000);
});

describe("a fixed decode split (--decode-split on|off)", () => {
  it("is never measured, and the engine serves the same tokens either way", async () => {
    const threads = process.env.SPINDLE_THREADS;
    process.env.SPINDLE_THREADS = "2";
    const starts = (["on", "off"] as const).map((decodeSplit) =>
      EngineClient.start({
        kind: "model",
        modelPath,
        kvCacheBytes: 8 << 20,
        decodeSplit,
        retune: { idleMs: 20 },
      }),
    );
    process.env.SPINDLE_THREADS = threads;
    const clients = await Promise.all(starts);
    try {
      const prompt = model.tokenizer.encode("Once upon a time", { addSpecial: true });
      const alone = generate(model, prompt, { maxTokens: 16, sampling: greedy }).tokens;
      let measured = 0;
      for (const c of clients) {
        expect(c.info.kernels).toBe("wasm kernels (relaxed build), 2 threads");
        c.onDecodeSplits(() => measured++);
        expect(
          (await collect(c.submit({ id: "a", prompt, maxTokens: 16, sampling: greedy }))).tokens,
        ).toEqual(alone);
      }
      // Idle well past the re-measurement's idle spell: nothing was measured, before or after serving.
      await new Promise((r) => setTimeout(r, 500));
      expect(measured).toBe(0);
      for (const c of clients) expect((await c.stats()).decodeSplits).toBeUndefined();
    } finally {
      await Promise.all(clients.map((c) => c.close()));
    }
  });
});

describe("a cancelled engine start", () => {
  it("rejects, stops the worker while it loads, and leaves the next start unharmed", async () => {
    const cancel = new AbortController();
    const started = EngineClient.start(
      { kind: "model", modelPath, kvCacheBytes: 8 << 20 },
      { signal: cancel.signal },
    );
    cancel.abort();
    await expect(started).rejects.toMatchObject({
      code: "engine_start_failed",
      message: expect.stringMatching(/cancelled/),
    });
    const already = new AbortController();
    already.abort();
    await expect(
      EngineClient.start({ kind: "model", modelPath }, { signal: already.signal }),
    ).rejects.toMatchObject({
      code: "engine_start_failed",
    });
    // A start whose signal is never aborted is unaffected by it.
    const c = await EngineClient.start(
      { kind: "model", modelPath, kvCacheBytes: 8 << 20 },
      { signal: new AbortController().signal },
    );
    try {
      const prompt = model.tokenizer.encode("Once upon a time", { addSpecial: true });
      const out = await collect(c.submit({ id: "a", prompt, maxTokens: 8, sampling: greedy }));
      expect(out.tokens).toEqual(generate(model, prompt, { maxTokens: 8, sampling: greedy }).tokens);
    } finally {
      await c.close();
    }
  });
});

describe("engine worker with stories260K", () => {
  let client: Client;
  const kvBytes = 8 << 20;

  beforeAll(async () => {
    client = await EngineClient.start({ kind: "model", modelPath, kvCacheBytes: kvBytes });
  });
  afterAll(() => client?.close());

  it("reports the model, and sizes the KV cache from the memory budget", () => {
    const { info } = client;
    expect(info.kind).toBe("model");
    expect(info.numBlocks).toBe(KVCacheStorage.blocksForBudget(model.config, kvBytes));
    expect(info.blockSize).toBe(16);
    expect(info.kvCacheBytes).toBeLessThanOrEqual(kvBytes);
    expect(info.vocabSize).toBe(V);
    expect(info.contextLength).toBe(2048);
    expect(info.bos).toBe(model.tokenizer.bos);
    expect(info.eos).toBe(model.tokenizer.eos);
    expect(info.eogTokens).toContain(model.tokenizer.eos);
    expect(info.hasChatTemplate).toBe(false);
    expect(info.model).toMatchObject({ arch: "llama", dim: 64, nLayers: 5 });
    // The worker's kernels, as the "ready" log line shows them (SPINDLE_THREADS is 1 under vitest).
    expect(info.kernels).toBe("wasm kernels (relaxed build), 1 thread");
    expect(info.scheduler.maxNumSeqs).toBe(64);
  });

  it("64 concurrent greedy requests each get exactly their own tokens, in batched step messages", async () => {
    const rng = new Rng(5);
    const stems = ["Once upon a time", "The little dog", "Tom and Lily", "One day, a bird", "She was happy"];
    const specs: RequestSpec[] = Array.from({ length: 64 }, (_, i) => {
      const extra = Array.from({ length: rng.nextU32() % 32 }, () => 3 + (rng.nextU32() % (V - 3)));
      const prompt = [...model.tokenizer.encode(stems[i % stems.length]!, { addSpecial: true }), ...extra];
      return { id: `req-${i}`, prompt, maxTokens: 4 + (rng.nextU32() % 33), sampling: greedy };
    });
    const alone = specs.map((s) => generate(model, s.prompt, { maxTokens: s.maxTokens, sampling: greedy }));

    const before = client.stepMessages;
    const batchSizes: number[] = [];
    const off = client.onStep((s) => batchSizes.push(s.batchSize));
    const got = await Promise.all(specs.map((s) => collect(client.submit(s))));
    off();
    const messages = client.stepMessages - before;

    let totalTokens = 0;
    specs.forEach((s, i) => {
      const g = got[i]!;
      const want = alone[i]!;
      expect(g.tokens, s.id).toEqual(want.tokens);
      expect(g.text, s.id).toBe(want.text);
      expect(g.finish?.reason, s.id).toBe(want.finishReason);
      expect(g.finish?.completionTokens).toBe(want.tokens.length);
      expect(g.finish?.promptTokens).toBe(s.prompt.length);
      totalTokens += want.tokens.length;
    });
    expect(totalTokens).toBeGreaterThan(800);
    // One message per engine step, each carrying every request's events of that step.
    expect(messages).toBe(batchSizes.length);
    expect(messages).toBeLessThan(totalTokens / 10);
    expect(Math.max(...batchSizes)).toBeGreaterThanOrEqual(32);
    expect(client.openStreams).toBe(0);
  });

  it("an AbortSignal ends its stream with reason abort at once; the other requests finish", async () => {
    const long = (i: number): RequestSpec => ({
      id: `long-${i}`,
      prompt: [model.tokenizer.bos!, 400 + i, 300],
      maxTokens: 200,
      stopAtEog: false,
      sampling: greedy,
    });
    const ctrl = new AbortController();
    const others = [0, 1, 2, 4, 5].map((i) => client.submit(long(i)).result());
    const target = client.submit(long(3), { signal: ctrl.signal });
    const broken = client.submit(long(6));
    const preAborted = client.submit(long(7), { signal: AbortSignal.abort() });

    let abortedAt = 0;
    let finishedAt = 0;
    let finish: FinishInfo | undefined;
    let tokens = 0;
    for await (const e of target) {
      tokens += e.tokens.length;
      if (tokens >= 5 && abortedAt === 0) {
        abortedAt = performance.now();
        ctrl.abort();
      }
      if (e.finish) {
        finish = e.finish;
        finishedAt = performance.now();
      }
    }
    expect(finish?.reason).toBe("abort");
    expect(finish?.completionTokens).toBeLessThan(20);
    expect(finishedAt - abortedAt).toBeLessThan(250);

    // Leaving the loop early aborts the request too.
    let n = 0;
    for await (const _ of broken) if (++n === 2) break;
    const b = await broken.result();
    expect(b.finish.reason).toBe("abort");
    expect(b.tokens.length).toBeLessThan(200);

    expect((await preAborted.result()).finish.reason).toBe("abort");

    for (const r of await Promise.all(others)) {
      expect(r.finish.reason).toBe("length");
      expect(r.tokens).toHaveLength(200);
    }
    const st = await client.stats();
    expect(st).toMatchObject({ running: 0, waiting: 0, unfinished: 0, kvUsage: 0 });
    expect(st.freeBlocks).toBe(st.numBlocks);
  });

  it("an invalid request rejects only its own stream with the one-line error; the worker keeps serving", async () => {
    const prompt = model.tokenizer.encode("Once upon a time", { addSpecial: true });
    const good = client.submit({ id: "good", prompt, maxTokens: 20, sampling: greedy });
    const dup = client.submit({ id: "good", prompt, maxTokens: 20, sampling: greedy });
    const empty = client.submit({ prompt: [], maxTokens: 5 });
    const tooLong = client.submit({ prompt: new Array(2048).fill(5), maxTokens: 5 });
    const badToken = client.submit({ prompt: [1, V], maxTokens: 5 });
    const badSampling = client.submit({ prompt, maxTokens: 5, sampling: { temperature: 5 } });

    await expect(empty.result()).rejects.toThrow(new SpindleError("the prompt is empty"));
    await expect(collect(tooLong)).rejects.toMatchObject({
      name: "SpindleError",
      code: "context_length_exceeded",
      message: expect.stringMatching(/^the prompt has 2048 tokens but the model's context is 2048[^\n]*$/),
    });
    await expect(badToken.result()).rejects.toThrow(/^token id 512 is outside the vocabulary/);
    await expect(badSampling.result()).rejects.toMatchObject({
      name: "SamplingParamError",
      param: "temperature",
      message: "temperature must be between 0 and 2",
    });
    await expect(dup.result()).rejects.toThrow("request id good is already in use");
    for (const s of [empty, tooLong, badToken, badSampling, dup]) {
      await expect(s.result()).rejects.toBeInstanceOf(SpindleError);
    }

    const r = await good.result();
    expect(r.tokens).toEqual(generate(model, prompt, { maxTokens: 20, sampling: greedy }).tokens);
    const after = await client.submit({ prompt, maxTokens: 3, sampling: greedy }).result();
    expect(after.tokens).toEqual(r.tokens.slice(0, 3));
  });

  it("a request whose sampling fails finishes with reason error alone; the batch goes on", async () => {
    const prompt = model.tokenizer.encode("Tom and Lily", { addSpecial: true });
    const victim = client.submit({ prompt, maxTokens: 60, stopAtEog: false, sampling: greedy });
    const it = victim[Symbol.asyncIterator]();
    const first = await it.next(); // running
    // Banning every token passes validation but makes sampling throw inside the step.
    const banAll = new Map(Array.from({ length: V }, (_, t) => [t, -100] as [number, number]));
    const bad = client.submit({ prompt, maxTokens: 5, sampling: { logitBias: banAll } });

    const b = await bad.result();
    expect(b.finish.reason).toBe("error");
    expect(b.finish.message).toMatch(/logit_bias bans every token/);
    const rest: number[] = [];
    for (let r = await it.next(); !r.done; r = await it.next()) rest.push(...r.value.tokens);
    // Read by iteration: result() has the finish, the reader had the tokens.
    const v = await victim.result();
    expect(v.finish.reason).toBe("length");
    expect([...(first.value?.tokens ?? []), ...rest]).toEqual(
      generate(model, prompt, { maxTokens: 60, stopAtEog: false, sampling: greedy }).tokens,
    );

    const st = await client.stats();
    expect(st.stepFailures).toBe(0);
    expect(st).toMatchObject({ running: 0, waiting: 0, kvUsage: 0 });
  });
});

describe("engine worker: the main event loop", () => {
  it("stays responsive while the worker computes long steps", async () => {
    const path = join(tempDir(), "stories15M-q4_0.gguf");
    synthModel({
      arch: "llama",
      shape: SHAPES.stories15M!,
      type: GGMLType.Q4_0,
      vocabPath: testModel(VOCAB_SPM),
      out: path,
    });
    // The reference kernels keep each step long (≥ 50 ms), which is what this test needs to show.
    const big = await EngineClient.start(
      { kind: "model", modelPath: path, numBlocks: 64 },
      { worker: { env: { ...process.env, SPINDLE_KERNELS: "reference" } } },
    );
    try {
      const stepMs: number[] = [];
      big.onStep((s) => {
        if (s.batchSize > 0) stepMs.push(s.stepMs);
      });
      const lateness: number[] = [];
      let last = performance.now();
      const timer = setInterval(() => {
        const now = performance.now();
        lateness.push(now - last - 5);
        last = now;
      }, 5);
      const h = monitorEventLoopDelay({ resolution: 5 });
      h.enable();
      const t0 = performance.now();
      const results = await Promise.all(
        Array.from({ length: 6 }, (_, i) =>
          big
            .submit({ prompt: [1, 100 + i, 200, 300], maxTokens: 10, stopAtEog: false, sampling: greedy })
            .result(),
        ),
      );
      const wall = performance.now() - t0;
      h.disable();
      clearInterval(timer);
      for (const r of results) expect(r.tokens).toHaveLength(10);

      const medianStep = percentile(stepMs, 50);
      const p99 = percentile(lateness, 99);
      const histP99 = h.percentile(99) / 1e6;
      console.log(
        `engine steps: ${stepMs.length}, median ${medianStep.toFixed(1)} ms, max ${Math.max(...stepMs).toFixed(1)} ms; ` +
          `wall ${wall.toFixed(0)} ms; main-thread 5 ms timer: ${lateness.length} ticks, lateness p50 ` +
          `${percentile(lateness, 50).toFixed(2)} ms, p99 ${p99.toFixed(2)} ms, max ${Math.max(...lateness).toFixed(2)} ms; ` +
          `monitorEventLoopDelay p99 ${histP99.toFixed(2)} ms`,
      );
      expect(medianStep).toBeGreaterThan(50);
      expect(lateness.length).toBeGreaterThan(wall / 10);
      expect(p99).toBeLessThan(Math.min(50, medianStep / 2));
      expect(histP99).toBeLessThan(Math.min(50, medianStep / 2));
    } finally {
      await big.close();
    }
  });
});

describe("engine worker with the simulated runner", () => {
  const specs: RequestSpec[] = Array.from({ length: 20 }, (_, i) => ({
    id: `sim-${i}`,
    prompt: Array.from({ length: 5 + i * 7 }, (_, j) => (i * 31 + j * 17) % 1000),
    maxTokens: 30,
  }));

  it("runs and is deterministic; window batching waits for its window with a timer", async () => {
    const sim = { numBlocks: 256, vocabSize: 1000, contextLength: 1024 };
    const [a, b] = await Promise.all([
      EngineClient.start({ kind: "sim", sim, options: { maxNumSeqs: 16 } }),
      EngineClient.start({
        kind: "sim",
        sim: { ...sim, cost: { baseMs: 3, perPrefillTokenMs: 0, perDecodeSeqMs: 0, perAttendedTokenMs: 0 } },
        pace: true,
        options: { maxNumSeqs: 32, batching: "window", batchWindowMs: 50 },
      }),
    ]);
    try {
      expect(a.info).toMatchObject({ kind: "sim", numBlocks: 256, vocabSize: 1000, contextLength: 1024 });
      const stepsB: number[] = [];
      const batchB: number[] = [];
      b.onStep((s) => {
        if (s.batchSize > 0) stepsB.push(s.stepMs);
        batchB.push(s.batchSize);
      });
      const [ra, rb] = await Promise.all([
        Promise.all(specs.map((s) => a.submit(s).result())),
        Promise.all(specs.map((s) => b.submit(s).result())),
      ]);
      specs.forEach((s, i) => {
        expect(ra[i]!.tokens, s.id).toHaveLength(30);
        expect(ra[i]!.finish.reason).toBe("length");
        expect(rb[i]!.tokens, s.id).toEqual(ra[i]!.tokens);
      });
      expect(new Set(ra.map((r) => r.tokens.join())).size).toBe(specs.length);
      // Paced: each step takes its simulated 3 ms. Window: one batch of all 20, admitted 50 ms after the first arrival.
      expect(Math.min(...stepsB)).toBeGreaterThanOrEqual(2.9);
      expect(Math.max(...batchB)).toBe(20);
      const first = rb.map((r) => r.finish.times).sort((x, y) => x.arrival - y.arrival)[0]!;
      expect(first.firstScheduled! - first.arrival).toBeGreaterThanOrEqual(49);

      // Same ids, same tokens, in a second run on the same worker.
      const again = await Promise.all(specs.map((s) => a.submit(s).result()));
      expect(again.map((r) => r.tokens)).toEqual(ra.map((r) => r.tokens));
      expect(await a.stats()).toMatchObject({ running: 0, waiting: 0, kvUsage: 0 });
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });
});

describe("engine worker: start, close and failures", () => {
  it("sizes the KV pool: numBlocks, else the budget capped at maxNumSeqs full contexts", () => {
    const c = model.config;
    expect(kvCachePools(c, { numBlocks: 7 }, 64).numBlocks).toBe(7);
    expect(kvCachePools(c, {}, 64).numBlocks).toBe(
      Math.min(KVCacheStorage.blocksForBudget(c, 256 << 20), 128 * 64),
    );
    expect(kvCachePools(c, { kvCacheBytes: 1 << 20 }, 64).numBlocks).toBe(
      KVCacheStorage.blocksForBudget(c, 1 << 20),
    );
    expect(kvCachePools(c, { kvCacheBytes: 1 << 30 }, 2).numBlocks).toBe(256);
    expect(kvCachePools(c, { kvCacheBytes: 1 << 30, blockSize: 32 }, 2).numBlocks).toBe(128);
    expect(() => kvCachePools(c, { kvCacheBytes: 100 }, 64).numBlocks).toThrow(/holds no block/);
    expect(() => kvCachePools(c, { numBlocks: 0 }, 64).numBlocks).toThrow(SpindleError);
  });

  it("a model that cannot load makes start() throw the worker's one-line error", async () => {
    const start = EngineClient.start({ kind: "model", modelPath: "/nonexistent/model.gguf" });
    await expect(start).rejects.toBeInstanceOf(SpindleError);
    await expect(start).rejects.toMatchObject({
      name: "ModelFileError",
      code: "model_file_error",
      message: "/nonexistent/model.gguf: no such file",
    });
  });

  it("close() ends open streams with reason abort; later requests reject", async () => {
    const c = await EngineClient.start({
      kind: "model",
      modelPath,
      kvCacheBytes: 1 << 30,
      options: { maxNumSeqs: 2 },
    });
    expect(c.info.numBlocks).toBe(256); // capped: 2 sequences × 2048 tokens
    const open = c.submit({ prompt: [1, 2, 3], maxTokens: 1500, stopAtEog: false, sampling: greedy });
    await open[Symbol.asyncIterator]().next();
    const t0 = performance.now();
    await c.close();
    // The worker exits by itself after shutdown: close() does not wait for its 5 s timeout.
    expect(performance.now() - t0).toBeLessThan(2000);
    const r = await open.result();
    expect(r.finish.reason).toBe("abort");
    expect(r.finish.message).toBe("the engine is shutting down");
    await expect(c.submit({ prompt: [1], maxTokens: 1 }).result()).rejects.toThrow("the engine is closed");
    await expect(c.stats()).rejects.toThrow("the engine is closed");
    await c.close(); // idempotent
  });

  it("if the worker dies, every open stream rejects with a clear error", async () => {
    const init: EngineInit = {
      kind: "sim",
      sim: {
        numBlocks: 64,
        cost: { baseMs: 2, perPrefillTokenMs: 0, perDecodeSeqMs: 0, perAttendedTokenMs: 0 },
      },
      pace: true,
    };
    const c = await EngineClient.start(init);
    const streams = Array.from({ length: 5 }, () => c.submit({ prompt: [1, 2, 3], maxTokens: 1000 }));
    const it = streams[0]![Symbol.asyncIterator]();
    await it.next();
    await (c as unknown as { worker: Worker }).worker.terminate();
    const crashed = /^the engine worker stopped unexpectedly \(exit code 1\)$/;
    for (const s of streams) await expect(s.result()).rejects.toThrow(crashed);
    await expect(collect(streams[1]!)).rejects.toThrow(crashed);
    await expect(c.submit({ prompt: [1], maxTokens: 1 }).result()).rejects.toThrow(crashed);
    await expect(c.stats()).rejects.toThrow(crashed);
    await c.close();
  });
});
