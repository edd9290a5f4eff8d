import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { engineStats, startTestServer, type TestServer } from "../helpers/server.js";
import { waitFor } from "../helpers/wait.js";

/**
 * Clients that go away mid-stream: fifty streaming requests each read a couple of events and
 * drop the connection. Within a second the engine holds nothing for them (no running or waiting
 * request, no KV block in use) and each drop was counted once as a client abort.
 */

const CLIENTS = 50;
const MAX_TOKENS = 1000;

let srv: TestServer;
beforeAll(async () => {
  // After an aborted fetch, undici opens a fresh connection that sends nothing; Node's server.close()
  // does not count such a connection as idle, so a graceful close would wait out its whole deadline.
  srv = await startTestServer({ shutdownTimeoutMs: 1000 });
});
afterAll(async () => {
  await srv?.close();
});

/** Streams one request, reads until it has seen `events` SSE events, then aborts the connection. */
async function readThenDrop(path: string, body: Record<string, unknown>, events: number): Promise<number> {
  const controller = new AbortController();
  const res = await fetch(srv.url + path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    signal: controller.signal,
  });
  expect(res.status).toBe(200);
  expect(res.headers.get("content-type")).toMatch(/^text\/event-stream/);
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let text = "";
  let seen = 0;
  while (seen < events) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`the stream ended after ${seen} events: ${text.slice(-300)}`);
    text += decoder.decode(value, { stream: true });
    seen = text.split("\n\n").filter((e) => e.startsWith("data:") && !e.includes("[DONE]")).length;
  }
  controller.abort();
  return seen;
}

async function idle(): Promise<boolean> {
  const s = await engineStats(srv);
  return s.running === 0 && s.waiting === 0 && s.unfinished === 0 && s.kvUsage === 0;
}

describe("client disconnects", () => {
  it(`${CLIENTS} streaming clients drop mid-stream: the engine frees everything within 1 s`, async () => {
    const model = srv.server.ctx.opts.modelName;
    const metrics = srv.server.ctx.metrics;
    const abortsBefore = metrics.clientAborts;
    const finishedBefore = metrics.finishedByReason.abort ?? 0;

    const drops = Array.from({ length: CLIENTS }, (_, i) => {
      // Both OpenAI endpoints and TGI's, so every streaming route is covered.
      if (i % 3 === 0) {
        return readThenDrop(
          "/v1/chat/completions",
          {
            model,
            messages: [{ role: "user", content: `Tell story number ${i}.` }],
            max_tokens: MAX_TOKENS,
            ignore_eos: true,
            stream: true,
          },
          3, // the first chat event is the role alone
        );
      }
      if (i % 3 === 1) {
        return readThenDrop(
          "/generate_stream",
          { inputs: `Once upon a time ${i}`, parameters: { max_new_tokens: MAX_TOKENS, ignore_eos: true } },
          2,
        );
      }
      return readThenDrop(
        "/v1/completions",
        { model, prompt: `Once upon a time ${i}`, max_tokens: MAX_TOKENS, ignore_eos: true, stream: true },
        2,
      );
    });
    await Promise.all(drops);
    const dropped = performance.now();

    // Dropped while still generating: nothing can have finished on its own.
    expect(await waitFor(idle, 1000)).toBe(true);
    expect(
      await waitFor(
        async () => metrics.clientAborts - abortsBefore >= CLIENTS,
        1000 - (performance.now() - dropped),
      ),
    ).toBe(true);
    expect(performance.now() - dropped).toBeLessThan(1000);
    expect(metrics.clientAborts - abortsBefore).toBe(CLIENTS);
    expect((metrics.finishedByReason.abort ?? 0) - finishedBefore).toBe(CLIENTS);
    expect(srv.server.ctx.service.numInFlight).toBe(0);
    expect(srv.server.ctx.service.numWaiting).toBe(0);
  });

  it("a client dropping a non-streaming request is aborted and counted too", async () => {
    const metrics = srv.server.ctx.metrics;
    const abortsBefore = metrics.clientAborts;
    const controller = new AbortController();
    const pending = fetch(`${srv.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: srv.server.ctx.opts.modelName,
        prompt: "Once upon a time",
        max_tokens: MAX_TOKENS,
        ignore_eos: true,
      }),
      signal: controller.signal,
    }).catch((err: unknown) => err);
    // Wait until it runs in the engine, then go away.
    expect(await waitFor(async () => (await engineStats(srv)).running === 1, 5000)).toBe(true);
    controller.abort();
    expect(await pending).toBeInstanceOf(Error);
    expect(await waitFor(idle, 1000)).toBe(true);
    expect(await waitFor(async () => metrics.clientAborts - abortsBefore === 1, 1000)).toBe(true);
  });

  it("the server still serves normally afterwards", async () => {
    const res = await fetch(`${srv.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: srv.server.ctx.opts.modelName,
        prompt: "Once upon a time",
        max_tokens: 8,
      }),
    });
    expect(res.status).toBe(200);
    expect(await idle()).toBe(true);
  });
});
