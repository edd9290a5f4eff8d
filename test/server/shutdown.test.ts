import type { ChildProcess } from "node:child_process";
import pino from "pino";
import { describe, expect, it } from "vitest";
import { buildApp } from "../../src/server/app.js";
import { DEFAULT_SERVE_OPTIONS, type LoadedModel, type ServerContext } from "../../src/server/context.js";
import { GenerationService } from "../../src/server/generation.js";
import { Metrics } from "../../src/server/metrics.js";
import { startServer } from "../../src/server/server.js";
import { spawnCli } from "../helpers/cli.js";
import { STORIES_260K, testModel } from "../helpers/models.js";

// biome-ignore lint/suspicious/noExplicitAny: response bodies are JSON; the assertions check their shape
type Json = Record<string, any>;

interface Served {
  proc: ChildProcess;
  url: string;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>;
  stdout: () => string;
}

/** `spindle serve` as a real process (from source), on a free port; the URL parsed from its stderr. */
async function serve(args: string[]): Promise<Served> {
  const proc = spawnCli(["serve", "--model", testModel(STORIES_260K), "--port", "0", ...args]);
  let out = "";
  let err = "";
  proc.stdout!.on("data", (d) => (out += d));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>((r) =>
    proc.once("exit", (code, signal) => r({ code, signal, at: performance.now() })),
  );
  const url = await new Promise<string>((ok, fail) => {
    const timer = setTimeout(() => fail(new Error(`no URL on stderr after 20 s: ${err}`)), 20_000);
    proc.stderr!.on("data", (d) => {
      err += d;
      const m = /spindle: serving .* at (http:\/\/\S+)/.exec(err);
      if (m) {
        clearTimeout(timer);
        ok(m[1]!);
      }
    });
    void exit.then(({ code }) => fail(new Error(`spindle serve exited (${code}) before serving: ${err}`)));
  });
  return { proc, url, exit, stdout: () => out };
}

/** Starts a /generate_stream request and returns once its first event arrived. */
async function openStream(url: string, maxNewTokens: number) {
  const res = await fetch(`${url}/generate_stream`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      inputs: "Once upon a time",
      parameters: { max_new_tokens: maxNewTokens, ignore_eos: true },
    }),
  });
  expect(res.status).toBe(200);
  const reader = res.body!.getReader();
  const dec = new TextDecoder();
  let raw = dec.decode((await reader.read()).value);
  return {
    /** Every event until the stream ends, and when it ended. */
    async rest(): Promise<{ events: Json[]; at: number }> {
      for (;;) {
        const c = await reader.read();
        if (c.done) break;
        raw += dec.decode(c.value);
      }
      const events = raw
        .split("\n\n")
        .filter((b) => b.trim())
        .map((b) => JSON.parse(b.slice(5)) as Json);
      return { events, at: performance.now() };
    },
  };
}

/** A new request while draining: refused at the TCP level, or answered 503. */
async function newRequestRefused(url: string): Promise<boolean> {
  try {
    const res = await fetch(`${url}/health`);
    return res.status === 503;
  } catch (e) {
    return /ECONNREFUSED|ECONNRESET|other side closed/.test(String((e as Error).cause ?? e));
  }
}

describe("SIGTERM to spindle serve", () => {
  it("stops accepting, lets an in-flight stream finish within the deadline, and exits 0", async () => {
    const s = await serve(["--shutdown-timeout-ms", "8000"]);
    try {
      const stream = await openStream(s.url, 300);
      const t = performance.now();
      s.proc.kill("SIGTERM");
      await new Promise((r) => setTimeout(r, 100));
      expect(await newRequestRefused(s.url)).toBe(true);
      const { events } = await stream.rest();
      const last = events.at(-1)!;
      expect(last.details).toMatchObject({ finish_reason: "length", generated_tokens: 300 });
      expect(events).toHaveLength(300);
      expect(events.map((e) => e.token.text).join("")).toBe(last.generated_text);
      const exit = await s.exit;
      expect(exit.code).toBe(0);
      // It did not wait for the deadline: it exits once the stream is done.
      expect(exit.at - t).toBeLessThan(8000);
      expect(s.stdout()).toContain('"msg":"stopped"');
    } finally {
      s.proc.kill("SIGKILL");
    }
  });

  it("aborts what is still running at the deadline (the stream ends) and exits 0 within deadline + 2 s", async () => {
    const deadline = 300;
    const s = await serve(["--shutdown-timeout-ms", String(deadline)]);
    try {
      const stream = await openStream(s.url, 1900);
      const whole = fetch(`${s.url}/generate`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          inputs: "The little dog",
          parameters: { max_new_tokens: 1900, ignore_eos: true },
        }),
      });
      await new Promise((r) => setTimeout(r, 50));
      const t = performance.now();
      s.proc.kill("SIGTERM");
      const { events, at } = await stream.rest();
      expect(at - t).toBeGreaterThanOrEqual(deadline - 20);
      expect(at - t).toBeLessThan(deadline + 2000);
      expect(events.length).toBeLessThan(1900);
      // TGI's way of ending a stream that failed: an error event.
      expect(events.at(-1)).toMatchObject({ error_type: "shutting_down" });
      const res = await whole;
      expect(res.status).toBe(503);
      expect(((await res.json()) as Json).error.code).toBe("shutting_down");
      const exit = await s.exit;
      expect(exit.code).toBe(0);
      expect(exit.at - t).toBeLessThan(deadline + 2000);
    } finally {
      s.proc.kill("SIGKILL");
    }
  });
});

describe("/health through the server's life", () => {
  it("503 loading before the model is ready, 200 when ready, 503 draining, and close() resolves", async () => {
    const server = await startServer({
      host: "127.0.0.1",
      port: 0,
      backend: { kind: "local", modelPath: testModel(STORIES_260K) },
      log: pino({ level: "silent" }),
      modelName: "stories",
    });
    try {
      // startServer resolves once listening; the engine worker is still starting.
      const early = await fetch(`${server.url}/health`);
      expect(early.status).toBe(503);
      expect(await early.json()).toEqual({ status: "loading" });
      const gen = await fetch(`${server.url}/generate`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ inputs: "x" }),
      });
      expect(gen.status).toBe(503);
      expect(gen.headers.get("retry-after")).toBe("5");
      await server.ready;
      const ok = await fetch(`${server.url}/health`);
      expect(ok.status).toBe(200);
      expect(await ok.json()).toMatchObject({ status: "ok", model: "stories" });
      expect(server.ctx.metrics.rejected("loading")).toBe(1);
      const v = (await (await fetch(`${server.url}/version`)).json()) as Json;
      expect(v.version).toMatch(/^\d+\.\d+\.\d+/);
    } finally {
      const t = performance.now();
      await server.close();
      expect(performance.now() - t).toBeLessThan(3000);
    }
  });

  it("/health says loading, ok, then draining as the context changes (in-process app)", async () => {
    const opts = { ...DEFAULT_SERVE_OPTIONS };
    const metrics = new Metrics({ processMetrics: false });
    const ctx = { opts, log: pino({ level: "silent" }), metrics, model: undefined, draining: false } as Omit<
      ServerContext,
      "service"
    > as ServerContext;
    ctx.service = new GenerationService(
      opts,
      () => ctx.model,
      () => ctx.draining,
      metrics,
    );
    const app = buildApp(ctx);
    try {
      expect((await app.inject({ method: "GET", url: "/health" })).json()).toEqual({ status: "loading" });
      ctx.model = { info: { kind: "local", contextLength: 64 }, backend: {} } as unknown as LoadedModel;
      const ok = await app.inject({ method: "GET", url: "/health" });
      expect(ok.statusCode).toBe(200);
      ctx.draining = true;
      const draining = await app.inject({ method: "GET", url: "/health" });
      expect(draining.statusCode).toBe(503);
      expect(draining.json()).toEqual({ status: "draining" });
      const metricsRes = await app.inject({ method: "GET", url: "/metrics?format=json" });
      expect(metricsRes.statusCode).toBe(200);
      expect(metricsRes.json()).toMatchObject({ num_requests_running: 0, kv_cache_usage_perc: 0 });
    } finally {
      await app.close();
    }
  });
});
