import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generate } from "../../src/model/generate.js";
import { loadModel } from "../../src/model/model.js";
import type { FinishInfo } from "../../src/protocol/events.js";
import { tgiFinishReason } from "../../src/server/routes/tgi.js";
import { STORIES_260K, testModel } from "../helpers/models.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

const model = loadModel(testModel(STORIES_260K));
const tok = model.tokenizer;

let srv: TestServer;

beforeAll(async () => {
  srv = await startTestServer();
});
afterAll(async () => {
  await srv?.close();
});

// biome-ignore lint/suspicious/noExplicitAny: response bodies are JSON; the assertions check their shape
type Json = Record<string, any>;

async function post(path: string, body: unknown): Promise<{ status: number; body: Json }> {
  const res = await fetch(`${srv.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: (await res.json()) as Json };
}

/** The data of every server-sent event of a /generate_stream response. */
async function stream(body: unknown): Promise<{ status: number; type: string; events: Json[]; raw: string }> {
  const res = await fetch(`${srv.url}/generate_stream`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const raw = await res.text();
  const events = raw
    .split("\n\n")
    .filter((b) => b.trim().length > 0)
    .map((b) => {
      expect(b.startsWith("data:")).toBe(true);
      return JSON.parse(b.slice(5)) as Json;
    });
  return { status: res.status, type: res.headers.get("content-type") ?? "", events, raw };
}

const PROMPTS = [
  "Once upon a time",
  "Lily and Ben went to the park.",
  "The little dog",
  "Tom had a red ball. He",
];

describe("POST /generate", () => {
  it("greedy (do_sample false) output equals the in-process reference, with TGI's details", async () => {
    for (const [i, prompt] of PROMPTS.entries()) {
      const maxTokens = 10 + i * 9;
      const ref = generate(model, prompt, { maxTokens, sampling: { temperature: 0 } });
      const r = await post("/generate", {
        inputs: prompt,
        parameters: { max_new_tokens: maxTokens, do_sample: false, details: true },
      });
      expect(r.status).toBe(200);
      expect(r.body.generated_text).toBe(ref.text);
      const d = r.body.details;
      expect(d.finish_reason).toBe("length");
      expect(d.generated_tokens).toBe(maxTokens);
      expect(d.seed).toBeNull();
      expect(d.prefill).toEqual([]);
      expect(d.tokens.map((t: Json) => t.id)).toEqual(ref.tokens);
      expect(d.tokens.map((t: Json) => t.text).join("")).toBe(ref.text);
      for (const t of d.tokens) {
        expect(t.special).toBe(false);
        expect(t.logprob).toBeLessThanOrEqual(0);
      }
    }
  });

  it("accepts `prompt` for `inputs`; without details there are none; return_full_text prepends the input", async () => {
    const ref = generate(model, "The bird sang", { maxTokens: 12, sampling: { temperature: 0 } });
    const a = await post("/generate", { prompt: "The bird sang", parameters: { max_new_tokens: 12 } });
    expect(a.status).toBe(200);
    expect(a.body).toEqual({ generated_text: ref.text });
    const b = await post("/generate", {
      inputs: "The bird sang",
      parameters: { max_new_tokens: 12, return_full_text: true },
    });
    expect(b.body.generated_text).toBe(`The bird sang${ref.text}`);
  });

  it("stops at a stop sequence (finish_reason stop_sequence, text before it)", async () => {
    const ref = generate(model, "Once upon a time", { maxTokens: 30, sampling: { temperature: 0 } });
    const cut = ref.text.indexOf(" named");
    expect(cut).toBeGreaterThan(0);
    const r = await post("/generate", {
      inputs: "Once upon a time",
      parameters: { max_new_tokens: 30, stop: [" named"], details: true },
    });
    expect(r.body.generated_text).toBe(ref.text.slice(0, cut));
    expect(r.body.details.finish_reason).toBe("stop_sequence");
  });

  it("samples with do_sample: a given seed repeats and is reported; without one a seed is chosen", async () => {
    const params = {
      max_new_tokens: 16,
      do_sample: true,
      temperature: 0.9,
      top_k: 20,
      seed: 1234,
      details: true,
    };
    const a = await post("/generate", { inputs: "Mom said", parameters: params });
    const b = await post("/generate", { inputs: "Mom said", parameters: params });
    expect(a.status).toBe(200);
    expect(a.body.generated_text).toBe(b.body.generated_text);
    expect(a.body.details.seed).toBe(1234);
    const c = await post("/generate", { inputs: "Mom said", parameters: { ...params, seed: undefined } });
    expect(Number.isInteger(c.body.details.seed)).toBe(true);
  });

  it("decoder_input_details lists the prompt tokens; top_n_tokens the alternatives", async () => {
    const r = await post("/generate", {
      inputs: "The little dog",
      parameters: { max_new_tokens: 4, details: true, decoder_input_details: true, top_n_tokens: 3 },
    });
    const ids = tok.encode("The little dog", { addSpecial: true });
    expect(r.body.details.prefill.map((t: Json) => t.id)).toEqual(ids);
    expect(r.body.details.top_tokens).toHaveLength(4);
    for (const [i, top] of r.body.details.top_tokens.entries()) {
      expect(top).toHaveLength(3);
      // Greedy: the chosen token is the most likely one.
      expect(top[0].id).toBe(r.body.details.tokens[i].id);
    }
  });
});

describe("POST /generate_stream", () => {
  it("streams one event per token; joined, they equal /generate's text; the last carries text and details", async () => {
    for (const prompt of PROMPTS.slice(0, 2)) {
      const params = { max_new_tokens: 25 };
      const whole = await post("/generate", { inputs: prompt, parameters: params });
      const s = await stream({ inputs: prompt, parameters: params });
      expect(s.status).toBe(200);
      expect(s.type).toMatch(/^text\/event-stream/);
      expect(s.raw).not.toContain("[DONE]");
      expect(s.events).toHaveLength(25);
      s.events.forEach((e, i) => {
        expect(e.index).toBe(i + 1);
        expect(typeof e.token.id).toBe("number");
        expect(typeof e.token.logprob).toBe("number");
        expect(e.token.special).toBe(false);
        if (i < s.events.length - 1) {
          expect(e.generated_text).toBeNull();
          expect(e.details).toBeNull();
        }
      });
      const joined = s.events.map((e) => e.token.text).join("");
      expect(joined).toBe(whole.body.generated_text);
      const last = s.events.at(-1)!;
      expect(last.generated_text).toBe(whole.body.generated_text);
      expect(last.details).toMatchObject({ finish_reason: "length", generated_tokens: 25, seed: null });
      expect(last.details.input_length).toBe(tok.encode(prompt, { addSpecial: true }).length);
    }
  });

  it("a stop sequence ends the stream with the text before it", async () => {
    const whole = await post("/generate", {
      inputs: "Once upon a time",
      parameters: { max_new_tokens: 30, stop: [" named"] },
    });
    const s = await stream({
      inputs: "Once upon a time",
      parameters: { max_new_tokens: 30, stop: [" named"] },
    });
    expect(s.events.map((e) => e.token.text).join("")).toBe(whole.body.generated_text);
    expect(s.events.at(-1)!.details.finish_reason).toBe("stop_sequence");
  });

  it("a bad request is a plain 400 before any event", async () => {
    const s = await fetch(`${srv.url}/generate_stream`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ inputs: "x", parameters: { max_new_tokens: -1 } }),
    });
    expect(s.status).toBe(400);
    expect(((await s.json()) as Json).error.param).toBe("parameters.max_new_tokens");
  });
});

describe("the simple /generate body {prompt, max_tokens, …}", () => {
  it("answers {text, generated_text, finish_reason, usage}; greedy text equals /v1/completions'", async () => {
    for (const prompt of PROMPTS.slice(0, 3)) {
      const r = await post("/generate", { prompt, max_tokens: 12, temperature: 0 });
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      const ref = await post("/v1/completions", { prompt, max_tokens: 12, temperature: 0 });
      expect(r.body.text).toBe(ref.body.choices[0].text);
      expect(r.body.generated_text).toBe(r.body.text);
      expect(r.body.finish_reason).toBe(ref.body.choices[0].finish_reason);
      expect(r.body.usage).toEqual({
        prompt_tokens: ref.body.usage.prompt_tokens,
        completion_tokens: ref.body.usage.completion_tokens,
        total_tokens: ref.body.usage.total_tokens,
      });
    }
  });

  it("stop ends the text before it; a seed repeats a sampled answer; max_tokens defaults to 16", async () => {
    const whole = (await post("/generate", { prompt: PROMPTS[0], max_tokens: 24, temperature: 0 })).body
      .text as string;
    const word = whole.slice(8, 12);
    const stopped = await post("/generate", {
      prompt: PROMPTS[0],
      max_tokens: 24,
      temperature: 0,
      stop: [word],
    });
    expect(stopped.body.text).toBe(whole.slice(0, whole.indexOf(word)));
    expect(stopped.body.finish_reason).toBe("stop");
    const body = { prompt: PROMPTS[1], temperature: 0.9, top_p: 0.9, seed: 7 };
    const a = await post("/generate", body);
    const b = await post("/generate", body);
    expect(a.body.text).toBe(b.body.text);
    expect(a.body.usage.completion_tokens).toBe(16);
  });

  it("stream: true answers server-sent events whose text joins to the whole answer; the last has finish_reason and usage", async () => {
    for (const path of ["/generate", "/generate_stream"]) {
      const body = { prompt: PROMPTS[2], max_tokens: 20, temperature: 0 };
      const whole = await post("/generate", body);
      const res = await fetch(`${srv.url}${path}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ ...body, stream: true }),
      });
      expect(res.headers.get("content-type")).toMatch(/^text\/event-stream/);
      const raw = await res.text();
      expect(raw).not.toContain("[DONE]");
      const events = raw
        .split("\n\n")
        .filter((x) => x.trim().length > 0)
        .map((x) => JSON.parse(x.slice(5)) as Json);
      expect(events.length).toBeGreaterThan(2);
      expect(events.map((e) => e.text).join("")).toBe(whole.body.text);
      const last = events[events.length - 1]!;
      for (const e of events.slice(0, -1)) expect(e.finish_reason).toBeNull();
      expect(last.finish_reason).toBe(whole.body.finish_reason);
      expect(last.generated_text).toBe(whole.body.text);
      expect(last.usage).toEqual(whole.body.usage);
    }
  });

  it("TGI's bodies are unchanged: {prompt}, {prompt, parameters} and TGI's client's stream: false stay TGI's", async () => {
    const tgi = await post("/generate", { inputs: PROMPTS[0], parameters: { max_new_tokens: 6 } });
    for (const body of [
      { prompt: PROMPTS[0], parameters: { max_new_tokens: 6 } },
      { inputs: PROMPTS[0], parameters: { max_new_tokens: 6 }, stream: false },
    ]) {
      const r = await post("/generate", body);
      expect(r.body).toEqual(tgi.body);
    }
    expect(Object.keys((await post("/generate", { prompt: PROMPTS[0] })).body)).toEqual(["generated_text"]);
  });

  it("a body mixing both forms is a 400 naming the simple field", async () => {
    for (const [body, param] of [
      [{ inputs: PROMPTS[0], max_tokens: 4 }, "max_tokens"],
      [{ prompt: PROMPTS[0], parameters: { max_new_tokens: 4 }, temperature: 0 }, "temperature"],
    ] as const) {
      for (const path of ["/generate", "/generate_stream"]) {
        const res = await fetch(`${srv.url}${path}`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify(body),
        });
        expect(res.status).toBe(400);
        expect(((await res.json()) as Json).error.param).toBe(param);
      }
    }
  });
});

describe("POST /tokenize and /detokenize", () => {
  it("tokenize equals the tokenizer, with and without special tokens", async () => {
    for (const text of ["Once upon a time", 'Lily\'s mom said, "Hello!"\n\nThe end.', "  spaces  "]) {
      for (const add of [true, false]) {
        const r = await post("/tokenize", { prompt: text, add_special_tokens: add });
        expect(r.status).toBe(200);
        const ids = tok.encode(text, { addSpecial: add });
        expect(r.body).toEqual({ tokens: ids, count: ids.length, max_model_len: model.config.contextLength });
      }
    }
    const alt = await post("/tokenize", { inputs: "The bird", return_token_strs: true });
    const ids = tok.encode("The bird", { addSpecial: true });
    expect(alt.body.tokens).toEqual(ids);
    expect(alt.body.token_strs).toEqual(ids.map((id) => tok.tokenText(id)));
    expect((await post("/tokenize", { text: "The bird" })).body.tokens).toEqual(ids);
  });

  it("messages (vLLM's chat form) tokenize as the chat route renders them: its usage.prompt_tokens", async () => {
    const messages = [
      { role: "system", content: "You tell stories." },
      { role: "user", content: "Tell me a story about a dog." },
    ];
    const t = await post("/tokenize", { messages });
    expect(t.status, JSON.stringify(t.body)).toBe(200);
    const chat = await post("/v1/chat/completions", { messages, max_tokens: 1, temperature: 0 });
    expect(t.body.count).toBe(chat.body.usage.prompt_tokens);
    expect(t.body.tokens).toHaveLength(t.body.count);
    // add_generation_prompt: false leaves the assistant's opening out.
    const open = await post("/tokenize", { messages, add_generation_prompt: false });
    expect(open.body.count).toBeLessThan(t.body.count);
    expect(t.body.tokens.slice(0, open.body.count)).toEqual(open.body.tokens);
    const both = await post("/tokenize", { messages, prompt: "hi" });
    expect(both.status).toBe(400);
    expect(both.body.error.param).toBe("prompt");
  });

  it("content (llama-server's field) tokenizes as prompt does, without BOS unless add_special", async () => {
    const text = "Once upon a time";
    const plain = await post("/tokenize", { prompt: text, add_special_tokens: false });
    const withBos = await post("/tokenize", { prompt: text });
    expect((await post("/tokenize", { content: text })).body.tokens).toEqual(plain.body.tokens);
    expect((await post("/tokenize", { content: text, add_special: true })).body.tokens).toEqual(
      withBos.body.tokens,
    );
    const pieces = await post("/tokenize", { content: text, with_pieces: true });
    expect(pieces.body.tokens.map((p: Json) => p.id)).toEqual(plain.body.tokens);
    expect(pieces.body.tokens.map((p: Json) => p.piece).join("")).toBe(` ${text}`);
  });

  it("detokenize round-trips", async () => {
    for (const text of ["Once upon a time", 'Lily\'s mom said, "Hello!"\n\nThe end.']) {
      for (const add of [true, false]) {
        const t = await post("/tokenize", { prompt: text, add_special_tokens: add });
        const d = await post("/detokenize", { tokens: t.body.tokens });
        expect(d.status).toBe(200);
        expect(d.body.prompt).toBe(text);
      }
    }
  });
});

describe("bad input → 400 naming the field", () => {
  const cases: [string, string, unknown, string | null][] = [
    ["/generate", "no inputs", { parameters: {} }, "inputs"],
    ["/generate", "inputs not a string", { inputs: 42 }, "inputs"],
    ["/generate", "empty inputs", { inputs: "" }, "inputs"],
    ["/generate", "parameters not an object", { inputs: "x", parameters: [1] }, "parameters"],
    [
      "/generate",
      "max_new_tokens 0",
      { inputs: "x", parameters: { max_new_tokens: 0 } },
      "parameters.max_new_tokens",
    ],
    [
      "/generate",
      "max_new_tokens past the context",
      { inputs: "x", parameters: { max_new_tokens: 100_000 } },
      "parameters.max_new_tokens",
    ],
    [
      "/generate",
      "temperature out of range",
      { inputs: "x", parameters: { temperature: 5 } },
      "parameters.temperature",
    ],
    ["/generate", "top_p not a number", { inputs: "x", parameters: { top_p: "a" } }, "parameters.top_p"],
    ["/generate", "top_k negative", { inputs: "x", parameters: { top_k: -1 } }, "parameters.top_k"],
    [
      "/generate",
      "repetition_penalty 0",
      { inputs: "x", parameters: { repetition_penalty: 0 } },
      "parameters.repetition_penalty",
    ],
    ["/generate", "stop not strings", { inputs: "x", parameters: { stop: [1] } }, "parameters.stop"],
    ["/generate", "seed negative", { inputs: "x", parameters: { seed: -5 } }, "parameters.seed"],
    [
      "/generate",
      "details not a boolean",
      { inputs: "x", parameters: { details: "yes" } },
      "parameters.details",
    ],
    ["/generate", "best_of 2", { inputs: "x", parameters: { best_of: 2 } }, "parameters.best_of"],
    [
      "/generate",
      "grammar without a value",
      { inputs: "x", parameters: { grammar: { type: "json" } } },
      "parameters.grammar.value",
    ],
    [
      "/generate",
      "grammar of an unknown type",
      { inputs: "x", parameters: { grammar: { type: "ebnf", value: "x" } } },
      "parameters.grammar.type",
    ],
    ["/generate_stream", "no inputs", {}, "inputs"],
    ["/tokenize", "no text", { add_special_tokens: true }, "prompt"],
    ["/tokenize", "prompt not a string", { prompt: [1, 2] }, "prompt"],
    [
      "/tokenize",
      "add_special_tokens not a boolean",
      { prompt: "x", add_special_tokens: 1 },
      "add_special_tokens",
    ],
    ["/detokenize", "no tokens", {}, "tokens"],
    ["/detokenize", "a token outside the vocabulary", { tokens: [1, 99_999] }, "tokens"],
    ["/detokenize", "a negative token", { tokens: [-1] }, "tokens"],
    ["/detokenize", "a fractional token", { tokens: [1.5] }, "tokens"],
    ["/detokenize", "a string token", { tokens: ["a"] }, "tokens"],
  ];
  it.each(cases)("%s: %s", async (path, _what, body, param) => {
    const r = await post(path, body);
    expect(r.status).toBe(400);
    expect(r.body.error.type).toBe("invalid_request_error");
    expect(r.body.error.param).toBe(param);
    expect(r.body.error.message).not.toContain("\n");
  });

  it("a prompt longer than the context is a 400 context_length_exceeded on inputs", async () => {
    const long = "Once upon a time ".repeat(600);
    const r = await post("/generate", { inputs: long });
    expect(r.status).toBe(400);
    expect(r.body.error).toMatchObject({ param: "inputs", code: "context_length_exceeded" });
    // truncate keeps the last tokens, which fit.
    const t = await post("/generate", { inputs: long, parameters: { truncate: 64, max_new_tokens: 2 } });
    expect(t.status).toBe(200);
  });
});

describe("TGI finish reasons", () => {
  const finish = (
    reason: FinishInfo["reason"],
    tokenTimes: number,
    completionTokens: number,
  ): FinishInfo => ({
    reason,
    promptTokens: 3,
    cachedTokens: 0,
    completionTokens,
    preemptions: 0,
    times: { arrival: 0 },
    tokenTimes: Array.from({ length: tokenTimes }, (_, i) => i),
  });
  it("an end-of-generation token is eos_token, a stop string stop_sequence, the rest length", () => {
    expect(tgiFinishReason(finish("stop", 5, 4))).toBe("eos_token");
    expect(tgiFinishReason(finish("stop", 4, 4))).toBe("stop_sequence");
    expect(tgiFinishReason(finish("length", 4, 4))).toBe("length");
  });
});
