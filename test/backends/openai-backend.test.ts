import { createServer as createHttpServer, type ServerResponse } from "node:http";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Backend } from "../../src/backends/backend.js";
import { startOpenAIBackend } from "../../src/backends/openai-backend.js";
import { UpstreamError } from "../../src/backends/upstream-error.js";
import { GrammarError } from "../../src/grammar/constraint.js";
import { freePort } from "../../src/net.js";
import type { EngineEvent } from "../../src/protocol/events.js";
import type { SubmitSpec } from "../../src/protocol/request.js";
import { toApiError } from "../../src/server/errors.js";
import { STORIES_260K, testModel } from "../helpers/models.js";
import { STORY_PROMPTS } from "../helpers/prompts.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

// The openai backend against real upstreams: Spindle servers on 127.0.0.1 serving stories260K, in
// process (observed from inside: requests in flight, the order they reach its generation service)
// and as a child process that the backend spawns, and that the test kills.

const MODEL_PATH = testModel(STORIES_260K);
const UP = "up";

/** Counts /v1/completions requests in flight at an in-process server, exactly: from arrival to res.end(). */
function observe(srv: TestServer) {
  const state = {
    now: 0,
    max: 0,
    total: 0,
    reset() {
      state.max = state.now;
      state.total = 0;
    },
  };
  srv.server.app.server.on("request", (req, res: ServerResponse) => {
    if (req.method !== "POST" || !req.url?.startsWith("/v1/completions")) return;
    state.now++;
    state.total++;
    state.max = Math.max(state.max, state.now);
    let ended = false;
    const end = () => {
      if (ended) return;
      ended = true;
      state.now--;
    };
    const orig = res.end;
    res.end = function (this: ServerResponse, ...args: unknown[]) {
      end();
      return (orig as (...a: unknown[]) => ServerResponse).apply(this, args);
    } as typeof res.end;
    res.once("close", end);
  });
  return state;
}

/** What reaches the upstream's backend, in order, and how each ended there. */
function recordStarts(srv: TestServer) {
  const seen: { prompt: number[]; finish: Promise<string> }[] = [];
  const backend = srv.server.ctx.model!.backend;
  const submit = backend.submit.bind(backend);
  backend.submit = (spec, opts) => {
    const stream = submit(spec, opts);
    const finish = stream.result().then(
      (r) => r.finish.reason,
      () => "failed",
    );
    seen.push({ prompt: spec.prompt, finish });
    return stream;
  };
  return seen;
}

// biome-ignore lint/suspicious/noExplicitAny: JSON answers read field by field
type Json = Record<string, any>;

/** The upstream's own answer for a prompt (token ids in, token ids out). */
async function direct(url: string, body: Json): Promise<Json> {
  const res = await fetch(`${url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: UP, temperature: 0, return_token_ids: true, ...body }),
  });
  const answer = (await res.json()) as Json;
  expect(answer.error).toBeUndefined();
  return answer.choices[0];
}

/** A submitted request read to its end: its events, tokens, text and finish (or the error it failed with). */
async function drain(b: Backend, spec: SubmitSpec, signal?: AbortSignal) {
  const events: EngineEvent[] = [];
  try {
    for await (const e of b.submit(spec, { signal })) events.push(e);
  } catch (err) {
    return { events, error: err as Error };
  }
  const finish = events.at(-1)?.finish;
  return {
    events,
    tokens: events.flatMap((e) => e.tokens),
    text: events.map((e) => e.text).join(""),
    finish,
    error: undefined,
  };
}

const PROMPTS = STORY_PROMPTS;

let up: TestServer;
let upCount: ReturnType<typeof observe>;
let upSeen: ReturnType<typeof recordStarts>;
let ids: number[][];
const backends: Backend[] = [];

async function gateway(o: Partial<Parameters<typeof startOpenAIBackend>[0]> = {}): Promise<Backend> {
  const b = await startOpenAIBackend({ kind: "openai", modelPath: MODEL_PATH, upstreams: [up.url], ...o });
  backends.push(b);
  return b;
}

beforeAll(async () => {
  up = await startTestServer({ modelName: UP });
  upCount = observe(up);
  upSeen = recordStarts(up);
  const tok = up.server.ctx.model!.tokenizer;
  ids = PROMPTS.map((p) => tok.encode(p));
});
afterAll(async () => {
  await Promise.all(backends.map((b) => b.close()));
  await up?.close();
});

describe("the openai backend against a Spindle upstream", () => {
  it("greedy output equals the upstream's own, token ids and logprobs included", async () => {
    const b = await gateway();
    expect(b.info.kind).toBe("openai");
    expect(b.info.contextLength).toBe(up.server.ctx.model!.info.contextLength);
    expect(b.info.details.upstreamModel).toBe(UP);
    for (const [i, prompt] of ids.slice(0, 3).entries()) {
      const stop = i === 2 ? ["dog"] : [];
      const own = await direct(up.url, { prompt, max_tokens: 24, stop, ignore_eos: i === 1 });
      const r = await drain(b, {
        prompt,
        maxTokens: 24,
        sampling: { temperature: 0 },
        stop,
        stopAtEog: i !== 1,
      });
      expect(r.error).toBeUndefined();
      expect(r.tokens).toEqual(own.token_ids);
      expect(r.text).toBe(own.text);
      expect(r.finish!.reason).toBe(own.finish_reason);
      expect(r.finish!.completionTokens).toBe(own.token_ids.length);
      expect(r.finish!.promptTokens).toBe(prompt.length);
      // Streamed token by token, as the upstream produced them.
      expect(r.events.filter((e) => e.tokens.length > 0).length).toBe(own.token_ids.length);
    }
    const own = await direct(up.url, {
      prompt: ids[3],
      max_tokens: 8,
      logprobs: 2,
      return_tokens_as_token_ids: true,
    });
    const r = await drain(b, { prompt: ids[3]!, maxTokens: 8, sampling: { temperature: 0, logprobs: 2 } });
    const samples = r.events.flatMap((e) => e.logprobs ?? []);
    expect(samples.map((s) => s.token)).toEqual(own.token_ids);
    expect(samples.map((s) => s.logprob)).toEqual(own.logprobs.token_logprobs);
    expect(samples[0]!.topLogprobs.map((t) => `token_id:${t.token}`)).toEqual(
      Object.keys(own.logprobs.top_logprobs[0]).slice(0, 2),
    );
  });

  it("upstreamConcurrency 4: 32 clients, never more than 4 in flight at the upstream, all answers right", async () => {
    const b = await gateway({ upstreamConcurrency: 4 });
    const requests = Array.from({ length: 32 }, (_, i) => ({
      prompt: ids[i % ids.length]!,
      maxTokens: 8 + 4 * (i % 4) + Math.floor(i / 8),
    }));
    const expected = await Promise.all(
      requests.map((q) => direct(up.url, { prompt: q.prompt, max_tokens: q.maxTokens })),
    );
    let maxWaiting = 0;
    b.onQueue?.((q) => (maxWaiting = Math.max(maxWaiting, q.waiting)));
    upCount.reset();
    const got = await Promise.all(
      requests.map((q) =>
        drain(b, { prompt: q.prompt, maxTokens: q.maxTokens, sampling: { temperature: 0 } }),
      ),
    );
    expect(upCount.total).toBe(32);
    expect(upCount.max).toBe(4);
    expect(maxWaiting).toBeGreaterThan(0);
    got.forEach((r, i) => {
      expect(r.error).toBeUndefined();
      expect(r.tokens).toEqual(expected[i]!.token_ids);
      expect(r.text).toBe(expected[i]!.text);
      expect(r.finish!.reason).toBe(expected[i]!.finish_reason);
    });
  });

  it("priorities decide what is sent upstream next", async () => {
    const b = await gateway({ upstreamConcurrency: 1, policy: "priority", agingPerSecond: 0 });
    upSeen.length = 0;
    const long = { prompt: ids[0]!, maxTokens: 200, stopAtEog: false, sampling: { temperature: 0 } };
    const low = [1, 2, 3].map((i) => ({ prompt: ids[i]!, maxTokens: 4, priority: 5 }));
    const high = { prompt: ids[4]!, maxTokens: 4, priority: -5 };
    const all = [long, ...low, high].map((s) => drain(b, s));
    const results = await Promise.all(all);
    for (const r of results) expect(r.error).toBeUndefined();
    expect(upSeen.map((s) => s.prompt)).toEqual([ids[0], ids[4], ids[1], ids[2], ids[3]]);
  });

  it("a client that goes away aborts the upstream request (the upstream frees its slot)", async () => {
    const b = await gateway();
    upSeen.length = 0;
    const ac = new AbortController();
    const stream = b.submit(
      { prompt: ids[0]!, maxTokens: 1500, stopAtEog: false, sampling: { temperature: 0 } },
      { signal: ac.signal },
    );
    const events: EngineEvent[] = [];
    for await (const e of stream) {
      events.push(e);
      if (events.length === 3) ac.abort("the client disconnected");
    }
    expect(events.at(-1)!.finish!.reason).toBe("abort");
    expect(await upSeen[0]!.finish).toBe("abort");
    await until(() => upCount.now === 0, 2000);
  });

  it("upstream 4xx reach the client as they are", async () => {
    const b = await gateway();
    const r = await drain(b, { prompt: ids[0]!, maxTokens: 5000 });
    expect(r.error).toBeInstanceOf(UpstreamError);
    const api = toApiError(r.error);
    expect(api.status).toBe(400);
    expect(api.message).toMatch(/maximum context length is 2048/);
    expect(api.param).toBe("max_tokens");
  });

  it("a request with a grammar is refused (only the local engine enforces grammars), nothing sent upstream", async () => {
    const b = await gateway();
    const before = upCount.total;
    const r = await drain(b, { prompt: ids[0]!, maxTokens: 8, grammar: { type: "json_object" } });
    expect(r.error).toBeInstanceOf(GrammarError);
    expect((r.error as GrammarError).reason).toMatch(/not available with the openai backend/);
    const api = toApiError(r.error);
    expect(api).toMatchObject({ status: 400, code: "invalid_grammar" });
    expect(upCount.total).toBe(before);
  });

  it("a request that cannot reach its upstream is retried on another before anything was sent", async () => {
    const other = await startTestServer({ modelName: UP });
    const b = await gateway({ upstreams: [other.url, up.url] });
    expect((b.health!().upstreams as Json[]).every((u) => u.healthy)).toBe(true);
    await other.close();
    const own = await direct(up.url, { prompt: ids[5], max_tokens: 10 });
    // Both idle: the first one listed is picked, refuses the connection, and the request goes on.
    const r = await drain(b, { prompt: ids[5]!, maxTokens: 10, sampling: { temperature: 0 } });
    expect(r.error).toBeUndefined();
    expect(r.tokens).toEqual(own.token_ids);
    const health = b.health!().upstreams as Json[];
    expect(health[0]).toMatchObject({ url: other.url, healthy: false, failures: 1 });
    expect(health[0]!.error).toMatch(/unreachable \(ECONNREFUSED\)/);
    expect(health[1]).toMatchObject({ url: up.url, healthy: true });
  });

  it("no upstream answering at start is a clear error", async () => {
    const port = await freePort();
    const t0 = performance.now();
    await expect(
      startOpenAIBackend({
        kind: "openai",
        modelPath: MODEL_PATH,
        upstreams: [`http://127.0.0.1:${port}/v1`],
        startTimeoutMs: 600,
      }),
    ).rejects.toThrow(
      `no upstream answered within 600 ms: upstream http://127.0.0.1:${port} is unreachable (ECONNREFUSED)`,
    );
    expect(performance.now() - t0).toBeLessThan(3000);
  });

  it("through HTTP: Spindle's API in front of the gateway answers as the upstream does", async () => {
    const gw = await startTestServer({
      modelName: "gw",
      backend: { kind: "openai", modelPath: MODEL_PATH, upstreams: [up.url], upstreamConcurrency: 2 },
    });
    try {
      const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: "x", maxRetries: 0 });
      const own = await direct(up.url, { prompt: PROMPTS[6], max_tokens: 20 });
      const r = await client.completions.create({
        model: "gw",
        prompt: PROMPTS[6]!,
        max_tokens: 20,
        temperature: 0,
      });
      expect(r.choices[0]!.text).toBe(own.text);
      expect(r.usage!.completion_tokens).toBe(own.token_ids.length);
      // Streamed, with the token ids passed through.
      const res = await fetch(`${gw.url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          model: "gw",
          prompt: PROMPTS[6],
          max_tokens: 20,
          temperature: 0,
          stream: true,
          return_token_ids: true,
        }),
      });
      const chunks = (await res.text())
        .split("\n\n")
        .filter((l) => l.startsWith("data: {"))
        .map((l) => JSON.parse(l.slice(6)) as Json);
      expect(chunks.flatMap((c) => c.choices[0].token_ids)).toEqual(own.token_ids);
      expect(chunks.map((c) => c.choices[0].text).join("")).toBe(own.text);
      const health = (await (await fetch(`${gw.url}/health`)).json()) as Json;
      expect(health.backend).toBe("openai");
      expect(health.backend_health.upstreams[0]).toMatchObject({ url: up.url, healthy: true });
    } finally {
      await gw.close();
    }
  });
});

/**
 * An upstream that misbehaves on purpose (a real HTTP server on 127.0.0.1): healthy, lists a model,
 * and answers /v1/completions as `mode` says.
 */
async function fakeUpstream() {
  const state = { mode: "ok", closed: 0, requests: 0 };
  const server = createHttpServer((req, res) => {
    if (req.url === "/health") return void res.end("ok");
    if (req.url === "/v1/models") return void res.end(JSON.stringify({ data: [{ id: "fake" }] }));
    state.requests++;
    req.on("close", () => state.closed++);
    const json = (status: number, body: unknown) =>
      res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(body));
    const sse = (...events: unknown[]) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      for (const e of events) res.write(`data: ${typeof e === "string" ? e : JSON.stringify(e)}\n\n`);
    };
    const chunk = (text: string, finish: string | null = null, more: Json = {}) => ({
      choices: [{ index: 0, text, finish_reason: finish, ...more }],
    });
    switch (state.mode) {
      case "500":
        return json(500, { error: { message: "boom" } });
      case "504":
        return json(504, { error: { message: "too slow" } });
      case "429":
        return json(429, { error: { message: "slow down", type: "rate_limit_error", code: "rate_limited" } });
      case "malformed":
        sse("{not json");
        return res.end();
      case "truncated":
        sse(chunk(" Once", null, { token_ids: [403] }));
        return res.end();
      case "error-event":
        sse(chunk(" Once", null, { token_ids: [403] }), { error: { message: "engine fell over" } }, "[DONE]");
        return res.end();
      case "no-ids":
        // llama-server's shape: text only, the counts in usage.
        sse(
          chunk(" Once upon"),
          chunk(" a time", "stop"),
          { choices: [], usage: { prompt_tokens: 3, completion_tokens: 4 } },
          "[DONE]",
        );
        return res.end();
      case "eos":
        // vLLM's shape: the end-of-sequence id among the token ids, with its logprob.
        sse(
          chunk(" Once", "stop", {
            token_ids: [403, 2],
            logprobs: {
              tokens: ["token_id:403", "token_id:2"],
              token_logprobs: [-0.5, -0.25],
              top_logprobs: [{ "token_id:403": -0.5 }, { "token_id:2": -0.25 }],
            },
          }),
          "[DONE]",
        );
        return res.end();
      case "hang":
        res.writeHead(200, { "content-type": "text/event-stream" });
        res.flushHeaders();
        return;
    }
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  return {
    url,
    state,
    close: () => {
      server.closeAllConnections();
      return new Promise<void>((r) => server.close(() => r()));
    },
  };
}

describe("a misbehaving upstream", () => {
  it("maps each failure to a clear client error, and never hangs", async () => {
    const fake = await fakeUpstream();
    try {
      const b = await gateway({ upstreams: [fake.url] });
      expect(b.info.details.upstreamModel).toBe("fake");
      const run = (mode: string, spec: Partial<SubmitSpec> = {}) => {
        fake.state.mode = mode;
        return drain(b, { prompt: ids[0]!, maxTokens: 8, ...spec });
      };
      const status = async (mode: string) => {
        const r = await run(mode);
        expect(r.error).toBeInstanceOf(UpstreamError);
        const e = toApiError(r.error);
        return [e.status, e.message, e.code];
      };
      expect(await status("500")).toEqual([
        502,
        `upstream ${fake.url} failed (HTTP 500: boom)`,
        "bad_gateway",
      ]);
      expect(await status("504")).toEqual([
        504,
        `upstream ${fake.url} timed out (HTTP 504: too slow)`,
        "upstream_timeout",
      ]);
      expect(await status("429")).toEqual([429, "slow down", "rate_limited"]);
      expect(await status("malformed")).toEqual([
        502,
        `upstream ${fake.url} sent a malformed stream event: "{not json"`,
        "bad_gateway",
      ]);
      // After a token reached the client, a failure ends the request with reason "error".
      const cut = await run("truncated");
      expect(cut.text).toBe(" Once");
      expect(cut.finish).toMatchObject({ reason: "error" });
      expect(cut.finish!.message).toMatch(/ended the stream before the completion finished/);
      const failed = await run("error-event");
      expect(failed.finish).toMatchObject({
        reason: "error",
        message: `upstream ${fake.url} failed mid-stream: engine fell over`,
      });
      // No token ids upstream: they are tokenized here; the counts are the upstream's.
      const plain = await run("no-ids");
      expect(plain.text).toBe(" Once upon a time");
      const tok = up.server.ctx.model!.tokenizer;
      // Split at word boundaries, the deltas tokenize as the whole text does.
      expect(plain.tokens).toEqual(tok.encode("Once upon a time", { addSpecial: false }));
      expect(plain.finish).toMatchObject({ reason: "stop", promptTokens: 3, completionTokens: 4 });
      // The end-of-sequence id is reported as such, not as output.
      expect(tok.eos).toBe(2);
      const eos = await run("eos", { sampling: { logprobs: 1 } });
      expect(eos.tokens).toEqual([403]);
      expect(eos.finish).toMatchObject({ reason: "stop", eogToken: 2 });
      expect(eos.events.flatMap((e) => e.logprobs ?? [])).toEqual([
        { token: 403, logprob: -0.5, topLogprobs: [{ token: 403, logprob: -0.5 }] },
      ]);
      // An upstream that never answers: the request's timeout aborts it, and the upstream sees the close.
      const closed = fake.state.closed;
      const t0 = performance.now();
      const hung = await run("hang", { timeoutMs: 300 });
      expect(performance.now() - t0).toBeLessThan(1500);
      expect(hung.finish).toMatchObject({ reason: "abort", message: "timed out after 300 ms" });
      await until(() => fake.state.closed === closed + 1, 1000);
      // Still healthy: these were answers, not a dead upstream.
      expect((b.health!().upstreams as Json[])[0]).toMatchObject({ healthy: true });
    } finally {
      await fake.close();
    }
  });

  it("a 5xx before any token is retried on another upstream", async () => {
    const fake = await fakeUpstream();
    try {
      fake.state.mode = "500";
      const b = await gateway({ upstreams: [fake.url, up.url], upstreamModel: UP });
      const own = await direct(up.url, { prompt: ids[1], max_tokens: 6 });
      const r = await drain(b, { prompt: ids[1]!, maxTokens: 6, sampling: { temperature: 0 } });
      expect(fake.state.requests).toBe(1);
      expect(r.error).toBeUndefined();
      expect(r.tokens).toEqual(own.token_ids);
    } finally {
      await fake.close();
    }
  });
});

describe("a spawned upstream that dies", () => {
  it("in-flight requests end with an error, new ones get 503, and after the restart requests succeed", async () => {
    const port = await freePort();
    const command = `'${process.execPath}' --import tsx src/cli/entry.ts serve --model '${MODEL_PATH}' --port ${port} --served-model-name ${UP}`;
    const b = await gateway({
      upstreams: [`http://127.0.0.1:${port}`],
      spawn: command,
      healthIntervalMs: 200,
      spawnOptions: { cwd: process.cwd(), backoff: { initialMs: 300 }, pollMs: 100 },
    });
    const pid = (b.health!().spawn as Json).pid as number;
    expect(pid).toBeGreaterThan(0);

    // Four long generations, each under way (a first token received) when the server is killed.
    const started: Promise<void>[] = [];
    const runs = [0, 1, 2, 3].map((i) => {
      let first!: () => void;
      started.push(new Promise<void>((r) => (first = r)));
      return (async () => {
        const events: EngineEvent[] = [];
        try {
          for await (const e of b.submit({
            prompt: ids[i]!,
            maxTokens: 1500,
            stopAtEog: false,
            sampling: { temperature: 0 },
          })) {
            events.push(e);
            first();
          }
          return events.at(-1)!.finish!;
        } finally {
          first();
        }
      })();
    });
    await Promise.all(started);
    const killedAt = performance.now();
    process.kill(pid, "SIGKILL");
    const finishes = await Promise.all(runs);
    // Bounded, not instant: the point is no hang (a loaded 2-core CI machine is slow to notice).
    expect(performance.now() - killedAt).toBeLessThan(15_000);
    for (const f of finishes) {
      expect(f.reason).toBe("error");
      expect(f.message).toMatch(/upstream http:\/\/127\.0\.0\.1:\d+ closed the connection mid-stream/);
    }

    // Down: a new request fails at once with 503.
    const down = await drain(b, { prompt: ids[0]!, maxTokens: 4 });
    expect(down.error).toBeInstanceOf(UpstreamError);
    const api = toApiError(down.error);
    expect(api.status).toBe(503);
    // Refused by the dead server, or refused at once once the supervisor reported the exit.
    expect(api.message).toMatch(
      /upstream http:\/\/127\.0\.0\.1:\d+ (is unreachable \((ECONNREFUSED|ECONNRESET)\)|exited)/,
    );
    // And from then on, no new request is sent there until it is back.
    const again = await drain(b, { prompt: ids[0]!, maxTokens: 4 });
    expect(toApiError(again.error).message).toMatch(
      /^no upstream is available: upstream http:\S+ (is unreachable|exited)/,
    );
    expect(toApiError(again.error).status).toBe(503);

    // Restarted by the supervisor: requests succeed again, with the same greedy output as before.
    await until(() => (b.health!().upstreams as Json[])[0]!.healthy === true, 40_000);
    const newPid = (b.health!().spawn as Json).pid as number;
    expect(newPid).not.toBe(pid);
    expect((b.health!().spawn as Json).restarts).toBe(1);
    const own = await direct(up.url, { prompt: ids[2], max_tokens: 12 });
    const r = await drain(b, { prompt: ids[2]!, maxTokens: 12, sampling: { temperature: 0 } });
    expect(r.error).toBeUndefined();
    expect(r.tokens).toEqual(own.token_ids);

    await b.close();
    expect(alive(newPid)).toBe(false);
  });
});

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function until(cond: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!cond()) {
    if (performance.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
