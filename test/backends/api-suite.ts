import { setTimeout as sleep } from "node:timers/promises";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { BackendInit } from "../../src/backends/index.js";
import { readModelCard } from "../../src/model/model-card.js";
import { STORIES_260K, testModel } from "../helpers/models.js";
import { startTestServer, type TestServer } from "../helpers/server.js";
import { waitFor } from "../helpers/wait.js";

/**
 * One API test suite, run against every backend (api-<backend>.test.ts): the
 * same HTTP requests through the official `openai` client and fetch, the same
 * assertions. What must hold whatever computes the tokens: the OpenAI and TGI
 * routes answer in their shapes, greedy output is reproducible and the same
 * streamed or not, stop strings and max_tokens end generation, concurrent
 * requests never get each other's text, bad input is a 4xx, a client that
 * leaves does not hurt the others, and the metrics count what was served.
 *
 * `reference` (optional) is a backend whose greedy answers this one must equal
 * token for token (llamacpp and openai-in-front-of-local against local).
 */

export const MODEL = "stories260K";

export interface SuiteOptions {
  /** Starts the server under test (the backend and whatever it needs, e.g. an upstream). */
  start(): Promise<TestServer>;
  /** Stops what start() started besides the server. */
  stop?(): Promise<void>;
  backend: BackendInit["kind"];
  /** Must the greedy text equal the local engine's? (true for real models, false for sim) */
  sameAsLocal: boolean;
  /** Rounds of staggered concurrent requests (default 60; a backend with simulated latency can take fewer). */
  concurrentRounds?: number;
}

const card = readModelCard(testModel(STORIES_260K));
const PROMPTS = [
  "Once upon a time",
  "Lily and Ben went to the park.",
  "The cat sat",
  "One day, a little girl named Sue",
  "The sun was hot",
  "Tom had a red ball",
  "There was a big tree",
  "Mom said",
];

let localServer: TestServer | undefined;
let localServerUsers = 0;

/** Greedy completions from the local backend, for backends that must give the same. */
async function localGreedy(prompt: string, maxTokens: number): Promise<string> {
  localServer ??= await startTestServer({ modelName: MODEL });
  const r = await fetch(`${localServer.url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: MODEL, prompt, max_tokens: maxTokens, temperature: 0 }),
  });
  const body = (await r.json()) as { choices: { text: string }[] };
  return body.choices[0]!.text;
}

export function apiSuite(o: SuiteOptions): void {
  let srv: TestServer;
  let client: OpenAI;
  const post = (path: string, body: unknown) =>
    fetch(`${srv.url}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
  const greedy = async (prompt: string, maxTokens: number) => {
    const r = await client.completions.create({
      model: MODEL,
      prompt,
      max_tokens: maxTokens,
      temperature: 0,
    });
    return r.choices[0]!;
  };

  describe(`API suite, backend ${o.backend}`, () => {
    beforeAll(async () => {
      if (o.sameAsLocal) localServerUsers++;
      srv = await o.start();
      client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "x", maxRetries: 0 });
    });
    afterAll(async () => {
      await srv?.close();
      await o.stop?.();
      if (o.sameAsLocal && --localServerUsers === 0) {
        await localServer?.close();
        localServer = undefined;
      }
    });

    it("/health names the backend; /v1/models lists the model", async () => {
      const h = (await (await fetch(`${srv.url}/health`)).json()) as Record<string, unknown>;
      expect(h).toMatchObject({ status: "ok", backend: o.backend, max_model_len: card.contextLength });
      const list = await client.models.list();
      expect(list.data.map((m) => m.id)).toEqual([MODEL]);
    });

    it("greedy completions are reproducible, counted, and cut at max_tokens", async () => {
      const a = await client.completions.create({
        model: MODEL,
        prompt: PROMPTS[0]!,
        max_tokens: 12,
        temperature: 0,
      });
      const b = await greedy(PROMPTS[0]!, 12);
      expect(a.choices[0]!.text.length).toBeGreaterThan(0);
      expect(b.text).toBe(a.choices[0]!.text);
      expect(a.choices[0]!.finish_reason).toBe("length");
      const promptIds = card.tokenizer.encode(PROMPTS[0]!, { addSpecial: true });
      expect(a.usage).toMatchObject({ prompt_tokens: promptIds.length, completion_tokens: 12 });
      if (o.sameAsLocal) expect(a.choices[0]!.text).toBe(await localGreedy(PROMPTS[0]!, 12));
    });

    it("streamed text equals the non-streamed text, with usage at the end", async () => {
      const whole = await greedy(PROMPTS[1]!, 16);
      const stream = await client.completions.create({
        model: MODEL,
        prompt: PROMPTS[1]!,
        max_tokens: 16,
        temperature: 0,
        stream: true,
        stream_options: { include_usage: true },
      });
      let text = "";
      let finish: string | null = null;
      let usage: OpenAI.Completions.CompletionUsage | undefined | null;
      for await (const c of stream) {
        if (c.choices[0]) {
          text += c.choices[0].text;
          finish = c.choices[0].finish_reason ?? finish;
        }
        if (c.usage) usage = c.usage;
      }
      expect(text).toBe(whole.text);
      expect(finish).toBe(whole.finish_reason);
      expect(usage?.completion_tokens).toBe(16);
    });

    it("chat completions, streamed and not, agree", async () => {
      const messages = [{ role: "user" as const, content: "Tell me a story." }];
      const r = await client.chat.completions.create({
        model: MODEL,
        messages,
        max_tokens: 10,
        temperature: 0,
      });
      const content = r.choices[0]!.message.content ?? "";
      expect(r.choices[0]!.message.role).toBe("assistant");
      expect(r.usage!.completion_tokens).toBeGreaterThan(0);
      const s = await client.chat.completions.create({
        model: MODEL,
        messages,
        max_tokens: 10,
        temperature: 0,
        stream: true,
      });
      let streamed = "";
      for await (const c of s) streamed += c.choices[0]?.delta.content ?? "";
      expect(streamed).toBe(content);
    });

    it("a stop string ends the text before it", async () => {
      const whole = (await greedy(PROMPTS[0]!, 24)).text;
      // A stop string from the middle of the greedy text: the answer is what comes before its first occurrence.
      const stop = whole.slice(Math.floor(whole.length / 2), Math.floor(whole.length / 2) + 3);
      const r = await client.completions.create({
        model: MODEL,
        prompt: PROMPTS[0]!,
        max_tokens: 24,
        temperature: 0,
        stop: [stop],
      });
      expect(r.choices[0]!.text).toBe(whole.slice(0, whole.indexOf(stop)));
      expect(r.choices[0]!.finish_reason).toBe("stop");
    });

    it("concurrent requests each get their own answer", async () => {
      const solo: string[] = [];
      for (const p of PROMPTS) solo.push((await greedy(p, 10)).text);
      expect(new Set(solo).size).toBeGreaterThan(1);
      // Rounds of staggered arrivals, so prompts share batches with other prompts' prefills and decodes in
      // many combinations (llamacpp once traded tokens between sequences a few times in a thousand this way).
      for (let round = 0; round < (o.concurrentRounds ?? 60); round++) {
        const together = await Promise.all(
          PROMPTS.map(async (p) => {
            await sleep(Math.random() * 5);
            return (await greedy(p, 10)).text;
          }),
        );
        expect(together, `round ${round}`).toEqual(solo);
      }
    });

    it("TGI /generate and /generate_stream agree with /v1/completions", async () => {
      const ref = await greedy(PROMPTS[2]!, 8);
      const g = await post("/generate", {
        inputs: PROMPTS[2],
        parameters: { max_new_tokens: 8, details: true },
      });
      expect(g.status).toBe(200);
      const gb = (await g.json()) as { generated_text: string; details: { generated_tokens: number } };
      expect(gb.generated_text).toBe(ref.text);
      expect(gb.details.generated_tokens).toBe(8);
      const s = await post("/generate_stream", { inputs: PROMPTS[2], parameters: { max_new_tokens: 8 } });
      const body = await s.text();
      const events = body
        .split("\n")
        .filter((l) => l.startsWith("data:"))
        .map((l) => JSON.parse(l.slice(5)) as { generated_text: string | null });
      expect(events.at(-1)!.generated_text).toBe(ref.text);
    });

    it("/tokenize uses the model's tokenizer", async () => {
      const r = await post("/tokenize", { model: MODEL, prompt: PROMPTS[3] });
      const b = (await r.json()) as { tokens: number[] };
      expect(b.tokens).toEqual(card.tokenizer.encode(PROMPTS[3]!, { addSpecial: true }));
    });

    it("bad input is a 4xx in OpenAI's shape and the server goes on", async () => {
      const r = await post("/v1/completions", { model: MODEL, prompt: "x", temperature: 7 });
      expect(r.status).toBe(400);
      expect(((await r.json()) as { error: { param: string } }).error.param).toBe("temperature");
      const tooLong = await post("/v1/completions", {
        model: MODEL,
        prompt: Array.from({ length: card.contextLength }, () => 1),
      });
      expect(tooLong.status).toBe(400);
      expect(((await tooLong.json()) as { error: { code: string } }).error.code).toBe(
        "context_length_exceeded",
      );
      await expect(client.completions.create({ model: "nope", prompt: "x" })).rejects.toBeInstanceOf(
        OpenAI.NotFoundError,
      );
      expect((await greedy(PROMPTS[4]!, 4)).text.length).toBeGreaterThan(0);
    });

    it("a client that leaves mid-stream is aborted and the server goes on", async () => {
      const ac = new AbortController();
      const stream = await client.completions.create(
        { model: MODEL, prompt: PROMPTS[5]!, max_tokens: 2000, temperature: 0, stream: true },
        { signal: ac.signal },
      );
      let n = 0;
      try {
        for await (const _ of stream) {
          if (++n === 3) {
            ac.abort();
            break;
          }
        }
      } catch {
        // The SDK may throw its abort error: either way the connection is gone.
      }
      expect(n).toBe(3);
      const inFlight = async () =>
        ((await (await fetch(`${srv.url}/health`)).json()) as { in_flight: number }).in_flight === 0;
      expect(await waitFor(inFlight, 5000)).toBe(true);
      expect((await greedy(PROMPTS[6]!, 4)).finish_reason).toBe("length");
    });

    it("/metrics counts the requests served", async () => {
      const before = (await (await fetch(`${srv.url}/metrics?format=json`)).json()) as {
        generation_tokens_total: number;
      };
      await greedy(PROMPTS[7]!, 5);
      const after = (await (await fetch(`${srv.url}/metrics?format=json`)).json()) as {
        generation_tokens_total: number;
      };
      expect(after.generation_tokens_total - before.generation_tokens_total).toBe(5);
      const text = await (await fetch(`${srv.url}/metrics`)).text();
      expect(text).toMatch(/spindle_time_to_first_token_seconds_count(\{[^}]*\})? [1-9]/);
    });
  });
}
