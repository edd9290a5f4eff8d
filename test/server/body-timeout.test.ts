import { connect, type Socket } from "node:net";
import { Writable } from "node:stream";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { engineStats, startTestServer, type TestServer } from "../helpers/server.js";

/**
 * A request must arrive whole within --body-timeout-ms of its first byte: half a body, a chunked
 * body that never ends, or headers that never end get a 408 in OpenAI's error shape with
 * Connection: close, and the socket is closed, soon after the (here small) timeout rather than
 * after Node's defaults (300 s, or never). A slow request that does finish in time is served, a
 * kept-alive connection idle between requests is not cut, and nothing is left in the engine.
 */

const TIMEOUT_MS = 400;
/** How long after sending a test waits for the server to close: far below Node's defaults. */
const CLOSE_WITHIN_MS = 5000;

// biome-ignore lint/suspicious/noExplicitAny: log lines are JSON
type Json = Record<string, any>;

let srv: TestServer;
let port: number;
let model: string;
const lines: Json[] = [];

beforeAll(async () => {
  const sink = new Writable({
    write(chunk, _enc, cb) {
      for (const l of String(chunk).split("\n")) if (l.trim()) lines.push(JSON.parse(l) as Json);
      cb();
    },
  });
  srv = await startTestServer({ bodyTimeoutMs: TIMEOUT_MS, log: pino({ level: "info" }, sink) });
  port = Number(new URL(srv.url).port);
  model = srv.server.ctx.opts.modelName;
});
afterAll(async () => {
  await srv?.close();
});

interface Exchange {
  /** Everything the server sent. */
  data: string;
  /** Milliseconds from connecting until the server closed the connection. */
  closedAfterMs: number;
}

/**
 * Opens a connection, runs `send` on it, and resolves once the server closes it (or rejects after
 * CLOSE_WITHIN_MS: the server kept the connection open).
 */
function exchange(send: (s: Socket) => void | Promise<void>): Promise<Exchange> {
  return new Promise((resolve, reject) => {
    const start = performance.now();
    let data = "";
    const sock = connect(port, "127.0.0.1", () => void send(sock));
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`the server kept the connection open for ${CLOSE_WITHIN_MS} ms; it sent: ${data}`));
    }, CLOSE_WITHIN_MS);
    sock.on("data", (b: Buffer) => (data += b.toString()));
    sock.on("error", () => {});
    sock.on("close", () => {
      clearTimeout(timer);
      resolve({ data, closedAfterMs: performance.now() - start });
    });
  });
}

function expect408(x: Exchange): void {
  const [head, body] = x.data.split("\r\n\r\n");
  expect(head).toMatch(/^HTTP\/1\.1 408 /);
  expect(head).toMatch(/\r\nconnection: close(\r\n|$)/i);
  expect(head).toMatch(/\r\ncontent-type: application\/json/i);
  const e = (JSON.parse(body!) as { error: Json }).error;
  expect(e).toEqual({
    message: expect.stringMatching(/too long/),
    type: "invalid_request_error",
    param: null,
    code: "request_timeout",
  });
  // Not before the timeout.
  expect(x.closedAfterMs).toBeGreaterThanOrEqual(TIMEOUT_MS - 5);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const body = () => JSON.stringify({ model, prompt: "Once upon a time", max_tokens: 4 });
const head = (extra: string) =>
  `POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n${extra}\r\n`;

async function idle(): Promise<boolean> {
  const s = await engineStats(srv);
  return s.running === 0 && s.waiting === 0 && s.unfinished === 0 && s.kvUsage === 0;
}

describe("request body timeout", () => {
  it("half a Content-Length body: 408, Connection: close, socket closed", async () => {
    const b = body();
    const x = await exchange((s) => {
      s.write(`${head(`Content-Length: ${b.length}\r\n`)}${b.slice(0, 10)}`);
    });
    expect408(x);
  });

  it("a chunked body that never ends: 408 and closed", async () => {
    const b = body();
    const x = await exchange(async (s) => {
      s.write(head("Transfer-Encoding: chunked\r\n"));
      // A chunk now and then, never the last one: the connection is busy but the request never completes.
      for (let i = 0; i < 8 && !s.destroyed; i++) {
        s.write(`${(1).toString(16)}\r\n${b[i]}\r\n`);
        await sleep(TIMEOUT_MS / 4);
      }
    });
    expect408(x);
  });

  it("headers that never end: 408 and closed", async () => {
    const x = await exchange((s) => {
      s.write("POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    });
    expect408(x);
  });

  it("a connection that never sends a byte is closed without an answer", async () => {
    const x = await exchange(() => {});
    expect(x.data).toBe("");
  });

  it("logs one `rejected` line per timed-out request, with its endpoint and client when known", () => {
    const timeouts = lines.filter((l) => l.msg === "rejected" && l.status === 408);
    expect(timeouts).toHaveLength(3);
    // The two whose headers had arrived are known by method and path; the third only by its address.
    expect(timeouts.filter((l) => l.endpoint === "/v1/completions")).toHaveLength(2);
    for (const l of timeouts) {
      expect(l).toMatchObject({ reason: "request_timeout", client: "127.0.0.1" });
      expect(["POST", null]).toContain(l.method);
    }
    // Nothing of the bodies reached the log.
    expect(JSON.stringify(lines)).not.toContain("Once upon");
  });

  it("an error answered before the body arrived closes the connection with it, not after a 408", async () => {
    const x = await exchange((s) => {
      // Refused on its headers alone: a content type the server does not take.
      s.write("POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n");
      s.write("Content-Length: 1000\r\n\r\nOnce");
    });
    expect(x.data).toMatch(/^HTTP\/1\.1 415 /);
    expect(x.data.split("\r\n\r\n")[0]).toMatch(/\r\nconnection: close(\r\n|$)/i);
    expect(x.data).not.toMatch(/ 408 /);
  });

  it("a slow body that arrives within the timeout is served", async () => {
    const b = body();
    const x = await exchange(async (s) => {
      s.write(head(`Content-Length: ${b.length}\r\nConnection: close\r\n`));
      const parts = 4;
      const step = Math.ceil(b.length / parts);
      for (let i = 0; i < parts; i++) {
        await sleep(TIMEOUT_MS / 8);
        s.write(b.slice(i * step, (i + 1) * step));
      }
    });
    expect(x.data).toMatch(/^HTTP\/1\.1 200 /);
    const res = JSON.parse(x.data.split("\r\n\r\n")[1]!) as Json;
    expect(res.choices[0].text.length).toBeGreaterThan(0);
  });

  it("a kept-alive connection idle between requests for longer than the timeout still serves", async () => {
    const b = body();
    const request = `${head(`Content-Length: ${b.length}\r\n`)}${b}`;
    const sock = connect(port, "127.0.0.1");
    let data = "";
    sock.on("data", (d: Buffer) => (data += d.toString()));
    const responses = () => data.match(/HTTP\/1\.1 200 /g)?.length ?? 0;
    const until = async (cond: () => boolean) => {
      const end = performance.now() + CLOSE_WITHIN_MS;
      while (!cond() && performance.now() < end) await sleep(10);
      return cond();
    };
    try {
      await new Promise<void>((r) => sock.once("connect", () => r()));
      sock.write(request);
      expect(await until(() => responses() === 1)).toBe(true);
      await sleep(TIMEOUT_MS * 3);
      expect(sock.destroyed).toBe(false);
      sock.write(request);
      expect(await until(() => responses() === 2)).toBe(true);
      expect(data).not.toMatch(/ 408 /);
    } finally {
      sock.destroy();
    }
  });

  it("leaves nothing behind: /health 200, no request in the engine, no KV block in use", async () => {
    expect((await fetch(`${srv.url}/health`)).status).toBe(200);
    expect(await idle()).toBe(true);
    expect(srv.server.ctx.service.numInFlight).toBe(0);
    expect(srv.server.ctx.service.numWaiting).toBe(0);
  });
});
