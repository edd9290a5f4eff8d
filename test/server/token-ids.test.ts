import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readGGUF } from "../../src/gguf/reader.js";
import { SseParser } from "../../src/sse-parser.js";
import { type Tokenizer, tokenizerFromGGUF } from "../../src/tokenizer/index.js";
import { STORIES_260K, testModel } from "../helpers/models.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

// vLLM's extensions on /v1/completions: return_token_ids and return_tokens_as_token_ids, on a real
// server with stories260K, read over plain HTTP (the openai SDK has no types for them).

const MODEL = "stories260K";
let srv: TestServer;
let tok: Tokenizer;

beforeAll(async () => {
  srv = await startTestServer({ modelName: MODEL });
  tok = tokenizerFromGGUF(readGGUF(testModel(STORIES_260K)));
});
afterAll(async () => {
  await srv?.close();
});

// biome-ignore lint/suspicious/noExplicitAny: JSON answers read field by field
type Json = Record<string, any>;

async function post(body: Json): Promise<Json> {
  const res = await fetch(`${srv.url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: MODEL, temperature: 0, ...body }),
  });
  expect(res.status).toBe(200);
  return (await res.json()) as Json;
}

async function postStream(body: Json): Promise<Json[]> {
  const res = await fetch(`${srv.url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: MODEL, temperature: 0, stream: true, ...body }),
  });
  expect(res.status).toBe(200);
  const parser = new SseParser();
  const events: string[] = [];
  for await (const piece of res.body!) events.push(...parser.push(piece as Uint8Array));
  events.push(...parser.end());
  expect(events.at(-1)).toBe("[DONE]");
  return events.slice(0, -1).map((e) => JSON.parse(e) as Json);
}

const PROMPT = "Once upon a time, there was a little";

/** The text ids add after the prompt (decoded in context: SentencePiece drops a leading space only at the start). */
function continuation(ids: number[]): string {
  const prompt = tok.encode(PROMPT);
  const before = tok.decode(prompt);
  const all = tok.decode([...prompt, ...ids]);
  expect(all.startsWith(before)).toBe(true);
  return all.slice(before.length);
}

describe("return_token_ids", () => {
  it("non-streaming: token_ids decode to the text, prompt_token_ids are the prompt's", async () => {
    const r = await post({ prompt: PROMPT, max_tokens: 24, return_token_ids: true });
    const c = r.choices[0];
    expect(c.token_ids).toHaveLength(r.usage.completion_tokens);
    expect(continuation(c.token_ids)).toBe(c.text);
    expect(c.prompt_token_ids).toEqual(tok.encode(PROMPT));
    // Without the flag the answer is as before: no ids.
    const plain = await post({ prompt: PROMPT, max_tokens: 24 });
    expect(plain.choices[0].text).toBe(c.text);
    expect(Object.keys(plain.choices[0]).sort()).toEqual(["finish_reason", "index", "logprobs", "text"]);
  });

  it("streaming: one chunk per token, ids equal to the non-streamed ones, prompt ids on the first chunk", async () => {
    // A stop string makes the server hold text back: those chunks still carry their ids.
    const body = { prompt: PROMPT, max_tokens: 32, stop: ["zzz", " the"], return_token_ids: true };
    const whole = (await post(body)).choices[0];
    const chunks = await postStream(body);
    const ids: number[] = [];
    let text = "";
    chunks.forEach((ch, i) => {
      const c = ch.choices[0];
      if (i === 0) expect(c.prompt_token_ids).toEqual(tok.encode(PROMPT));
      else expect(c.prompt_token_ids).toBeUndefined();
      expect(Array.isArray(c.token_ids)).toBe(true);
      ids.push(...c.token_ids);
      text += c.text;
    });
    expect(ids).toEqual(whole.token_ids);
    expect(text).toBe(whole.text);
    expect(continuation(ids).startsWith(text)).toBe(true);
    // Every generated token came in a chunk of its own (the engine produces one per step).
    expect(chunks.filter((ch) => ch.choices[0].token_ids.length > 0).length).toBe(ids.length);
    // Some of them with their text held back (a possible start of " the").
    expect(chunks.some((ch) => ch.choices[0].text === "" && ch.choices[0].token_ids.length > 0)).toBe(true);
    expect(chunks.at(-1)!.choices[0].finish_reason).toBe("stop");
    // Without the flag no chunk has ids.
    const plain = await postStream({ prompt: PROMPT, max_tokens: 32, stop: ["zzz", " the"] });
    expect(plain.every((ch) => ch.choices[0].token_ids === undefined)).toBe(true);
    expect(plain.map((ch) => ch.choices[0].text).join("")).toBe(whole.text);
  });

  it("return_tokens_as_token_ids names logprob tokens token_id:N", async () => {
    const r = await post({
      prompt: PROMPT,
      max_tokens: 8,
      logprobs: 3,
      return_token_ids: true,
      return_tokens_as_token_ids: true,
    });
    const c = r.choices[0];
    expect(c.logprobs.tokens).toEqual(c.token_ids.map((id: number) => `token_id:${id}`));
    for (const top of c.logprobs.top_logprobs) {
      for (const key of Object.keys(top)) expect(key).toMatch(/^token_id:\d+$/);
    }
    // The same logprobs as with token text.
    const named = (await post({ prompt: PROMPT, max_tokens: 8, logprobs: 3 })).choices[0];
    expect(named.logprobs.token_logprobs).toEqual(c.logprobs.token_logprobs);
    expect(named.logprobs.text_offset).toEqual(c.logprobs.text_offset);
    expect(named.logprobs.tokens).toEqual(
      c.token_ids.map((id: number) => new TextDecoder().decode(tok.tokenBytes(id, true))),
    );
  });
});
