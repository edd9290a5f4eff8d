import { createOpenAI } from "@ai-sdk/openai";
import { generateText, streamText } from "ai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { engineStats, startTestServer, type TestServer } from "../helpers/server.js";

/**
 * POST /v1/responses (OpenAI's Responses API) against a real server, through the AI SDK's default
 * `openai(...)` provider (which speaks the Responses API) unmodified, and raw for the event stream.
 */

const MODEL = "stories260K";
let srv: TestServer;

beforeAll(async () => {
  srv = await startTestServer({ modelName: MODEL });
});
afterAll(async () => {
  await srv?.close();
});

type Json = Record<string, unknown>;

async function post(path: string, body: Json): Promise<Response> {
  return fetch(`${srv.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
}

/** The greedy chat completion of these messages: what /v1/responses must match. */
async function chat(messages: { role: string; content: string }[], maxTokens: number) {
  const res = await post("/v1/chat/completions", {
    model: MODEL,
    messages,
    max_tokens: maxTokens,
    temperature: 0,
  });
  expect(res.status).toBe(200);
  const j = (await res.json()) as {
    choices: { message: { content: string }; finish_reason: string }[];
    usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
  };
  return { text: j.choices[0]!.message.content, finish: j.choices[0]!.finish_reason, usage: j.usage };
}

/** Parses a server-sent event stream into its `event:` names and JSON data. */
function parseSSE(body: string): { event: string; data: Json }[] {
  return body
    .split("\n\n")
    .filter((b) => b.trim().length > 0)
    .map((block) => {
      const lines = block.split("\n");
      const event = lines.find((l) => l.startsWith("event: "))?.slice(7) ?? "";
      const data = lines.find((l) => l.startsWith("data: "))?.slice(6) ?? "null";
      return { event, data: JSON.parse(data) as Json };
    });
}

const provider = () => createOpenAI({ baseURL: `${srv.url}/v1`, apiKey: "x" });

describe("POST /v1/responses with the AI SDK", () => {
  it("generateText: greedy text and usage equal /v1/chat/completions'", async () => {
    const openai = provider();
    for (const [system, prompt, max] of [
      [undefined, "Once upon a time", 24],
      ["You tell stories.", "Lily and Ben went to the park.", 40],
    ] as const) {
      const messages = [
        ...(system ? [{ role: "system", content: system }] : []),
        { role: "user", content: prompt },
      ];
      const ref = await chat(messages, max);
      const r = await generateText({
        model: openai(MODEL),
        ...(system ? { system } : {}),
        prompt,
        maxOutputTokens: max,
        temperature: 0,
        maxRetries: 0,
      });
      expect(r.text).toBe(ref.text);
      expect(r.text.length).toBeGreaterThan(0);
      expect(r.usage.inputTokens).toBe(ref.usage.prompt_tokens);
      expect(r.usage.outputTokens).toBe(ref.usage.completion_tokens);
      expect(r.usage.totalTokens).toBe(ref.usage.total_tokens);
      expect(r.finishReason).toBe(ref.finish === "length" ? "length" : "stop");
    }
  });

  it("streamText: streamed text equals the non-streamed text", async () => {
    const openai = provider();
    const args = {
      model: openai(MODEL),
      prompt: "The cat",
      maxOutputTokens: 30,
      temperature: 0,
      maxRetries: 0,
    };
    const whole = await generateText(args);
    const s = streamText(args);
    let streamed = "";
    let deltas = 0;
    for await (const d of s.textStream) {
      streamed += d;
      deltas++;
    }
    expect(streamed).toBe(whole.text);
    expect(deltas).toBeGreaterThan(1);
    expect(await s.text).toBe(whole.text);
    expect((await s.usage).outputTokens).toBe(whole.usage.outputTokens);
    expect((await s.usage).inputTokens).toBe(whole.usage.inputTokens);
    expect(await s.finishReason).toBe(whole.finishReason);
  });

  it("refusals reach the AI SDK as errors naming the field", async () => {
    const openai = provider();
    await expect(
      generateText({
        model: openai(MODEL),
        prompt: "Hi",
        maxRetries: 0,
        providerOptions: { openai: { previousResponseId: "resp_nope" } },
      }),
    ).rejects.toThrow(/previous_response_id/);
  });
});

describe("POST /v1/responses raw", () => {
  it("answers a Response object; incomplete at max_output_tokens", async () => {
    const res = await post("/v1/responses", {
      model: MODEL,
      input: [{ role: "user", content: [{ type: "input_text", text: "Once upon a time" }] }],
      instructions: "Tell a story.",
      max_output_tokens: 5,
      temperature: 0,
    });
    expect(res.status).toBe(200);
    const j = (await res.json()) as Json & { output: { content: { text: string }[] }[] };
    const ref = await chat(
      [
        { role: "system", content: "Tell a story." },
        { role: "user", content: "Once upon a time" },
      ],
      5,
    );
    expect(j).toMatchObject({
      object: "response",
      status: "incomplete",
      incomplete_details: { reason: "max_output_tokens" },
      model: MODEL,
      usage: {
        input_tokens: ref.usage.prompt_tokens,
        output_tokens: 5,
        total_tokens: ref.usage.prompt_tokens + 5,
        output_tokens_details: { reasoning_tokens: 0 },
      },
      output: [{ type: "message", role: "assistant", status: "incomplete" }],
    });
    expect(String(j.id)).toMatch(/^resp_/);
    expect(j.output[0]!.content[0]!.text).toBe(ref.text);
  });

  it("streams typed events in order with sequence numbers", async () => {
    const res = await post("/v1/responses", {
      model: MODEL,
      input: "The dog",
      max_output_tokens: 12,
      temperature: 0,
      stream: true,
    });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/text\/event-stream/);
    const events = parseSSE(await res.text());
    for (const e of events) expect(e.event).toBe(e.data.type);
    expect(events.map((e) => e.data.sequence_number)).toEqual(events.map((_, i) => i));
    const types = events.map((e) => e.event).filter((t) => t !== "response.output_text.delta");
    expect(types).toEqual([
      "response.created",
      "response.in_progress",
      "response.output_item.added",
      "response.content_part.added",
      "response.output_text.done",
      "response.content_part.done",
      "response.output_item.done",
      "response.incomplete",
    ]);
    const text = events
      .filter((e) => e.event === "response.output_text.delta")
      .map((e) => e.data.delta)
      .join("");
    const done = events.find((e) => e.event === "response.output_text.done")!.data;
    expect(done.text).toBe(text);
    const ref = await chat([{ role: "user", content: "The dog" }], 12);
    expect(text).toBe(ref.text);
    const last = events.at(-1)!.data.response as Json;
    expect(last.usage).toMatchObject({ output_tokens: 12, input_tokens: ref.usage.prompt_tokens });
  });

  it("a client that aborts a stream frees the engine", async () => {
    const ac = new AbortController();
    const res = await fetch(`${srv.url}/v1/responses`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: MODEL,
        input: "Once upon a time",
        max_output_tokens: 1500,
        stream: true,
      }),
      signal: ac.signal,
    });
    expect(res.status).toBe(200);
    const reader = res.body!.getReader();
    let seen = "";
    while (!seen.includes("response.output_text.delta")) {
      const { value, done } = await reader.read();
      if (done) break;
      seen += new TextDecoder().decode(value);
    }
    expect((await engineStats(srv)).running).toBe(1);
    ac.abort();
    const deadline = Date.now() + 5000;
    let s = await engineStats(srv);
    while ((s.running > 0 || s.unfinished > 0 || s.kvUsage > 0) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
      s = await engineStats(srv);
    }
    expect(s).toMatchObject({ running: 0, waiting: 0, unfinished: 0, kvUsage: 0 });
  });

  it("a request timeout is a 504 before the stream starts, an error event after", async () => {
    const slow = await startTestServer({ modelName: MODEL, requestTimeoutMs: 40 });
    try {
      // Greedy, so that it runs the same way each time: well past 40 ms before the end of its text.
      const body = { model: MODEL, input: "Once upon a time", max_output_tokens: 1900, temperature: 0 };
      const send = (extra: Json) =>
        fetch(`${slow.url}/v1/responses`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ ...body, ...extra }),
        });
      const whole = await send({});
      expect(whole.status).toBe(504);
      expect(((await whole.json()) as { error: Json }).error).toMatchObject({ code: "timeout" });
      // The first tokens usually arrive within 40 ms, so the timeout comes as an error event; on a
      // loaded machine it may come first, as a 504.
      const res = await send({ stream: true });
      if (res.status === 200) {
        const events = parseSSE(await res.text());
        expect(events.at(-1)).toMatchObject({ event: "error", data: { type: "error", code: "timeout" } });
        expect(events.some((e) => e.event === "response.completed")).toBe(false);
      } else {
        expect(res.status).toBe(504);
      }
      expect(slow.server.ctx.service.numInFlight).toBe(0);
    } finally {
      await slow.close();
    }
  });
});
