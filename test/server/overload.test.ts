import { afterEach, describe, expect, it } from "vitest";
import { STORIES_260K, testModel } from "../helpers/models.js";
import { engineStats, startTestServer, type TestServer } from "../helpers/server.js";

/**
 * A burst of ten times what the server admits: the excess is refused at once (503 for the queue
 * cap, 429 for the rate limit) with Retry-After and an OpenAI-shaped body, and every request that
 * was admitted completes normally with the right usage.
 */

const BURST = 40;
const PROMPT = "Once upon a time";
const MAX_TOKENS = 64;

interface Outcome {
  status: number;
  retryAfter: string | null;
  body: Record<string, unknown>;
}

let srv: TestServer | undefined;
afterEach(async () => {
  await srv?.close();
  srv = undefined;
});

async function burst(s: TestServer): Promise<Outcome[]> {
  const model = s.server.ctx.opts.modelName;
  return Promise.all(
    Array.from({ length: BURST }, async (_, i) => {
      const res = await fetch(`${s.url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          model,
          prompt: PROMPT,
          max_tokens: MAX_TOKENS,
          ignore_eos: true,
          temperature: 0.8,
          seed: i,
        }),
      });
      return {
        status: res.status,
        retryAfter: res.headers.get("retry-after"),
        body: (await res.json()) as Record<string, unknown>,
      };
    }),
  );
}

function check(
  outcomes: Outcome[],
  s: TestServer,
  rejectStatus: number,
  type: string,
  code: string,
): Outcome[] {
  const accepted = outcomes.filter((o) => o.status === 200);
  const rejected = outcomes.filter((o) => o.status === rejectStatus);
  const other = outcomes.filter((o) => o.status !== 200 && o.status !== rejectStatus);
  expect(other.map((o) => `${o.status} ${JSON.stringify(o.body)}`)).toEqual([]);
  expect(accepted.length + rejected.length).toBe(BURST);
  const promptTokens = s.server.ctx.model!.tokenizer.encode(PROMPT).length;
  for (const o of accepted) {
    const usage = o.body.usage as { prompt_tokens: number; completion_tokens: number; total_tokens: number };
    // With a BOS token, or without: what the server counted is what the tokenizer gives, give or take BOS.
    expect(usage.prompt_tokens).toBeGreaterThanOrEqual(promptTokens);
    expect(usage.prompt_tokens).toBeLessThanOrEqual(promptTokens + 1);
    expect(usage.completion_tokens).toBe(MAX_TOKENS);
    expect(usage.total_tokens).toBe(usage.prompt_tokens + usage.completion_tokens);
    const choices = o.body.choices as { finish_reason: string }[];
    expect(choices).toHaveLength(1);
    expect(choices[0]!.finish_reason).toBe("length");
  }
  for (const o of rejected) {
    expect(o.retryAfter).toMatch(/^[1-9]\d*$/);
    const e = o.body.error as Record<string, unknown>;
    expect(Object.keys(o.body)).toEqual(["error"]);
    expect(e.type).toBe(type);
    expect(e.code).toBe(code);
    expect(e.param).toBeNull();
    expect(typeof e.message).toBe("string");
    expect(e.message as string).not.toMatch(/\n/);
  }
  return rejected;
}

async function expectIdle(s: TestServer): Promise<void> {
  const stats = await engineStats(s);
  expect(stats.running).toBe(0);
  expect(stats.waiting).toBe(0);
  expect(stats.kvUsage).toBe(0);
  expect(s.server.ctx.service.numInFlight).toBe(0);
  expect(s.server.ctx.service.numWaiting).toBe(0);
}

describe("overload", () => {
  it("queue cap: beyond maxQueue waiting requests, 503 with Retry-After; the admitted all complete", async () => {
    const maxQueue = 4;
    // Two sequences at a time in the engine, so that the rest really wait in its queue.
    srv = await startTestServer({
      maxQueue,
      backend: { kind: "local", modelPath: testModel(STORIES_260K), options: { maxNumSeqs: 2 } },
    });
    const outcomes = await burst(srv);
    const rejected = check(outcomes, srv, 503, "server_overloaded", "queue_full");
    const accepted = BURST - rejected.length;
    expect(accepted).toBeGreaterThanOrEqual(maxQueue);
    expect(rejected.length).toBeGreaterThan(0);
    expect(srv.server.ctx.metrics.rejectedByReason.queue_full).toBe(rejected.length);
    await expectIdle(srv);
  });

  it("the queue cap and queue timeout count only requests that have not started yet", async () => {
    // One queued request allowed, and 100 ms to start: a running request must hold neither.
    srv = await startTestServer({ maxQueue: 1, queueTimeoutMs: 100 });
    const s = srv;
    const complete = (maxTokens: number) =>
      fetch(`${s.url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          model: s.server.ctx.opts.modelName,
          prompt: PROMPT,
          max_tokens: maxTokens,
          ignore_eos: true,
        }),
      });
    const t0 = performance.now();
    const long = complete(300);
    const running = async () => (await engineStats(s)).running === 1;
    while (!(await running())) await new Promise((r) => setTimeout(r, 5));
    const short = await complete(4);
    expect(short.status).toBe(200);
    const res = await long;
    expect(res.status).toBe(200);
    const body = (await res.json()) as {
      choices: { finish_reason: string }[];
      usage: { completion_tokens: number };
    };
    expect(body.choices[0]!.finish_reason).toBe("length");
    expect(body.usage.completion_tokens).toBe(300);
    // It did run past the queue timeout, so the timeout was really not applied to it.
    expect(performance.now() - t0).toBeGreaterThan(100);
    await expectIdle(s);
  });

  it("rate limit: beyond the burst, 429 with Retry-After; the admitted all complete", async () => {
    const rateLimit = { perSecond: 2, burst: 3 };
    srv = await startTestServer({ rateLimit });
    const t0 = performance.now();
    const outcomes = await burst(srv);
    const seconds = (performance.now() - t0) / 1000;
    const rejected = check(outcomes, srv, 429, "rate_limit_error", "rate_limit_exceeded");
    const accepted = BURST - rejected.length;
    expect(accepted).toBeGreaterThanOrEqual(rateLimit.burst);
    // Beyond the burst, only what refilled while the requests arrived (they all had by the end).
    expect(accepted).toBeLessThanOrEqual(rateLimit.burst + Math.ceil(seconds * rateLimit.perSecond));
    expect(srv.server.ctx.metrics.rejectedByReason.rate_limited).toBe(rejected.length);
    await expectIdle(srv);

    // Retry-After is honest: after waiting that long, a request gets through.
    const wait = Math.max(...rejected.map((o) => Number(o.retryAfter)));
    expect(wait).toBe(1);
    await new Promise((r) => setTimeout(r, wait * 1000));
    const again = await fetch(`${srv.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: srv.server.ctx.opts.modelName, prompt: PROMPT, max_tokens: 2 }),
    });
    expect(again.status).toBe(200);
  });
});
