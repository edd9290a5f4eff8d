import OpenAI, { type APIError, type BadRequestError } from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { renderChat } from "../../src/chat/template.js";
import { generate } from "../../src/model/generate.js";
import { DEFAULT_BLOCK_SIZE } from "../../src/model/kv-cache.js";
import { loadModel } from "../../src/model/model.js";
import { STORIES_260K, testModel } from "../helpers/models.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

const MODEL = "stories260K";
const model = loadModel(testModel(STORIES_260K));
const tok = model.tokenizer;

/** The in-process greedy continuation: what the server must produce at temperature 0. */
function solo(prompt: string | number[], maxTokens: number, stop?: string[]) {
  const ids =
    typeof prompt === "string" ? tok.encode(prompt, { addSpecial: true, parseSpecial: false }) : prompt;
  return generate(model, ids, { maxTokens, stop, sampling: { temperature: 0 } });
}

/** The prompt ids the chat route must build for these messages (stories260K: no template → ChatML). */
function chatIds(messages: { role: string; content: string }[]): number[] {
  const text = renderChat({ messages, bosToken: tok.tokenText(tok.bos!), addGenerationPrompt: true });
  return [tok.bos!, ...tok.encode(text, { addSpecial: false, parseSpecial: true })];
}

let srv: TestServer;
let client: OpenAI;

beforeAll(async () => {
  srv = await startTestServer({ modelName: MODEL });
  client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "x", maxRetries: 0 });
});
afterAll(async () => {
  await srv?.close();
});

describe("GET /v1/models", () => {
  it("lists the one served model", async () => {
    const list = await client.models.list();
    expect(list.data).toHaveLength(1);
    const m = list.data[0]! as OpenAI.Models.Model & { max_model_len: number };
    expect(m).toMatchObject({ id: MODEL, object: "model", owned_by: "spindle", max_model_len: 2048 });
    expect(typeof m.created).toBe("number");
    expect(await client.models.retrieve(MODEL)).toMatchObject({ id: MODEL });
    await expect(client.models.retrieve("gpt-4")).rejects.toBeInstanceOf(OpenAI.NotFoundError);
  });
});

describe("POST /v1/completions", () => {
  it("greedy text equals the in-process generation, with usage", async () => {
    for (const [prompt, maxTokens] of [
      ["Once upon a time", 24],
      ["Lily and Ben went to the park.", 40],
      ["The cat", 5],
    ] as const) {
      const ref = solo(prompt, maxTokens);
      const r = await client.completions.create({
        model: MODEL,
        prompt,
        max_tokens: maxTokens,
        temperature: 0,
      });
      expect(r.object).toBe("text_completion");
      expect(r.id).toMatch(/^cmpl-/);
      expect(r.model).toBe(MODEL);
      expect(r.choices).toHaveLength(1);
      expect(r.choices[0]!.text).toBe(ref.text);
      expect(r.choices[0]!.finish_reason).toBe(ref.finishReason);
      expect(r.choices[0]!.logprobs).toBeNull();
      expect(r.usage).toMatchObject({
        prompt_tokens: ref.promptTokens.length,
        completion_tokens: ref.tokens.length,
        total_tokens: ref.promptTokens.length + ref.tokens.length,
      });
      // Shorter than one KV block: the prefix cache only reuses full blocks, so none of it is cached.
      expect(ref.promptTokens.length).toBeLessThanOrEqual(DEFAULT_BLOCK_SIZE);
      expect(r.usage!.prompt_tokens_details).toEqual({ cached_tokens: 0 });
    }
  });

  it("defaults max_tokens to 16", async () => {
    const r = await client.completions.create({ model: MODEL, prompt: "Once upon a time", temperature: 0 });
    expect(r.choices[0]!.text).toBe(solo("Once upon a time", 16).text);
  });

  it("takes an array of prompts, token ids, and arrays of token ids", async () => {
    const prompts = ["Once upon a time", "The dog"];
    const r = await client.completions.create({
      model: MODEL,
      prompt: prompts,
      max_tokens: 12,
      temperature: 0,
    });
    expect(r.choices.map((c) => c.index)).toEqual([0, 1]);
    expect(r.choices.map((c) => c.text)).toEqual(prompts.map((p) => solo(p, 12).text));
    expect(r.usage!.prompt_tokens).toBe(prompts.reduce((s, p) => s + solo(p, 1).promptTokens.length, 0));

    const ids = tok.encode("Once upon a time", { addSpecial: true });
    const one = await client.completions.create({
      model: MODEL,
      prompt: ids,
      max_tokens: 12,
      temperature: 0,
    });
    expect(one.choices[0]!.text).toBe(solo(ids, 12).text);
    const two = await client.completions.create({
      model: MODEL,
      prompt: [ids, ids.slice(0, 3)],
      max_tokens: 12,
      temperature: 0,
    });
    expect(two.choices.map((c) => c.text)).toEqual([solo(ids, 12).text, solo(ids.slice(0, 3), 12).text]);
  });

  it("stop: the text ends before the stop string, finish_reason stop", async () => {
    const ref = solo("Once upon a time", 40);
    // A word from the middle of the greedy continuation.
    const words = ref.text.trim().split(/\s+/);
    const stopWord = words[Math.floor(words.length / 2)]!;
    const r = await client.completions.create({
      model: MODEL,
      prompt: "Once upon a time",
      max_tokens: 40,
      temperature: 0,
      stop: [stopWord, "zzzqqq"],
    });
    const expected = ref.text.slice(0, ref.text.indexOf(stopWord));
    expect(r.choices[0]!.text).toBe(expected);
    expect(r.choices[0]!.finish_reason).toBe("stop");
    expect(r.choices[0]!.text).toBe(solo("Once upon a time", 40, [stopWord, "zzzqqq"]).text);
  });

  it("seed: same seed, same text; another seed, another text (temperature 1)", async () => {
    const ask = (seed: number) =>
      client.completions
        .create({ model: MODEL, prompt: "Once upon a time", max_tokens: 32, temperature: 1, seed })
        .then((r) => r.choices[0]!.text);
    const a = await ask(7);
    expect(await ask(7)).toBe(a);
    expect(await ask(8)).not.toBe(a);
  });

  it("n: 2 gives two different, reproducible choices with a seed", async () => {
    const ask = () =>
      client.completions.create({
        model: MODEL,
        prompt: "Once upon a time",
        max_tokens: 32,
        temperature: 1,
        seed: 1234,
        n: 2,
      });
    const a = await ask();
    expect(a.choices.map((c) => c.index)).toEqual([0, 1]);
    expect(a.choices[0]!.text).not.toBe(a.choices[1]!.text);
    const b = await ask();
    expect(b.choices.map((c) => c.text)).toEqual(a.choices.map((c) => c.text));
    // Choice i uses seed + i: the second choice is what seed 1235 gives alone.
    const alone = await client.completions.create({
      model: MODEL,
      prompt: "Once upon a time",
      max_tokens: 32,
      temperature: 1,
      seed: 1235,
    });
    expect(alone.choices[0]!.text).toBe(a.choices[1]!.text);
    expect(a.usage!.completion_tokens).toBeGreaterThan(a.usage!.prompt_tokens);
  });

  it("logprobs: per-token logprobs ≤ 0; the greedy token is the top-1", async () => {
    const r = await client.completions.create({
      model: MODEL,
      prompt: "Once upon a time",
      max_tokens: 16,
      temperature: 0,
      logprobs: 3,
    });
    const lp = r.choices[0]!.logprobs!;
    expect(lp.tokens).toHaveLength(r.usage!.completion_tokens);
    expect(lp.tokens!.join("")).toBe(r.choices[0]!.text);
    expect(lp.text_offset![0]).toBe(0);
    lp.token_logprobs!.forEach((l, i) => {
      expect(l).toBeLessThanOrEqual(0);
      const top = lp.top_logprobs![i]!;
      const values = Object.values(top);
      expect(values.length).toBeGreaterThanOrEqual(1);
      expect(values.length).toBeLessThanOrEqual(4);
      expect(Math.max(...values)).toBeCloseTo(l, 6);
      expect(top[lp.tokens![i]!]).toBeCloseTo(l, 6);
      expect(lp.text_offset![i + 1] ?? Number.POSITIVE_INFINITY).toBeGreaterThanOrEqual(lp.text_offset![i]!);
    });
  });

  it("logit_bias -100 bans the greedy first token", async () => {
    const ref = solo("Once upon a time", 4);
    const first = ref.tokens[0]!;
    const r = await client.completions.create({
      model: MODEL,
      prompt: "Once upon a time",
      max_tokens: 4,
      temperature: 0,
      logit_bias: { [String(first)]: -100 },
      logprobs: 0,
    });
    expect(r.choices[0]!.text).not.toBe(ref.text);
    expect(r.choices[0]!.logprobs!.tokens![0]).not.toBe(tok.decode([first]));
  });

  it("echo puts the prompt before the completion", async () => {
    const r = await client.completions.create({
      model: MODEL,
      prompt: "Once upon a time",
      max_tokens: 8,
      temperature: 0,
      echo: true,
    });
    expect(r.choices[0]!.text).toBe(`Once upon a time${solo("Once upon a time", 8).text}`);
  });

  it("streams chunks whose text joins to the non-streamed text, with a usage chunk", async () => {
    // Longer than one KV block, so that the second request can reuse the first one's full blocks.
    const prompt = "Lily and Ben went to the park. They saw a big red ball and a little dog.";
    const body = { model: MODEL, prompt, max_tokens: 30, temperature: 0 };
    const full = await client.completions.create(body);
    const promptTokens = full.usage!.prompt_tokens;
    expect(promptTokens).toBeGreaterThan(DEFAULT_BLOCK_SIZE);
    const stream = await client.completions.create({
      ...body,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let usage: OpenAI.CompletionUsage | undefined;
    const ids = new Set<string>();
    let finish: string | null = null;
    for await (const c of stream) {
      ids.add(c.id);
      if (c.usage) {
        expect(c.choices).toEqual([]);
        usage = c.usage;
        continue;
      }
      text += c.choices[0]!.text;
      if (c.choices[0]!.finish_reason) finish = c.choices[0]!.finish_reason;
    }
    expect(ids.size).toBe(1);
    expect(text).toBe(full.choices[0]!.text);
    expect(finish).toBe(full.choices[0]!.finish_reason);
    expect(usage).toMatchObject({
      prompt_tokens: full.usage!.prompt_tokens,
      completion_tokens: full.usage!.completion_tokens,
      total_tokens: full.usage!.total_tokens,
    });
    // The second identical prompt reused the prefix cache: every full block of the prompt but the
    // one holding its last token (whose logits must be computed).
    expect(usage!.prompt_tokens_details?.cached_tokens).toBe(
      Math.floor((promptTokens - 1) / DEFAULT_BLOCK_SIZE) * DEFAULT_BLOCK_SIZE,
    );
  });
});

describe("POST /v1/chat/completions", () => {
  const messages = [
    { role: "system" as const, content: "You are a storyteller." },
    { role: "user" as const, content: "Tell me about a cat." },
  ];

  it("renders ChatML (no template in the model) and answers deterministically at temperature 0", async () => {
    const ref = generate(model, chatIds(messages), { maxTokens: 24, sampling: { temperature: 0 } });
    const r = await client.chat.completions.create({
      model: MODEL,
      messages,
      max_tokens: 24,
      temperature: 0,
    });
    expect(r.object).toBe("chat.completion");
    expect(r.id).toMatch(/^chatcmpl-/);
    expect(r.choices).toHaveLength(1);
    expect(r.choices[0]!.message.role).toBe("assistant");
    expect(r.choices[0]!.message.content).toBe(ref.text);
    expect(r.choices[0]!.finish_reason).toBe(ref.finishReason);
    expect(r.usage).toMatchObject({
      prompt_tokens: ref.promptTokens.length,
      completion_tokens: ref.tokens.length,
    });
    const again = await client.chat.completions.create({
      model: MODEL,
      messages,
      max_completion_tokens: 24,
      temperature: 0,
    });
    expect(again.choices[0]!.message.content).toBe(ref.text);
    // Same prompt again: its full blocks come from the prefix cache.
    expect(again.usage!.prompt_tokens_details!.cached_tokens).toBeGreaterThan(0);
  });

  it("accepts content parts and the developer role", async () => {
    const r = await client.chat.completions.create({
      model: MODEL,
      messages: [
        { role: "developer", content: "Be brief." },
        { role: "user", content: [{ type: "text", text: "Hello" }] },
      ],
      max_tokens: 8,
      temperature: 0,
    });
    const ids = chatIds([
      { role: "system", content: "Be brief." },
      { role: "user", content: "Hello" },
    ]);
    expect(r.choices[0]!.message.content).toBe(
      generate(model, ids, { maxTokens: 8, sampling: { temperature: 0 } }).text,
    );
  });

  it("streams: role first, content chunks, finish_reason, usage chunk, same text as non-streamed", async () => {
    const full = await client.chat.completions.create({
      model: MODEL,
      messages,
      max_tokens: 20,
      temperature: 0,
    });
    const stream = await client.chat.completions.create({
      model: MODEL,
      messages,
      max_tokens: 20,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks: OpenAI.Chat.ChatCompletionChunk[] = [];
    for await (const c of stream) chunks.push(c);
    expect(chunks[0]!.object).toBe("chat.completion.chunk");
    expect(chunks[0]!.choices[0]!.delta.role).toBe("assistant");
    const usageChunk = chunks.at(-1)!;
    expect(usageChunk.choices).toEqual([]);
    expect(usageChunk.usage).toMatchObject({
      prompt_tokens: full.usage!.prompt_tokens,
      completion_tokens: full.usage!.completion_tokens,
    });
    const last = chunks.at(-2)!;
    expect(last.choices[0]!.finish_reason).toBe(full.choices[0]!.finish_reason);
    expect(chunks.slice(0, -2).every((c) => c.choices[0]!.finish_reason === null)).toBe(true);
    expect(new Set(chunks.map((c) => c.id)).size).toBe(1);
    expect(chunks.map((c) => c.choices[0]?.delta.content ?? "").join("")).toBe(
      full.choices[0]!.message.content,
    );
  });

  it("n: 2 with a seed: two different choices, the same on every call", async () => {
    const ask = () =>
      client.chat.completions.create({
        model: MODEL,
        messages,
        max_tokens: 24,
        temperature: 1,
        seed: 99,
        n: 2,
      });
    const a = await ask();
    expect(a.choices.map((c) => c.index)).toEqual([0, 1]);
    expect(a.choices[0]!.message.content).not.toBe(a.choices[1]!.message.content);
    const b = await ask();
    expect(b.choices.map((c) => c.message.content)).toEqual(a.choices.map((c) => c.message.content));
  });

  it("logprobs with top_logprobs: sorted, ≤ 0, the greedy token on top", async () => {
    const r = await client.chat.completions.create({
      model: MODEL,
      messages,
      max_tokens: 12,
      temperature: 0,
      logprobs: true,
      top_logprobs: 3,
    });
    const content = r.choices[0]!.logprobs!.content!;
    expect(content).toHaveLength(r.usage!.completion_tokens);
    expect(content.map((c) => c.token).join("")).toBe(r.choices[0]!.message.content);
    for (const c of content) {
      expect(c.logprob).toBeLessThanOrEqual(0);
      expect(c.top_logprobs).toHaveLength(3);
      const values = c.top_logprobs.map((t) => t.logprob);
      expect([...values].sort((x, y) => y - x)).toEqual(values);
      expect(c.top_logprobs[0]!.token).toBe(c.token);
      expect(c.top_logprobs[0]!.logprob).toBeCloseTo(c.logprob, 6);
      expect(Buffer.from(c.bytes!).toString("utf8")).toBe(c.token);
    }
    const plain = await client.chat.completions.create({
      model: MODEL,
      messages,
      max_tokens: 4,
      temperature: 0,
      logprobs: true,
    });
    expect(plain.choices[0]!.logprobs!.content!.every((c) => c.top_logprobs.length === 0)).toBe(true);
  });
});

describe("model left out", () => {
  async function post(path: string, body: unknown) {
    const res = await fetch(`${srv.url}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    // biome-ignore lint/suspicious/noExplicitAny: response bodies are JSON; the assertions check their shape
    return { status: res.status, body: (await res.json()) as Record<string, any> };
  }

  it("is the served model on both routes (as vLLM and llama-server allow), with the same output", async () => {
    const prompt = "Once upon a time";
    const ref = solo(prompt, 12);
    const c = await post("/v1/completions", { prompt, max_tokens: 12, temperature: 0 });
    expect(c.status, JSON.stringify(c.body)).toBe(200);
    expect(c.body.model).toBe(MODEL);
    expect(c.body.choices[0].text).toBe(ref.text);
    const messages = [{ role: "user", content: "Tell me a story." }];
    const named = await post("/v1/chat/completions", {
      model: MODEL,
      messages,
      max_tokens: 8,
      temperature: 0,
    });
    const chat = await post("/v1/chat/completions", { messages, max_tokens: 8, temperature: 0 });
    expect(chat.status, JSON.stringify(chat.body)).toBe(200);
    expect(chat.body.model).toBe(MODEL);
    expect(chat.body.choices[0].message.content).toBe(named.body.choices[0].message.content);
    expect(chat.body.usage.prompt_tokens).toBe(chatIds(messages).length);
  });

  it("a wrong name is still a 404 model_not_found in OpenAI's shape, on both routes", async () => {
    for (const [path, body] of [
      ["/v1/completions", { model: "gpt-4", prompt: "hi", max_tokens: 2 }],
      ["/v1/chat/completions", { model: "gpt-4", messages: [{ role: "user", content: "hi" }] }],
    ] as const) {
      const r = await post(path, body);
      expect(r.status).toBe(404);
      expect(r.body.error).toMatchObject({
        type: "not_found_error",
        param: "model",
        code: "model_not_found",
      });
    }
  });
});

describe("errors in OpenAI's shape", () => {
  it("unknown model → NotFoundError", async () => {
    const err = await client.completions
      .create({ model: "gpt-4", prompt: "hi", max_tokens: 2 })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.NotFoundError);
    expect((err as APIError).code).toBe("model_not_found");
    await expect(
      client.chat.completions.create({ model: "gpt-4", messages: [{ role: "user", content: "hi" }] }),
    ).rejects.toBeInstanceOf(OpenAI.NotFoundError);
  });

  it("bad parameters → BadRequestError naming the field", async () => {
    const bad = async (body: Record<string, unknown>, chat = false) => {
      const base = chat
        ? { model: MODEL, messages: [{ role: "user", content: "hi" }] }
        : { model: MODEL, prompt: "hi" };
      const p = chat
        ? client.chat.completions.create({ ...base, ...body } as never)
        : client.completions.create({ ...base, ...body } as never);
      const err = await (p as Promise<unknown>).catch((e: unknown) => e);
      expect(err, JSON.stringify(body)).toBeInstanceOf(OpenAI.BadRequestError);
      return err as BadRequestError;
    };
    const t = await bad({ temperature: 3 });
    expect(t.param).toBe("temperature");
    expect(t.message).toContain("temperature must be a number between 0 and 2");
    expect((await bad({ temperature: "0.5" })).param).toBe("temperature");
    expect((await bad({ top_p: 1.5 })).param).toBe("top_p");
    expect((await bad({ n: 17 })).param).toBe("n");
    expect((await bad({ max_tokens: 0 })).param).toBe("max_tokens");
    expect((await bad({ max_tokens: 100_000 })).param).toBe("max_tokens");
    expect((await bad({ stop: [1] })).param).toBe("stop");
    expect((await bad({ logprobs: 21 })).param).toBe("logprobs");
    expect((await bad({ logit_bias: { abc: 1 } })).param).toBe("logit_bias");
    expect((await bad({ prompt: [] })).param).toBe("prompt");
    expect((await bad({ prompt: [1, 999999] })).param).toBe("prompt");
    expect((await bad({ stream_options: { include_usage: true } })).param).toBe("stream_options");
    expect((await bad({ echo: true, logprobs: 2 })).param).toBe("echo");
    expect((await bad({ min_tokens: 3 })).message).toContain("not supported");
    expect((await bad({ response_format: { type: "json_objects" } }, true)).param).toBe(
      "response_format.type",
    );
    const tools = await bad({ tools: [{ type: "function", function: { name: "", parameters: {} } }] }, true);
    expect(tools.param).toBe("tools[0].function.name");
    expect(tools.message).toContain("function.name must be");
    expect((await bad({ top_logprobs: 2 }, true)).param).toBe("top_logprobs");
    expect((await bad({ messages: [] }, true)).param).toBe("messages");
    expect((await bad({ messages: [{ role: "wizard", content: "x" }] }, true)).param).toBe(
      "messages[0].role",
    );
    expect(
      (
        await bad(
          { messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "x" } }] }] },
          true,
        )
      ).param,
    ).toBe("messages[0].content");
  });
});

describe("defaults and timeouts", () => {
  it("chat without max_tokens may use the rest of the context", async () => {
    // A conversation that leaves 6 tokens of the 2048-token context: the default max_tokens is those 6.
    const content = (words: number) => "the cat sat ".repeat(words).trim();
    const length = (words: number) => chatIds([{ role: "user", content: content(words) }]).length;
    // The most repetitions that still fit in 2042 tokens (binary search).
    let lo = 1;
    let hi = 1000;
    while (lo < hi) {
      const mid = Math.ceil((lo + hi) / 2);
      if (length(mid) <= 2042) lo = mid;
      else hi = mid - 1;
    }
    const words = lo;
    const ids = chatIds([{ role: "user", content: content(words) }]);
    const room = 2048 - ids.length;
    expect(room).toBeGreaterThan(0);
    const r = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: "user", content: content(words) }],
      temperature: 0,
      ignore_eos: true,
    } as OpenAI.Chat.ChatCompletionCreateParamsNonStreaming);
    expect(r.choices[0]!.finish_reason).toBe("length");
    expect(r.usage).toMatchObject({ prompt_tokens: ids.length, completion_tokens: room, total_tokens: 2048 });
  });

  it("a request timeout is a 504 before the stream starts, an error event after", async () => {
    const slow = await startTestServer({ modelName: MODEL, requestTimeoutMs: 40 });
    try {
      const c = new OpenAI({ baseURL: `${slow.url}/v1`, apiKey: "x", maxRetries: 0 });
      const body = { model: MODEL, prompt: "Once upon a time", max_tokens: 2000, ignore_eos: true } as const;
      const err = await c.completions.create(body).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(OpenAI.InternalServerError);
      expect((err as APIError).status).toBe(504);
      expect((err as APIError).code).toBe("timeout");
      // Streaming: the first tokens usually arrive within 40 ms, so the timeout comes as an error event;
      // on a loaded machine it may come first, as a 504.
      const streamErr = await (async () => {
        const s = await c.completions.create({ ...body, stream: true });
        for await (const _ of s) {
        }
      })().catch((e: unknown) => e);
      expect(streamErr).toBeInstanceOf(OpenAI.APIError);
      expect((streamErr as APIError).code).toBe("timeout");
      expect(slow.server.ctx.service.numInFlight).toBe(0);
    } finally {
      await slow.close();
    }
  });
});
