import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Backend } from "../../src/backends/backend.js";
import { startEngineBackend } from "../../src/backends/engine-backend.js";
import { startLlamaCppBackend } from "../../src/backends/llamacpp-backend.js";
import type { EngineEvent } from "../../src/protocol/events.js";
import type { SubmitSpec } from "../../src/protocol/request.js";
import { STORIES_260K, testModel } from "../helpers/models.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

/**
 * The llamacpp backend on stories260K, against the local engine (same model,
 * same tokenizer): greedy parity, concurrency without mix-ups, stops, aborts,
 * logprobs, sampling refusals, the measured thread choice, and the HTTP path
 * with the official openai client.
 */

const MODEL = testModel(STORIES_260K);
const PROMPTS = [
  "Once upon a time",
  "Lily wanted to",
  "The dog ran",
  "One day, a big",
  "Tom and Sue went to the park and",
  "The sun",
];

let llamacpp: Backend; // threads "auto", 4 slots
let local: Backend;

const encode = (text: string) => llamacpp.tokenizer.encode(text, { addSpecial: true });
const greedy = (text: string, maxTokens = 32): SubmitSpec => ({
  prompt: encode(text),
  maxTokens,
  sampling: { temperature: 0 },
});

beforeAll(async () => {
  [llamacpp, local] = await Promise.all([
    startLlamaCppBackend({ kind: "llamacpp", modelPath: MODEL, parallel: 4 }),
    startEngineBackend({ kind: "local", modelPath: MODEL }),
  ]);
});

afterAll(async () => {
  await Promise.all([llamacpp?.close(), local?.close()]);
});

describe("llamacpp backend", () => {
  it("reports the model and the measured thread choice", () => {
    const { info } = llamacpp;
    expect(info.kind).toBe("llamacpp");
    expect(info.vocabSize).toBe(local.info.vocabSize);
    expect(info.bos).toBe(local.info.bos);
    expect(info.eos).toBe(local.info.eos);
    expect(info.eogTokens).toEqual(local.info.eogTokens);
    expect(info.contextLength).toBeGreaterThan(64);
    const d = info.details;
    expect(d.parallel).toBe(4);
    expect(d.threadChoice).toBe("auto");
    const rates = d.threadRates as Record<number, number>;
    const tried = Object.keys(rates).map(Number);
    expect(tried).toContain(1);
    for (const r of Object.values(rates)) expect(r).toBeGreaterThan(0);
    // The chosen count is the faster one measured.
    const best = tried.reduce((a, b) => (rates[b]! > rates[a]! ? b : a));
    expect(d.threads).toBe(best);
    expect(d.threadLine).toMatch(/^llama\.cpp threads: \d+ \(auto: 1 thread \d+ tok\/s/);
  });

  it("greedy output equals the local engine's", async () => {
    for (const text of PROMPTS.slice(0, 3)) {
      const [a, b] = await Promise.all([
        llamacpp.submit(greedy(text)).result(),
        local.submit(greedy(text)).result(),
      ]);
      expect(a.tokens).toEqual(b.tokens);
      expect(a.text).toBe(b.text);
      expect(a.finish.reason).toBe(b.finish.reason);
      expect(a.finish.completionTokens).toBe(32);
    }
  });

  it("concurrent requests (more than the slots) each get their answer alone", async () => {
    const alone = [];
    for (const text of PROMPTS) alone.push((await llamacpp.submit(greedy(text, 24)).result()).tokens);
    let maxRunning = 0;
    const off = llamacpp.onQueue!((q) => {
      maxRunning = Math.max(maxRunning, q.running);
    });
    const together = await Promise.all(PROMPTS.map((t) => llamacpp.submit(greedy(t, 24)).result()));
    off();
    expect(together.map((r) => r.tokens)).toEqual(alone);
    expect(maxRunning).toBe(4);
  });

  it("stops at stop strings and max_tokens, and at EOG unless told not to", async () => {
    const full = await llamacpp.submit(greedy("Once upon a time")).result();
    expect(full.text).toContain(" Lily");
    const stopped = await llamacpp.submit({ ...greedy("Once upon a time"), stop: [" Lily"] }).result();
    expect(stopped.finish.reason).toBe("stop");
    expect(stopped.text).toBe(full.text.slice(0, full.text.indexOf(" Lily")));

    const short = await llamacpp.submit(greedy("Once upon a time", 5)).result();
    expect(short.finish.reason).toBe("length");
    expect(short.finish.completionTokens).toBe(5);
    expect(short.tokens).toEqual(full.tokens.slice(0, 5));

    // Biasing EOS up makes it the first token: the request stops there, or, with stopAtEog false, goes on.
    const eos = llamacpp.info.eos!;
    const sampling = { temperature: 0, logitBias: new Map([[eos, 100]]) };
    const eog = await llamacpp.submit({ prompt: encode("The sun"), maxTokens: 8, sampling }).result();
    expect(eog.finish).toMatchObject({ reason: "stop", eogToken: eos, completionTokens: 0 });
    const ignored = await llamacpp
      .submit({ prompt: encode("The sun"), maxTokens: 3, sampling, stopAtEog: false })
      .result();
    expect(ignored.tokens).toEqual([eos, eos, eos]);
    expect(ignored.finish.reason).toBe("length");
  });

  it("logprobs are the raw distribution's, like the local engine's", async () => {
    const spec: SubmitSpec = { ...greedy("Lily wanted to", 8), sampling: { temperature: 0, logprobs: 3 } };
    const [a, b] = await Promise.all([llamacpp.submit(spec), local.submit(spec)].map(events));
    const la = a.flatMap((e) => e.logprobs ?? []);
    const lb = b.flatMap((e) => e.logprobs ?? []);
    expect(la.length).toBe(8);
    expect(la.map((s) => s.token)).toEqual(lb.map((s) => s.token));
    for (let i = 0; i < la.length; i++) {
      expect(la[i]!.logprob).toBeCloseTo(lb[i]!.logprob, 2);
      expect(la[i]!.topLogprobs.map((t) => t.token)).toEqual(lb[i]!.topLogprobs.map((t) => t.token));
    }
  });

  it("greedy with penalties and logit bias equals the local engine's (same arithmetic, same order)", async () => {
    const lily = llamacpp.tokenizer.encode(" Lily")[0]!;
    for (const sampling of [
      { repetitionPenalty: 1.5, frequencyPenalty: 0.5, presencePenalty: 0.3, penaltyLastN: 16 },
      { repetitionPenalty: 1.2, frequencyPenalty: 0.2, penaltyLastN: -1, logitBias: new Map([[lily, -5]]) },
    ]) {
      const spec: SubmitSpec = { ...greedy("Once upon a time"), sampling: { temperature: 0, ...sampling } };
      const [a, b] = await Promise.all([llamacpp.submit(spec).result(), local.submit(spec).result()]);
      expect(a.tokens).toEqual(b.tokens);
      expect(a.tokens).not.toEqual((await local.submit(greedy("Once upon a time")).result()).tokens);
    }
  });

  it("seeded sampling with penalties is reproducible", async () => {
    const spec = (seed: number): SubmitSpec => ({
      prompt: encode("Once upon a time"),
      maxTokens: 24,
      sampling: {
        temperature: 0.9,
        topK: 40,
        topP: 0.95,
        repetitionPenalty: 1.3,
        presencePenalty: 0.5,
        seed,
      },
    });
    const [a, b] = await Promise.all([llamacpp.submit(spec(7)).result(), llamacpp.submit(spec(7)).result()]);
    expect(a.tokens).toEqual(b.tokens);
    expect(a.tokens.length).toBeGreaterThan(0);
  });

  it("refuses bad sampling parameters with the parameter's name", async () => {
    const s = llamacpp.submit({
      prompt: encode("The sun"),
      maxTokens: 4,
      sampling: { logitBias: new Map([[llamacpp.info.vocabSize + 5, 1]]) },
    });
    await expect(s.result()).rejects.toMatchObject({ code: "invalid_request_error", message: /logit_bias/ });
  });
});

describe("llamacpp backend, one slot", () => {
  let one: Backend;
  beforeAll(async () => {
    one = await startLlamaCppBackend({ kind: "llamacpp", modelPath: MODEL, parallel: 1, threads: 1 });
  });
  afterAll(() => one?.close());

  it("an abort mid-generation ends the request and frees the slot", async () => {
    const alone = await one.submit(greedy("The dog ran")).result();
    expect(one.info.details).toMatchObject({ threads: 1, threadChoice: "fixed" });
    const long = one.submit({ prompt: encode("Once upon a time"), maxTokens: 1500, stopAtEog: false });
    // Waiting behind it on the only slot:
    const next = one.submit(greedy("The dog ran"));
    let seen = 0;
    let finish: EngineEvent["finish"];
    for await (const e of long) {
      seen += e.tokens.length;
      if (seen >= 3) long.abort("enough");
      if (e.finish) finish = e.finish;
    }
    expect(finish?.reason).toBe("abort");
    expect(finish?.completionTokens).toBeLessThan(1500);
    const r = await next.result();
    expect(r.tokens).toEqual(alone.tokens);
    expect(r.finish.reason).toBe("length");
  });

  it("reuses the slot's common prompt prefix (cached tokens) without changing the output", async () => {
    const prompt = encode("Tom and Sue went to the park and");
    const first = await one.submit({ prompt, maxTokens: 16, sampling: { temperature: 0 } }).result();
    const again = await one.submit({ prompt, maxTokens: 16, sampling: { temperature: 0 } }).result();
    expect(again.tokens).toEqual(first.tokens);
    expect(again.finish.cachedTokens).toBe(prompt.length - 1);
    const other = await one
      .submit({ prompt: encode("Tom and Sue"), maxTokens: 16, sampling: { temperature: 0 } })
      .result();
    expect(other.finish.cachedTokens).toBe(encode("Tom and Sue").length - 1);
    expect(other.tokens).toEqual((await local.submit(greedy("Tom and Sue", 16)).result()).tokens);
  });
});

describe("llamacpp backend, short context", () => {
  it("stops at the context length, and close() aborts what is in flight", async () => {
    const b = await startLlamaCppBackend({
      kind: "llamacpp",
      modelPath: MODEL,
      parallel: 1,
      threads: 1,
      contextLength: 32,
    });
    try {
      expect(b.info.contextLength).toBe(32);
      const prompt = encode("Tom and Sue went to the park and");
      const r = await b.submit({ prompt, maxTokens: 100, stopAtEog: false }).result();
      expect(r.finish.reason).toBe("length");
      expect(prompt.length + r.finish.completionTokens).toBe(32);
      // A prompt that fills the context is refused before it reaches llama.cpp.
      await expect(
        b.submit({ prompt: new Array(32).fill(prompt[1]!), maxTokens: 1 }).result(),
      ).rejects.toMatchObject({ code: "context_length_exceeded" });

      const inflight = b.submit({ prompt, maxTokens: 20, stopAtEog: false });
      const waiting = b.submit({ prompt, maxTokens: 20 });
      const it = inflight[Symbol.asyncIterator]();
      await it.next();
      await b.close();
      const rest = await drain(it);
      expect(rest.at(-1)?.finish?.reason).toBe("abort");
      expect((await waiting.result()).finish.reason).toBe("abort");
    } finally {
      await b.close();
    }
  });
});

describe("llamacpp backend over HTTP", () => {
  let srv: TestServer;
  beforeAll(async () => {
    srv = await startTestServer({ backend: { kind: "llamacpp", modelPath: MODEL, parallel: 2, threads: 1 } });
  });
  afterAll(() => srv?.close());

  it("serves completions to the official openai client", async () => {
    const client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "none" });
    const models = await client.models.list();
    const model = models.data[0]!.id;
    const c = await client.completions.create({
      model,
      prompt: "Once upon a time",
      max_tokens: 16,
      temperature: 0,
    });
    const direct = await local.submit(greedy("Once upon a time", 16)).result();
    expect(c.choices[0]!.text).toBe(direct.text);
    expect(c.choices[0]!.finish_reason).toBe("length");
    expect(c.usage?.completion_tokens).toBe(16);

    const stream = await client.completions.create({
      model,
      prompt: "Once upon a time",
      max_tokens: 16,
      temperature: 0,
      stream: true,
    });
    let text = "";
    for await (const chunk of stream) text += chunk.choices[0]?.text ?? "";
    expect(text).toBe(direct.text);
  });
});

async function events(s: AsyncIterable<EngineEvent>): Promise<EngineEvent[]> {
  const out: EngineEvent[] = [];
  for await (const e of s) out.push(e);
  return out;
}

async function drain(it: AsyncIterator<EngineEvent>): Promise<EngineEvent[]> {
  const out: EngineEvent[] = [];
  for (let r = await it.next(); !r.done; r = await it.next()) out.push(r.value);
  return out;
}
