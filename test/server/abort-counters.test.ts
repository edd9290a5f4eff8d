import { connect } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { STORIES_260K, testModel } from "../helpers/models.js";
import { engineStats, startTestServer, type TestServer } from "../helpers/server.js";
import { waitFor } from "../helpers/wait.js";

/**
 * `client_aborts_total` counts the engine requests (one per choice) that finished with reason
 * "abort" while their client was gone; `request_success_total{finished_reason="abort"}` counts
 * every engine request that finished with reason "abort". Without timeouts or a shutdown every
 * abort is a client's, so after a crowd of clients that go away at every moment — before the
 * request is even read, while it waits in the queue, mid-stream, on the last chunk, after the
 * whole response — the two agree exactly, and the engine holds nothing afterwards.
 */

let srv: TestServer;
let model: string;
let port: number;

beforeAll(async () => {
  // Two sequences per batch: most of the crowd waits in the queue, so some leave before their first token.
  srv = await startTestServer({
    backend: { kind: "local", modelPath: testModel(STORIES_260K), options: { maxNumSeqs: 2 } },
    shutdownTimeoutMs: 1000,
  });
  model = srv.server.ctx.opts.modelName;
  port = Number(new URL(srv.url).port);
});
afterAll(async () => {
  await srv?.close();
});

/** When the client drops its connection. */
type Drop =
  | { after: "write" }
  | { after: "ms"; ms: number }
  /** After this many bytes of response body (headers excluded). */
  | { after: "bytes"; bytes: number }
  /** Once the response holds this text (a finish chunk, say), before the rest arrives. */
  | { after: "text"; text: string }
  /** After the whole response (the socket is closed by the client then). */
  | { after: "end" };

/** POSTs `body` over a raw socket and destroys the socket as `drop` says. Resolves with what was read. */
function post(path: string, body: unknown, drop: Drop): Promise<string> {
  const payload = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    let data = "";
    let timer: NodeJS.Timeout | undefined;
    const sock = connect(port, "127.0.0.1", () => {
      sock.write(
        `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(payload)}\r\nConnection: close\r\n\r\n${payload}`,
      );
      if (drop.after === "write") sock.destroy();
      if (drop.after === "ms") timer = setTimeout(() => sock.destroy(), drop.ms);
    });
    sock.on("data", (b: Buffer) => {
      data += b.toString("latin1");
      const head = data.indexOf("\r\n\r\n");
      if (head < 0) return;
      if (drop.after === "bytes" && data.length - head - 4 >= drop.bytes) sock.destroy();
      if (drop.after === "text" && data.includes(drop.text, head)) sock.destroy();
    });
    sock.on("error", reject);
    sock.on("close", () => {
      clearTimeout(timer);
      resolve(data);
    });
  });
}

async function settled(): Promise<boolean> {
  const s = await engineStats(srv);
  const svc = srv.server.ctx.service;
  return (
    s.running === 0 && s.waiting === 0 && s.unfinished === 0 && svc.numInFlight === 0 && svc.numWaiting === 0
  );
}

/** A Prometheus sample's value from /metrics, 0 when absent. */
function sample(text: string, name: string, labels = ""): number {
  const re = new RegExp(`^${name}\\{([^}]*)\\} (\\S+)$`, "gm");
  let total = 0;
  for (const m of text.matchAll(re)) if (m[1]!.includes(labels)) total += Number(m[2]);
  return total;
}

describe("client abort counters", () => {
  it("client_aborts_total equals request_success_total{finished_reason=abort} after aborts at every moment", async () => {
    const before = srv.server.ctx.metrics;
    const abortsBefore = before.clientAborts;
    const abortFinishesBefore = before.finishedByReason.abort ?? 0;
    const finishedBefore = before.requestsFinished;

    const drops: Drop[] = [
      { after: "write" },
      { after: "ms", ms: 0 },
      { after: "ms", ms: 3 },
      { after: "ms", ms: 15 },
      { after: "ms", ms: 40 },
      { after: "bytes", bytes: 1 },
      { after: "bytes", bytes: 400 },
      // The finish chunk of a stream (OpenAI: a non-null finish_reason; TGI: the details of the last event).
      { after: "text", text: '"finish_reason":"' },
      { after: "text", text: '"generated_text":"' },
      { after: "end" },
    ];
    const requests: [string, Record<string, unknown>][] = [];
    for (const n of [1, 3]) {
      for (const stream of [false, true]) {
        for (const maxTokens of [3, 40]) {
          requests.push([
            "/v1/completions",
            { model, prompt: "Once upon a time", n, max_tokens: maxTokens, ignore_eos: true, stream },
          ]);
          requests.push([
            "/v1/chat/completions",
            {
              model,
              messages: [{ role: "user", content: "Tell me a story." }],
              n,
              max_tokens: maxTokens,
              ignore_eos: true,
              stream,
              temperature: 0.9,
              seed: 7,
            },
          ]);
        }
      }
    }
    for (const maxTokens of [3, 40]) {
      requests.push(["/generate", { inputs: "Once upon a time", parameters: { max_new_tokens: maxTokens } }]);
      requests.push([
        "/generate_stream",
        { inputs: "Once upon a time", parameters: { max_new_tokens: maxTokens, details: true } },
      ]);
    }
    // Every request with every drop, in waves so that the queue is busy but not full.
    const all = requests.flatMap(([path, body]) => drops.map((d) => [path, body, d] as const));
    expect(all.length).toBeGreaterThanOrEqual(200);
    const WAVE = 40;
    const replies: string[] = [];
    for (let i = 0; i < all.length; i += WAVE) {
      const wave = all.slice(i, i + WAVE).map(([path, body, d]) => post(path, body, d));
      replies.push(...(await Promise.all(wave)));
    }
    // Nothing was refused: each request was admitted or its client left first.
    for (const r of replies) if (r.length > 0) expect(r).toMatch(/^HTTP\/1\.1 200 /);

    expect(await waitFor(settled, 10_000)).toBe(true);
    const m = srv.server.ctx.metrics;
    const aborts = m.clientAborts - abortsBefore;
    const abortFinishes = (m.finishedByReason.abort ?? 0) - abortFinishesBefore;
    // The crowd really did abort a good share of its requests, and let others finish.
    expect(abortFinishes).toBeGreaterThan(50);
    expect(m.requestsFinished - finishedBefore - abortFinishes).toBeGreaterThan(50);
    expect(aborts).toBe(abortFinishes);

    // The same numbers on /metrics, as Prometheus scrapes them.
    const text = await (await fetch(`${srv.url}/metrics`)).text();
    expect(sample(text, "spindle_client_aborts_total")).toBe(m.clientAborts);
    expect(sample(text, "spindle_request_success_total", 'finished_reason="abort"')).toBe(
      m.finishedByReason.abort,
    );
    expect(m.clientAborts).toBe(m.finishedByReason.abort);

    // Nothing leaked: no KV block in use, /health fine, a normal request still works.
    const stats = await engineStats(srv);
    expect(stats.kvUsage).toBe(0);
    expect((await fetch(`${srv.url}/health`)).status).toBe(200);
    const ok = await fetch(`${srv.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model, prompt: "Once upon a time", max_tokens: 4 }),
    });
    expect(ok.status).toBe(200);
  });
});
