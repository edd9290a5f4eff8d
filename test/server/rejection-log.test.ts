import { connect } from "node:net";
import { Writable } from "node:stream";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { keyLabel } from "../../src/server/admission.js";
import { type RunningServer, startServer } from "../../src/server/server.js";
import { STORIES_260K, testModel } from "../helpers/models.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

/**
 * Every request refused with an error writes exactly one `rejected` line through the request log
 * (the pino logger that writes the `request` lines): status, reason code, method, endpoint and
 * client label (the API key's label, never the key), and the client's X-Request-Id. Never the body
 * or the prompt. A request that was served writes its `request` line and no `rejected` line.
 */

// biome-ignore lint/suspicious/noExplicitAny: log lines are JSON
type Json = Record<string, any>;

// Distinctive strings: finding one in the log cannot be a coincidence.
const KEY = "rejection-log-secret-Zq81Kd";
const PROMPT = "PROMPT-TEXT-Wv93Lp once upon a time";

function capture(): { log: pino.Logger; lines: Json[]; raw: string[] } {
  const lines: Json[] = [];
  const raw: string[] = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      raw.push(String(chunk));
      for (const l of String(chunk).split("\n")) if (l.trim()) lines.push(JSON.parse(l) as Json);
      cb();
    },
  });
  return { log: pino({ level: "info" }, stream), lines, raw };
}

let srv: TestServer;
let model: string;
let contextLength: number;
const cap = capture();
const label = keyLabel(KEY);
let nextId = 0;

beforeAll(async () => {
  srv = await startTestServer({ apiKeys: [KEY], maxQueue: 2, bodyLimit: 64 * 1024, log: cap.log });
  model = srv.server.ctx.opts.modelName;
  contextLength = srv.server.ctx.model!.info.contextLength;
});
afterAll(async () => {
  await srv?.close();
});

interface Sent {
  id: string;
  status: number;
  body: Json | undefined;
}

/** Sends a request with a fresh X-Request-Id; the key unless `auth` says otherwise. */
async function send(
  method: string,
  path: string,
  opts: { body?: string | Buffer; type?: string; auth?: string | null; url?: string } = {},
): Promise<Sent> {
  const id = `rid-${nextId++}`;
  const headers: Record<string, string> = { "x-request-id": id };
  if (opts.auth !== null) headers.authorization = opts.auth ?? `Bearer ${KEY}`;
  if (opts.body !== undefined) headers["content-type"] = opts.type ?? "application/json";
  const res = await fetch((opts.url ?? srv.url) + path, { method, headers, body: opts.body });
  const text = await res.text();
  let body: Json | undefined;
  try {
    body = JSON.parse(text) as Json;
  } catch {
    body = undefined;
  }
  return { id, status: res.status, body };
}

const json = (o: Json) => JSON.stringify(o);
const rejectedLines = (lines: Json[]) => lines.filter((l) => l.msg === "rejected");

/** The one `rejected` line of request `id` (fails unless there is exactly one). */
function lineOf(lines: Json[], id: string): Json {
  const found = rejectedLines(lines).filter((l) => l.request_id === id);
  expect(found, `rejected lines for ${id}`).toHaveLength(1);
  return found[0]!;
}

describe("rejected requests are logged", () => {
  it("one line per rejection, with status, reason, endpoint and client label", async () => {
    const C = "/v1/completions";
    const cases: { name: string; sent: Promise<Sent>; status: number; line: Json }[] = [
      {
        name: "not JSON",
        sent: send("POST", C, { body: `{"prompt": "${PROMPT}", ` }),
        status: 400,
        line: { reason: "invalid_json" },
      },
      {
        name: "not UTF-8",
        sent: send("POST", C, { body: Buffer.from([0x7b, 0xff, 0x7d]) }),
        status: 400,
        line: { reason: "invalid_encoding" },
      },
      { name: "no body", sent: send("POST", C), status: 400, line: { reason: "missing_body" } },
      {
        name: "a bad field",
        sent: send("POST", C, { body: json({ model, prompt: PROMPT, temperature: "hot" }) }),
        status: 400,
        line: { reason: "invalid_request", param: "temperature" },
      },
      {
        name: "too long for the context",
        sent: send("POST", C, {
          body: json({
            model,
            prompt: PROMPT + " once upon a time".repeat(contextLength / 2),
            max_tokens: 4,
          }),
        }),
        status: 400,
        line: { reason: "context_length_exceeded", param: "prompt" },
      },
      {
        name: "wrong content type",
        sent: send("POST", C, { body: PROMPT, type: "text/plain" }),
        status: 415,
        line: { reason: "unsupported_media_type" },
      },
      {
        name: "body too large",
        sent: send("POST", C, { body: json({ model, prompt: PROMPT.repeat(4000) }) }),
        status: 413,
        line: { reason: "body_too_large" },
      },
      {
        name: "no key",
        sent: send("POST", C, { body: json({ model, prompt: PROMPT }), auth: null }),
        status: 401,
        line: { reason: "missing_api_key", client: "127.0.0.1" },
      },
      {
        name: "wrong key",
        sent: send("POST", C, { body: json({ model, prompt: PROMPT }), auth: "Bearer not-the-key" }),
        status: 401,
        line: { reason: "invalid_api_key", client: "127.0.0.1" },
      },
      {
        name: "unknown route",
        sent: send("GET", "/v1/nothing?secret=1"),
        status: 404,
        line: { reason: "not_found", method: "GET", endpoint: "/v1/nothing" },
      },
      {
        name: "unknown model",
        sent: send("GET", "/v1/models/no-such-model"),
        status: 404,
        line: { reason: "model_not_found", method: "GET", endpoint: "/v1/models/no-such-model" },
      },
      {
        name: "malformed URL (Fastify's frameworkErrors)",
        sent: send("GET", "/v1/models/%E0%A4%A"),
        status: 400,
        // Refused before admission: known by its address.
        line: {
          reason: "invalid_request",
          method: "GET",
          endpoint: "/v1/models/%E0%A4%A",
          client: "127.0.0.1",
        },
      },
    ];
    for (const c of cases) {
      const s = await c.sent;
      expect(s.status, c.name).toBe(c.status);
      const line = lineOf(cap.lines, s.id);
      expect(line, c.name).toMatchObject({
        status: c.status,
        method: "POST",
        endpoint: C,
        client: label,
        ...c.line,
      });
      // The reason is the code the client got, when it got one.
      if (s.body?.error?.code) expect(line.reason, c.name).toBe(s.body.error.code);
    }
  });

  it("queue full: one 503 queue_full line per request refused", async () => {
    const burst = await Promise.all(
      Array.from({ length: 12 }, () =>
        send("POST", "/v1/completions", {
          body: json({ model, prompt: PROMPT, max_tokens: 32, ignore_eos: true }),
        }),
      ),
    );
    const refused = burst.filter((s) => s.status === 503);
    expect(refused.length).toBeGreaterThan(0);
    expect(burst.filter((s) => s.status !== 503).every((s) => s.status === 200)).toBe(true);
    for (const s of refused) {
      expect(lineOf(cap.lines, s.id)).toMatchObject({
        status: 503,
        reason: "queue_full",
        endpoint: "/v1/completions",
        client: label,
      });
    }
    // The served ones have their `request` line and no `rejected` one.
    for (const s of burst.filter((x) => x.status === 200)) {
      expect(rejectedLines(cap.lines).some((l) => l.request_id === s.id)).toBe(false);
    }
  });

  it("malformed HTTP: one line, known by its address", async () => {
    const before = rejectedLines(cap.lines).length;
    const { port } = new URL(srv.url);
    await new Promise<void>((resolve) => {
      const sock = connect(Number(port), "127.0.0.1", () => sock.write("NOT HTTP AT ALL\r\n\r\n"));
      sock.on("data", () => {});
      sock.on("error", () => {});
      sock.on("close", () => resolve());
    });
    const added = rejectedLines(cap.lines).slice(before);
    expect(added).toEqual([
      {
        ...added[0],
        status: 400,
        reason: "invalid_request",
        method: null,
        endpoint: null,
        client: "127.0.0.1",
      },
    ]);
  });

  it("served requests write no rejected line; nothing logged holds a prompt, a body or the key", async () => {
    const ok = await send("POST", "/v1/completions", {
      body: json({ model, prompt: PROMPT, max_tokens: 2 }),
    });
    expect(ok.status).toBe(200);
    expect(rejectedLines(cap.lines).some((l) => l.request_id === ok.id)).toBe(false);
    expect(cap.lines.some((l) => l.msg === "request" && l.client === label)).toBe(true);
    const all = cap.raw.join("");
    expect(all).not.toContain("PROMPT-TEXT");
    expect(all).not.toContain(KEY);
    expect(all).not.toContain("secret=1");
  });
});

describe("rejections before the model is loaded and over the rate limit", () => {
  let server: RunningServer | undefined;
  afterAll(async () => {
    await server?.close();
  });

  it("503 model_loading and 429 rate_limited get their line", async () => {
    const c = capture();
    server = await startServer({
      host: "127.0.0.1",
      port: 0,
      backend: { kind: "local", modelPath: testModel(STORIES_260K) },
      log: c.log,
      rateLimit: { perSecond: 0.001, burst: 1 },
    });
    const body = json({ inputs: PROMPT });
    // startServer resolves once listening; the engine worker is still starting.
    const loading = await send("POST", "/generate", { body, auth: null, url: server.url });
    expect(loading.status).toBe(503);
    const limited = await send("POST", "/generate", { body, auth: null, url: server.url });
    expect(limited.status).toBe(429);
    expect(lineOf(c.lines, loading.id)).toMatchObject({
      status: 503,
      reason: "model_loading",
      method: "POST",
      endpoint: "/generate",
      client: "127.0.0.1",
    });
    expect(lineOf(c.lines, limited.id)).toMatchObject({
      status: 429,
      reason: "rate_limit_exceeded",
      endpoint: "/generate",
    });
    expect(c.raw.join("")).not.toContain("PROMPT-TEXT");
    await server.ready;
  });
});
