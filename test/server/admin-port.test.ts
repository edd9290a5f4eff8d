import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestServer, type TestServer } from "../helpers/server.js";

/**
 * --admin-port: /health, /metrics and /version on a port of their own, without auth (the data plane
 * keeps its keys), reporting the same server: a request served on the main port shows in the admin
 * port's metrics. Nothing but the operations routes is there.
 */

const KEY = "admin-port-test-key-Z8q";
let srv: TestServer;
let admin: string;

beforeAll(async () => {
  srv = await startTestServer({ apiKeys: [KEY], adminPort: 0 });
  admin = srv.server.adminUrl!;
});
afterAll(async () => {
  await srv?.close();
});

/** The value of a Prometheus sample line `name{...labels} value` whose labels include `has`. */
function sample(text: string, name: string, has: string): number {
  const line = text.split("\n").find((l) => l.startsWith(name) && l.includes(has));
  return line === undefined ? 0 : Number(line.slice(line.lastIndexOf(" ") + 1));
}

describe("--admin-port", () => {
  it("listens on its own port, apart from the API's", () => {
    expect(admin).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(admin).not.toBe(srv.url);
  });

  it("answers /health and /version without a key, with what the main port says", async () => {
    const h = await fetch(`${admin}/health`);
    expect(h.status).toBe(200);
    const body = (await h.json()) as Record<string, unknown>;
    const main = (await (await fetch(`${srv.url}/health`)).json()) as Record<string, unknown>;
    expect(body).toMatchObject({ status: "ok", model: main.model, max_model_len: main.max_model_len });
    const v = (await (await fetch(`${admin}/version`)).json()) as { version: string };
    expect(v.version).toMatch(/^\d+\.\d+\.\d+/);
  });

  it("its /metrics counts the requests the main port served", async () => {
    const before = await (await fetch(`${admin}/metrics`)).text();
    const res = await fetch(`${srv.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${KEY}` },
      body: JSON.stringify({ prompt: "Once upon a time", max_tokens: 5, temperature: 0 }),
    });
    expect(res.status).toBe(200);
    const after = await (await fetch(`${admin}/metrics`)).text();
    const tokens = (t: string) => sample(t, "spindle_generation_tokens_total", "");
    expect(tokens(after) - tokens(before)).toBe(5);
  });

  it("serves nothing else: the API stays on the main port, behind its key", async () => {
    const r = await fetch(`${admin}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ prompt: "x", max_tokens: 1 }),
    });
    expect(r.status).toBe(404);
    const unauth = await fetch(`${srv.url}/v1/models`);
    expect(unauth.status).toBe(401);
  });
});
