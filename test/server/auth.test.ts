import { Writable } from "node:stream";
import OpenAI from "openai";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { keyLabel } from "../../src/server/admission.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

/**
 * API keys: every API route wants `Authorization: Bearer <key>`, any of the configured keys
 * works (the OpenAI SDK included), /health and /metrics stay open, and no key ever reaches the
 * log: clients are known there by a label such as `key-1a2b3c`.
 */

// Distinctive values, so that finding one in the log cannot be a coincidence.
const K1 = "k1-spindle-test-Qx7Vb2";
const K2 = "k2-spindle-test-Lm4Zr9";

let srv: TestServer;
let model: string;
const logged: string[] = [];

beforeAll(async () => {
  const sink = new Writable({
    write(chunk: Buffer | string, _enc, cb) {
      logged.push(chunk.toString());
      cb();
    },
  });
  srv = await startTestServer({ apiKeys: [K1, K2], log: pino({ level: "trace" }, sink) });
  model = srv.server.ctx.opts.modelName;
});
afterAll(async () => {
  await srv?.close();
});

async function post(path: string, body: unknown, headers: Record<string, string> = {}) {
  const res = await fetch(srv.url + path, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
  });
  return { status: res.status, headers: res.headers, body: (await res.json()) as Record<string, unknown> };
}

const completion = () => ({ model, prompt: "Once upon a time", max_tokens: 4 });

describe("API keys", () => {
  it("no Authorization header: 401 missing_api_key", async () => {
    const res = await post("/v1/completions", completion());
    expect(res.status).toBe(401);
    expect(res.headers.get("www-authenticate")).toMatch(/^Bearer/);
    expect(res.body.error).toMatchObject({
      type: "authentication_error",
      code: "missing_api_key",
      param: null,
    });
  });

  it("not a Bearer header: 401 missing_api_key", async () => {
    const res = await post("/v1/completions", completion(), { authorization: `Basic ${btoa(`u:${K1}`)}` });
    expect(res.status).toBe(401);
    expect(res.body.error).toMatchObject({ type: "authentication_error", code: "missing_api_key" });
  });

  it("a wrong key: 401 invalid_api_key, whatever its length", async () => {
    for (const wrong of ["nope", K1.slice(0, -1), `${K1}x`, K1.toUpperCase(), `${K1},${K2}`]) {
      const res = await post("/v1/completions", completion(), { authorization: `Bearer ${wrong}` });
      expect(res.status, wrong).toBe(401);
      expect(res.body.error).toMatchObject({ type: "authentication_error", code: "invalid_api_key" });
    }
  });

  it("every route but /health and /metrics needs the key, unknown ones included", async () => {
    for (const path of ["/v1/models", "/v1/nothing-here"]) {
      const res = await fetch(srv.url + path);
      expect(res.status, path).toBe(401);
    }
    const gen = await post("/generate", { inputs: "Once", parameters: { max_new_tokens: 2 } });
    expect(gen.status).toBe(401);
    expect((await fetch(`${srv.url}/health`)).status).toBe(200);
    expect((await fetch(`${srv.url}/metrics`)).status).toBe(200);
    expect((await fetch(`${srv.url}/metrics?format=json`)).status).toBe(200);
  });

  it("both keys work with the OpenAI SDK; a wrong one raises AuthenticationError", async () => {
    for (const apiKey of [K1, K2]) {
      const client = new OpenAI({ apiKey, baseURL: `${srv.url}/v1`, maxRetries: 0 });
      const c = await client.completions.create({ model, prompt: "Once upon a time", max_tokens: 4 });
      expect(c.choices).toHaveLength(1);
      expect(c.usage?.completion_tokens).toBeGreaterThan(0);
      const chat = await client.chat.completions.create({
        model,
        messages: [{ role: "user", content: "Hello" }],
        max_tokens: 4,
      });
      expect(chat.choices[0]!.message.role).toBe("assistant");
      const models = await client.models.list();
      expect(models.data.map((m) => m.id)).toContain(model);
    }
    const bad = new OpenAI({ apiKey: "not-a-key", baseURL: `${srv.url}/v1`, maxRetries: 0 });
    const err = await bad.completions.create({ model, prompt: "x", max_tokens: 2 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.AuthenticationError);
    expect((err as InstanceType<typeof OpenAI.AuthenticationError>).status).toBe(401);
  });

  it("the scheme is case-insensitive, as HTTP says", async () => {
    const res = await post("/v1/completions", completion(), { authorization: `bearer ${K2}` });
    expect(res.status).toBe(200);
  });

  it("keys never reach the log; the client is known by its label", async () => {
    // A streaming request too, and a failing one with the key given, so every log path has run.
    const stream = await fetch(`${srv.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${K1}` },
      body: JSON.stringify({ ...completion(), stream: true }),
    });
    expect(stream.status).toBe(200);
    await stream.text();
    const bad = await post(
      "/v1/completions",
      { ...completion(), temperature: "hot" },
      { authorization: `Bearer ${K2}` },
    );
    expect(bad.status).toBe(400);
    await new Promise((r) => setTimeout(r, 50));

    const all = logged.join("");
    expect(all.length).toBeGreaterThan(0);
    for (const key of [K1, K2]) {
      expect(all).not.toContain(key);
      // Nor a piece of it long enough to matter.
      expect(all).not.toContain(key.slice(-10));
    }
    expect(all).not.toMatch(/bearer [^<]/i);
    expect(keyLabel(K1)).toMatch(/^key-[0-9a-f]{6}$/);
    expect(all).toContain(keyLabel(K1));
    expect(all).toContain(keyLabel(K2));
    expect(keyLabel(K1)).not.toBe(keyLabel(K2));
  });
});
