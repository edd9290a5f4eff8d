import { Ollama } from "ollama";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { engineStats, startTestServer, type TestServer } from "../helpers/server.js";

/**
 * Ollama's API, driven by the official `ollama` npm client, unmodified, against a real server on
 * 127.0.0.1 serving stories260K: generate and chat, streamed (NDJSON) and whole; list, show, ps,
 * version; greedy output equal to the OpenAI routes' for the same rendered prompt (and, since Spindle
 * applies Ollama's default options, with repeat_penalty 1.1 on the OpenAI side); Ollama's counts and
 * nanosecond durations; a client abort mid-stream frees the engine.
 */

let srv: TestServer;
let ollama: Ollama;
let model: string;

beforeAll(async () => {
  // After an aborted fetch, undici may keep a connection that sends nothing: do not wait it out.
  srv = await startTestServer({ shutdownTimeoutMs: 1000 });
  model = srv.server.ctx.opts.modelName;
  ollama = new Ollama({ host: srv.url });
});
afterAll(async () => {
  await srv?.close();
});

async function post(path: string, body: Record<string, unknown>) {
  const res = await fetch(srv.url + path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

/** What every final line carries: Ollama's counts and durations (integers, nanoseconds). */
function expectStats(r: Record<string, unknown>, maxEval: number) {
  expect(r.done).toBe(true);
  expect(["stop", "length"]).toContain(r.done_reason);
  for (const k of [
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
  ]) {
    expect(Number.isSafeInteger(r[k]), k).toBe(true);
    expect(r[k] as number, k).toBeGreaterThanOrEqual(0);
  }
  expect(r.prompt_eval_count as number).toBeGreaterThan(0);
  expect(r.eval_count as number).toBeGreaterThan(0);
  expect(r.eval_count as number).toBeLessThanOrEqual(maxEval);
  // Whole-request time covers the prefill and the decode, so it is at least their sum.
  expect(r.total_duration as number).toBeGreaterThanOrEqual(
    (r.prompt_eval_duration as number) + (r.eval_duration as number),
  );
  if (r.done_reason === "length") expect(r.eval_count).toBe(maxEval);
}

const GREEDY = { temperature: 0, seed: 7, num_predict: 24 };
const PROMPT = "Once upon a time, there was a little dog";
const MESSAGES = [
  { role: "system", content: "You tell short stories." },
  { role: "user", content: "Tell me about a cat." },
];

describe("Ollama API with the official client", () => {
  it("version, and / answers 'Ollama is running' (GET and HEAD)", async () => {
    const v = await ollama.version();
    const pkg = (await (await fetch(`${srv.url}/version`)).json()) as { version: string };
    expect(v.version).toBe(pkg.version);
    const root = await fetch(`${srv.url}/`);
    expect(root.status).toBe(200);
    expect(await root.text()).toBe("Ollama is running");
    const head = await fetch(`${srv.url}/`, { method: "HEAD" });
    expect(head.status).toBe(200);
  });

  it("list (tags) names the served model with its GGUF facts", async () => {
    const { models } = await ollama.list();
    expect(models).toHaveLength(1);
    const m = models[0]!;
    expect(m.name).toBe(`${model}:latest`);
    expect(m.model).toBe(`${model}:latest`);
    expect(m.size).toBe(1_185_376); // stories260K.gguf's size (MODELS.md)
    expect(m.digest).toBe("270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d");
    expect(m.details).toMatchObject({ format: "gguf", family: "llama", families: ["llama"] });
    expect(m.details.parameter_size).toMatch(/^\d+K$/);
    expect(m.details.quantization_level).toMatch(/^[A-Z0-9_]+$/);
    expect(Number.isNaN(Date.parse(m.modified_at as unknown as string))).toBe(false);
  });

  it("show gives details and model_info from the GGUF; ps lists the model as loaded", async () => {
    const s = await ollama.show({ model });
    expect(s.details.family).toBe("llama");
    const info = s.model_info as unknown as Record<string, unknown>;
    expect(info["general.architecture"]).toBe("llama");
    expect(info["llama.context_length"]).toBe(srv.server.ctx.model!.info.contextLength);
    expect(info["llama.block_count"]).toBe(5);
    expect(info["general.parameter_count"] as number).toBeGreaterThan(100_000);
    expect(s.parameters).toMatch(/temperature 0\.8/);
    expect(s.capabilities).toEqual(["completion"]);

    const { models } = await ollama.ps();
    expect(models).toHaveLength(1);
    expect(models[0]!.name).toBe(`${model}:latest`);
    expect(models[0]!.size_vram).toBe(0);
    expect(models[0]!.size).toBeGreaterThanOrEqual(1_185_376);
    expect(Date.parse(models[0]!.expires_at as unknown as string)).toBeGreaterThan(Date.now());
  });

  it("generate raw, not streamed, greedy: the same text as /v1/completions", async () => {
    const r = await ollama.generate({ model, prompt: PROMPT, raw: true, stream: false, options: GREEDY });
    expect(r.model).toBe(model);
    expectStats(r as unknown as Record<string, unknown>, GREEDY.num_predict);
    const ref = await post("/v1/completions", {
      model,
      prompt: PROMPT,
      max_tokens: GREEDY.num_predict,
      temperature: 0,
      repetition_penalty: 1.1, // Ollama's default repeat_penalty, which Spindle applies
    });
    expect(ref.status).toBe(200);
    const choice = (ref.json.choices as { text: string; finish_reason: string }[])[0]!;
    expect(r.response?.length).toBeGreaterThan(0);
    expect(r.response).toBe(choice.text);
    expect(r.done_reason).toBe(choice.finish_reason);
    const usage = ref.json.usage as { prompt_tokens: number; completion_tokens: number };
    expect(r.prompt_eval_count).toBe(usage.prompt_tokens);
    expect(r.eval_count).toBe(usage.completion_tokens);
  });

  it("generate streamed: NDJSON lines add up to the whole answer, the last one has the stats", async () => {
    const whole = await ollama.generate({ model, prompt: PROMPT, raw: true, stream: false, options: GREEDY });
    const parts: string[] = [];
    let last: Record<string, unknown> | undefined;
    let lines = 0;
    for await (const part of await ollama.generate({
      model: `${model}:latest`,
      prompt: PROMPT,
      raw: true,
      stream: true,
      options: GREEDY,
    })) {
      lines++;
      expect(part.model).toBe(`${model}:latest`);
      if (part.done) last = part as unknown as Record<string, unknown>;
      else {
        expect(part.response?.length).toBeGreaterThan(0);
        parts.push(part.response ?? "");
      }
    }
    expect(lines).toBeGreaterThan(2);
    expect(parts.join("")).toBe(whole.response);
    expect(last).toBeDefined();
    expectStats(last!, GREEDY.num_predict);
    expect(last!.eval_count).toBe(whole.eval_count);
  });

  it("the stream's wire format is application/x-ndjson, one JSON object per line", async () => {
    const res = await fetch(`${srv.url}/api/generate`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model, prompt: PROMPT, options: { ...GREEDY, num_predict: 4 } }), // stream defaults to true
    });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/^application\/x-ndjson/);
    const text = await res.text();
    expect(text.endsWith("\n")).toBe(true);
    const lines = text
      .trimEnd()
      .split("\n")
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines.length).toBeGreaterThan(1);
    expect(lines.slice(0, -1).every((l) => l.done === false && typeof l.created_at === "string")).toBe(true);
    expect(lines.at(-1)!.done).toBe(true);
  });

  it("generate with the template: the same text as /v1/chat/completions for that conversation", async () => {
    const r = await ollama.generate({
      model,
      system: MESSAGES[0]!.content,
      prompt: MESSAGES[1]!.content,
      stream: false,
      options: GREEDY,
    });
    const ref = await post("/v1/chat/completions", {
      model,
      messages: MESSAGES,
      max_tokens: GREEDY.num_predict,
      temperature: 0,
      repetition_penalty: 1.1,
    });
    expect(ref.status).toBe(200);
    const choice = (ref.json.choices as { message: { content: string } }[])[0]!;
    expect(r.response).toBe(choice.message.content);
    expect(r.prompt_eval_count).toBe((ref.json.usage as { prompt_tokens: number }).prompt_tokens);
  });

  it("chat, not streamed and streamed, greedy: the same text as /v1/chat/completions", async () => {
    const r = await ollama.chat({ model, messages: MESSAGES, stream: false, options: GREEDY });
    expect(r.message.role).toBe("assistant");
    expectStats(r as unknown as Record<string, unknown>, GREEDY.num_predict);
    const ref = await post("/v1/chat/completions", {
      model,
      messages: MESSAGES,
      max_tokens: GREEDY.num_predict,
      temperature: 0,
      repetition_penalty: 1.1,
    });
    const choice = (ref.json.choices as { message: { content: string } }[])[0]!;
    expect(r.message.content.length).toBeGreaterThan(0);
    expect(r.message.content).toBe(choice.message.content);

    let streamed = "";
    let final: Record<string, unknown> | undefined;
    for await (const part of await ollama.chat({
      model,
      messages: MESSAGES,
      stream: true,
      options: GREEDY,
    })) {
      expect(part.message.role).toBe("assistant");
      streamed += part.message.content;
      if (part.done) final = part as unknown as Record<string, unknown>;
    }
    expect(streamed).toBe(r.message.content);
    expectStats(final!, GREEDY.num_predict);
  });

  it("num_predict caps the answer (done_reason length); stop strings end it (done_reason stop)", async () => {
    const short = await ollama.generate({
      model,
      prompt: PROMPT,
      raw: true,
      stream: false,
      options: { ...GREEDY, num_predict: 3 },
    });
    expect(short.eval_count).toBe(3);
    expect(short.done_reason).toBe("length");
    const full = await ollama.generate({ model, prompt: PROMPT, raw: true, stream: false, options: GREEDY });
    const fullText = full.response ?? "";
    const word = fullText.trim().split(/\s+/)[2]!;
    const stopped = await ollama.generate({
      model,
      prompt: PROMPT,
      raw: true,
      stream: false,
      options: { ...GREEDY, stop: [word] },
    });
    expect(stopped.done_reason).toBe("stop");
    expect(stopped.response).toBe(fullText.slice(0, fullText.indexOf(word)));
  });

  it("a seed makes sampling reproducible; num_ctx below the model's bounds the request", async () => {
    const opts = { temperature: 1, seed: 1234, num_predict: 16 };
    const a = await ollama.generate({ model, prompt: PROMPT, raw: true, stream: false, options: opts });
    const b = await ollama.generate({ model, prompt: PROMPT, raw: true, stream: false, options: opts });
    expect(a.response).toBe(b.response);
    // num_ctx: prompt + output never exceed it.
    const n = a.prompt_eval_count + 5;
    const capped = await ollama.generate({
      model,
      prompt: PROMPT,
      raw: true,
      stream: false,
      options: { ...GREEDY, num_predict: 100, num_ctx: n },
    });
    expect(capped.prompt_eval_count + capped.eval_count).toBeLessThanOrEqual(n);
  });

  it("an empty prompt or no messages only 'loads' the model (done_reason load), as Ollama does", async () => {
    const g = await ollama.generate({ model, prompt: "", stream: false });
    expect(g).toMatchObject({ done: true, done_reason: "load", response: "" });
    const c = await ollama.chat({ model, messages: [], stream: false, keep_alive: "5m" });
    expect(c).toMatchObject({ done: true, done_reason: "load" });
  });

  it("errors reach the client as Ollama's errors (ResponseError with the message and status)", async () => {
    await expect(ollama.generate({ model: "llama3", prompt: "hi", stream: false })).rejects.toMatchObject({
      name: "ResponseError",
      status_code: 404,
      error: 'model "llama3" not found',
    });
    await expect(
      ollama.chat({ model, messages: MESSAGES, format: "yaml", stream: false }),
    ).rejects.toMatchObject({ status_code: 400, error: expect.stringMatching(/^format must be "json"/) });
  });

  it("abort() mid-stream frees the request in the engine", async () => {
    const metrics = srv.server.ctx.metrics;
    const abortsBefore = metrics.clientAborts;
    const stream = await ollama.generate({
      model,
      prompt: PROMPT,
      raw: true,
      stream: true,
      // Sampled, and with room for the whole context, so that it is still generating when aborted.
      options: { temperature: 1, seed: 3, num_predict: -1 },
    });
    let seen = 0;
    await expect(
      (async () => {
        for await (const part of stream) {
          expect(part.done).toBe(false);
          if (++seen === 2) stream.abort();
        }
      })(),
    ).rejects.toThrow(/abort/i);
    // Lines already received when abort() was called are still handed out.
    expect(seen).toBeGreaterThanOrEqual(2);
    // The engine lets go of the request once the server sees the connection close.
    for (;;) {
      const s = await engineStats(srv);
      if (metrics.clientAborts > abortsBefore && s.running === 0 && s.unfinished === 0) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    const s = await engineStats(srv);
    expect(s).toMatchObject({ running: 0, waiting: 0, unfinished: 0, kvUsage: 0 });
    expect(metrics.clientAborts).toBe(abortsBefore + 1);
    expect(srv.server.ctx.service.numInFlight).toBe(0);
  });

  it("a request timeout is a 504 before the stream starts, one NDJSON error line after", async () => {
    const slow = await startTestServer({ requestTimeoutMs: 60 });
    try {
      const c = new Ollama({ host: slow.url });
      // Greedy, stories260K fills the whole context (about 2000 tokens): far longer than 60 ms.
      const body = { model, prompt: PROMPT, raw: true, options: { temperature: 0, num_predict: -1 } };
      await expect(c.generate({ ...body, stream: false })).rejects.toMatchObject({
        name: "ResponseError",
        status_code: 504,
        error: expect.stringMatching(/^the request was aborted/),
      });
      // The first tokens usually arrive within 60 ms, so the timeout comes as an error line, which the
      // client throws; on a loaded machine it may come first, as a 504.
      const err = await (async () => {
        for await (const _ of await c.generate({ ...body, stream: true })) {
        }
      })().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(Error);
      expect((err as Error).message).toMatch(/the request was aborted/);
      // And on the wire: NDJSON lines, the last one {"error": "..."} alone.
      const res = await fetch(`${slow.url}/api/chat`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model, messages: MESSAGES, options: body.options }),
      });
      const text = await res.text();
      const last = JSON.parse(text.trimEnd().split("\n").at(-1)!) as Record<string, unknown>;
      expect(Object.keys(last)).toEqual(["error"]);
      expect(last.error).toMatch(/the request was aborted/);
      if (res.status === 200) expect(res.headers.get("content-type")).toMatch(/^application\/x-ndjson/);
      else expect(res.status).toBe(504);
      expect(slow.server.ctx.service.numInFlight).toBe(0);
    } finally {
      await slow.close();
    }
  });
});
