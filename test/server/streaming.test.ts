import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generate } from "../../src/model/generate.js";
import { loadModel } from "../../src/model/model.js";
import { STORIES_260K, testModel } from "../helpers/models.js";
import { STORY_PROMPTS } from "../helpers/prompts.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

const MODEL = "stories260K";
const model = loadModel(testModel(STORIES_260K));

let srv: TestServer;
let client: OpenAI;

beforeAll(async () => {
  srv = await startTestServer({ modelName: MODEL });
  client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "x", maxRetries: 0 });
});
afterAll(async () => {
  await srv?.close();
});

const PROMPTS = STORY_PROMPTS;

describe("64 simultaneous streams", () => {
  it("each stream's text equals its non-streamed text and the in-process generation; no chunk crosses streams", async () => {
    const requests = Array.from({ length: 64 }, (_, i) => ({
      prompt: PROMPTS[i % PROMPTS.length]!,
      maxTokens: 8 + ((i * 7) % 41),
    }));
    const solo = new Map<string, string>();
    for (const r of requests) {
      const key = `${r.maxTokens}:${r.prompt}`;
      if (!solo.has(key)) {
        solo.set(
          key,
          generate(model, r.prompt, { maxTokens: r.maxTokens, sampling: { temperature: 0 } }).text,
        );
      }
    }
    const streamed = await Promise.all(
      requests.map(async (r) => {
        const stream = await client.completions.create({
          model: MODEL,
          prompt: r.prompt,
          max_tokens: r.maxTokens,
          temperature: 0,
          stream: true,
        });
        const ids = new Set<string>();
        let text = "";
        let finishes = 0;
        for await (const c of stream) {
          ids.add(c.id);
          expect(c.choices).toHaveLength(1);
          text += c.choices[0]!.text;
          if (c.choices[0]!.finish_reason) finishes++;
        }
        return { ids, text, finishes };
      }),
    );
    const plain = await Promise.all(
      requests.map((r) =>
        client.completions.create({
          model: MODEL,
          prompt: r.prompt,
          max_tokens: r.maxTokens,
          temperature: 0,
        }),
      ),
    );
    const allIds = new Set<string>();
    requests.forEach((r, i) => {
      const s = streamed[i]!;
      expect(s.ids.size, `request ${i}: one id in all its chunks`).toBe(1);
      const id = [...s.ids][0]!;
      expect(allIds.has(id), `request ${i}: its id is its own`).toBe(false);
      allIds.add(id);
      expect(s.finishes).toBe(1);
      expect(s.text, `request ${i}`).toBe(plain[i]!.choices[0]!.text);
      expect(s.text, `request ${i}`).toBe(solo.get(`${r.maxTokens}:${r.prompt}`));
    });
  });

  it("chat streams in parallel give the same text as non-streamed chat", async () => {
    const requests = Array.from({ length: 16 }, (_, i) => ({
      messages: [{ role: "user" as const, content: PROMPTS[i % PROMPTS.length]! }],
      max_tokens: 6 + (i % 5) * 4,
      temperature: 0,
    }));
    const streamed = await Promise.all(
      requests.map(async (r) => {
        const stream = await client.chat.completions.create({ model: MODEL, ...r, stream: true });
        let text = "";
        for await (const c of stream) text += c.choices[0]?.delta.content ?? "";
        return text;
      }),
    );
    const plain = await Promise.all(
      requests.map((r) => client.chat.completions.create({ model: MODEL, ...r })),
    );
    expect(streamed).toEqual(plain.map((p) => p.choices[0]!.message.content));
  });
});

describe("SSE framing", () => {
  async function rawEvents(path: string, body: Record<string, unknown>) {
    const res = await fetch(`${srv.url}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/^text\/event-stream/);
    const raw = await res.text();
    expect(raw.endsWith("data: [DONE]\n\n")).toBe(true);
    const events = raw.split("\n\n").slice(0, -1);
    for (const e of events) expect(e).toMatch(/^data: /);
    expect(events.at(-1)).toBe("data: [DONE]");
    // Every event but the last is one line of JSON.
    return events.slice(0, -1).map((e) => {
      expect(e.includes("\n")).toBe(false);
      return JSON.parse(e.slice("data: ".length)) as Record<string, unknown>;
    });
  }

  it("completions: data: {json}\\n\\n events, then data: [DONE]", async () => {
    const events = await rawEvents("/v1/completions", {
      model: MODEL,
      prompt: "Once upon a time",
      max_tokens: 10,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    expect(events.length).toBeGreaterThan(2);
    for (const e of events.slice(0, -1)) {
      expect(e).toMatchObject({ object: "text_completion", model: MODEL });
      expect(e.usage).toBeNull();
    }
    expect(events.at(-1)).toMatchObject({ choices: [], usage: { completion_tokens: 10 } });
  });

  it("chat: role chunk first, finish chunk last before usage", async () => {
    const events = (await rawEvents("/v1/chat/completions", {
      model: MODEL,
      messages: [{ role: "user", content: "Hi" }],
      max_tokens: 5,
      temperature: 0,
      stream: true,
    })) as { choices: { delta: Record<string, unknown>; finish_reason: string | null }[] }[];
    expect(events[0]!.choices[0]!.delta).toEqual({ role: "assistant", content: "" });
    expect(events.at(-1)!.choices[0]!.finish_reason).toBe("length");
  });

  it("an error before the stream starts is a plain JSON error, not an event stream", async () => {
    const res = await fetch(`${srv.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: MODEL, prompt: "x", max_tokens: 5000, stream: true }),
    });
    expect(res.status).toBe(400);
    expect(res.headers.get("content-type")).toMatch(/^application\/json/);
    expect(((await res.json()) as { error: { param: string } }).error.param).toBe("max_tokens");
  });
});
