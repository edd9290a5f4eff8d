import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LLAMA_SERVER_DEFAULTS } from "../../src/server/routes/llama-server.js";
import { STORIES_260K, testModel } from "../helpers/models.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

/** llama-server's native routes (/completion, /props) against a real server with stories260K. */

// biome-ignore lint/suspicious/noExplicitAny: response bodies are JSON; the assertions check their shape
type Json = Record<string, any>;

let srv: TestServer;
let contextLength: number;

beforeAll(async () => {
  srv = await startTestServer();
  contextLength = srv.server.ctx.model!.info.contextLength;
});
afterAll(async () => {
  await srv?.close();
});

async function post(path: string, body: unknown): Promise<{ status: number; body: Json }> {
  const res = await fetch(`${srv.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: (await res.json()) as Json };
}

/** The data of every server-sent event of a streamed response, and the raw text. */
async function stream(path: string, body: unknown): Promise<{ status: number; events: Json[]; raw: string }> {
  const res = await fetch(`${srv.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  expect(res.headers.get("content-type")).toMatch(/^text\/event-stream/);
  const raw = await res.text();
  const events = raw
    .split("\n\n")
    .filter((b) => b.trim().length > 0)
    .map((b) => {
      expect(b.startsWith("data: ")).toBe(true);
      return JSON.parse(b.slice(6)) as Json;
    });
  return { status: res.status, events, raw };
}

/** /v1/completions' greedy text and usage, the reference /completion must match. */
async function openaiGreedy(prompt: string | number[], maxTokens: number, extra: Json = {}) {
  const r = await post("/v1/completions", { prompt, max_tokens: maxTokens, temperature: 0, ...extra });
  expect(r.status, JSON.stringify(r.body)).toBe(200);
  return {
    text: r.body.choices[0].text as string,
    usage: r.body.usage as Json,
    finish: r.body.choices[0].finish_reason,
  };
}

const PROMPTS = ["Once upon a time", "Lily and Ben went to the park.", "The little dog"];

function expectConsistentTimings(b: Json): void {
  const t = b.timings;
  expect(t.predicted_n).toBe(b.tokens_predicted);
  expect(t.prompt_n).toBeGreaterThan(0);
  expect(t.prompt_n).toBeLessThanOrEqual(b.tokens_evaluated);
  expect(t.prompt_n).toBe(b.tokens_evaluated - b.tokens_cached);
  for (const k of ["prompt_ms", "prompt_per_token_ms", "prompt_per_second"]) expect(t[k]).toBeGreaterThan(0);
  expect(t.prompt_per_token_ms * t.prompt_n).toBeCloseTo(t.prompt_ms, 6);
  expect(t.prompt_per_second).toBeCloseTo((1000 * t.prompt_n) / t.prompt_ms, 6);
  if (b.tokens_predicted > 1) {
    for (const k of ["predicted_ms", "predicted_per_token_ms", "predicted_per_second"])
      expect(t[k]).toBeGreaterThan(0);
    expect(t.predicted_per_token_ms * t.predicted_n).toBeCloseTo(t.predicted_ms, 6);
    expect(t.predicted_per_second).toBeCloseTo((1000 * t.predicted_n) / t.predicted_ms, 6);
  }
}

describe("POST /completion", () => {
  it("greedy content equals /v1/completions' text for the same prompt and max tokens, with llama-server's fields", async () => {
    for (const [i, prompt] of PROMPTS.entries()) {
      const n = 8 + i * 7;
      const ref = await openaiGreedy(prompt, n);
      const r = await post("/completion", { prompt, n_predict: n, temperature: 0 });
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      const b = r.body;
      expect(b.content).toBe(ref.text);
      expect(b.stop).toBe(true);
      expect(b.model).toBe(srv.server.ctx.opts.modelName);
      expect(b.tokens_predicted).toBe(ref.usage.completion_tokens);
      expect(b.tokens_evaluated).toBe(ref.usage.prompt_tokens);
      expect(b.stop_type).toBe(ref.finish === "length" ? "limit" : "eos");
      expect(b.stopping_word).toBe("");
      expect(b.truncated).toBe(false);
      expect(b.tokens).toEqual([]);
      expectConsistentTimings(b);
    }
  });

  it("max_tokens is n_predict's alias; a prompt of token ids answers as its text does", async () => {
    const ids = (await post("/tokenize", { prompt: PROMPTS[0] })).body.tokens as number[];
    const byText = await post("/completion", { prompt: PROMPTS[0], n_predict: 12, temperature: 0 });
    const byIds = await post("/completion", { prompt: ids, max_tokens: 12, temperature: 0 });
    expect(byIds.status).toBe(200);
    expect(byIds.body.content).toBe(byText.body.content);
    expect(byIds.body.tokens_evaluated).toBe(ids.length);
    expect(byIds.body.tokens_predicted).toBe(12);
  });

  it("return_tokens lists the generated ids; they decode to the content", async () => {
    const r = await post("/completion", {
      prompt: PROMPTS[1],
      n_predict: 10,
      temperature: 0,
      return_tokens: true,
    });
    expect(r.body.tokens).toHaveLength(r.body.tokens_predicted);
    const text = (await post("/detokenize", { tokens: r.body.tokens })).body.prompt as string;
    expect(text.trim()).toBe((r.body.content as string).trim());
  });

  it("n_predict -1 (the default) runs to EOS or to the end of the context, like max_tokens = the room left", async () => {
    const prompt = PROMPTS[0]!;
    const r = await post("/completion", { prompt, temperature: 0 });
    expect(r.status).toBe(200);
    const b = r.body;
    const room = contextLength - b.tokens_evaluated;
    const ref = await openaiGreedy(prompt, room);
    expect(b.content).toBe(ref.text);
    if (b.stop_type === "limit") expect(b.tokens_evaluated + b.tokens_predicted).toBe(contextLength);
    else {
      expect(b.stop_type).toBe("eos");
      expect(b.tokens_predicted).toBeLessThan(room);
    }
    // Without EOS it can only end at the context's end.
    const full = await post("/completion", { prompt, n_predict: -1, temperature: 0, ignore_eos: true });
    expect(full.body.stop_type).toBe("limit");
    expect(full.body.tokens_evaluated + full.body.tokens_predicted).toBe(contextLength);
    expectConsistentTimings(full.body);
  });

  it("a stop string ends the content right before it; stop_type word names it", async () => {
    const whole = (await post("/completion", { prompt: PROMPTS[0], n_predict: 24, temperature: 0 })).body
      .content as string;
    const word = whole.slice(10, 14);
    const r = await post("/completion", {
      prompt: PROMPTS[0],
      n_predict: 24,
      temperature: 0,
      stop: ["zzzq", word],
    });
    expect(r.body.stop_type).toBe("word");
    expect(r.body.stopping_word).toBe(word);
    expect(r.body.content).toBe(whole.slice(0, whole.indexOf(word)));
  });

  it("samples with llama-server's defaults; a given seed repeats", async () => {
    const body = { prompt: PROMPTS[2], n_predict: 16, seed: 1234 };
    const a = await post("/completion", body);
    const b = await post("/completion", body);
    expect(a.status).toBe(200);
    expect(a.body.content).toBe(b.body.content);
    expect(a.body.tokens_predicted).toBe(16);
  });

  it("streams {content, stop: false} chunks that join to the whole content, then one final event, no [DONE]", async () => {
    for (const prompt of PROMPTS) {
      const body = { prompt, n_predict: 20, temperature: 0 };
      const whole = await post("/completion", body);
      const s = await stream("/completion", { ...body, stream: true });
      expect(s.status).toBe(200);
      expect(s.raw).not.toContain("[DONE]");
      const last = s.events[s.events.length - 1]!;
      const chunks = s.events.slice(0, -1);
      expect(chunks.length).toBeGreaterThan(1);
      for (const c of chunks) {
        expect(c.stop).toBe(false);
        expect(typeof c.content).toBe("string");
      }
      expect(chunks.map((c) => c.content).join("")).toBe(whole.body.content);
      expect(last.stop).toBe(true);
      expect(last.content).toBe("");
      expect(last.tokens_predicted).toBe(whole.body.tokens_predicted);
      expect(last.tokens_evaluated).toBe(whole.body.tokens_evaluated);
      expect(last.stop_type).toBe(whole.body.stop_type);
      expectConsistentTimings(last);
    }
  });

  it("/completions is the same route", async () => {
    const a = await post("/completion", { prompt: PROMPTS[1], n_predict: 6, temperature: 0 });
    const b = await post("/completions", { prompt: PROMPTS[1], n_predict: 6, temperature: 0 });
    expect(b.body.content).toBe(a.body.content);
  });

  it("errors have llama-server's shape: {error: {code, message, type}}", async () => {
    const r = await post("/completion", { prompt: PROMPTS[0], n_predict: contextLength * 2 });
    expect(r.status).toBe(400);
    expect(Object.keys(r.body.error).sort()).toEqual(["code", "message", "type"]);
    expect(r.body.error.code).toBe(400);
    expect(r.body.error.type).toBe("invalid_request_error");
    expect(r.body.error.message).toMatch(/n_predict/);
  });
});

describe("GET /props", () => {
  it("reports the model's context, its defaults, slots, path and chat template", async () => {
    const res = await fetch(`${srv.url}/props`);
    expect(res.status).toBe(200);
    const b = (await res.json()) as Json;
    const health = (await (await fetch(`${srv.url}/health`)).json()) as Json;
    expect(b.default_generation_settings.n_ctx).toBe(contextLength);
    expect(b.default_generation_settings.n_ctx).toBe(health.max_model_len);
    const p = b.default_generation_settings.params;
    expect(p.temperature).toBe(LLAMA_SERVER_DEFAULTS.temperature);
    expect(p.top_k).toBe(LLAMA_SERVER_DEFAULTS.top_k);
    expect(p.n_predict).toBe(-1);
    expect(Number.isInteger(b.total_slots) && b.total_slots >= 1).toBe(true);
    expect(b.model_path).toBe(testModel(STORIES_260K));
    expect(typeof b.chat_template).toBe("string");
    expect(b.build_info).toMatch(/^spindle /);
  });
});
