import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type BenchRequest, sendStreaming, type Target } from "../../src/bench/client.js";
import { SseParser } from "../../src/sse-parser.js";

/**
 * The client's protocol handling against a tiny fake OpenAI-compatible server (node:http on
 * 127.0.0.1) that streams scripted SSE bytes with controlled delays: events split across TCP
 * writes, several events in one write, usage, error statuses, error events.
 */

type Step = { wait?: number; write?: string };

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const ev = (o: unknown) => `data: ${JSON.stringify(o)}\n\n`;
const tok = (text: string) =>
  ev({ object: "text_completion", choices: [{ index: 0, text, finish_reason: null }] });

let server: Server;
let base: string;
const received: Array<{ url: string; headers: IncomingMessage["headers"]; body: Record<string, unknown> }> =
  [];
const scripts = new Map<string, (res: ServerResponse) => Promise<void>>();

function streamed(steps: Step[]) {
  return async (res: ServerResponse) => {
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    res.flushHeaders();
    for (const s of steps) {
      if (s.wait) await sleep(s.wait);
      if (s.write !== undefined) res.write(s.write);
    }
    res.end();
  };
}

beforeAll(async () => {
  server = createServer((req, res) => {
    req.socket.setNoDelay(true);
    let raw = "";
    req.on("data", (c) => (raw += c));
    req.on("end", () => {
      const body = raw ? (JSON.parse(raw) as Record<string, unknown>) : {};
      received.push({ url: req.url ?? "", headers: req.headers, body });
      const key = String(
        body.prompt ?? (body.messages as Array<{ content: string }> | undefined)?.[0]?.content,
      );
      const script = scripts.get(key);
      if (!script) {
        res.writeHead(404).end();
        return;
      }
      void script(res).catch(() => res.destroy());
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
});

const target = (api: "completions" | "chat" = "completions"): Target => ({
  baseUrl: base,
  api,
  model: "fake",
});
const request = (prompt: string, extra: Partial<BenchRequest> = {}): BenchRequest => ({
  prompt,
  promptTokens: 7,
  maxTokens: 8,
  ignoreEos: true,
  ...extra,
});

describe("SSE parsing", () => {
  it("reassembles events split anywhere, CRLF split between reads, comments, multi-line data", () => {
    const stream =
      ': keep-alive\r\n\r\ndata: {"a":1}\r\n\r\ndata: line1\ndata: line2\n\nevent: x\ndata: [DONE]\n\n';
    for (let cut = 0; cut <= stream.length; cut++) {
      const p = new SseParser();
      const bytes = new TextEncoder().encode(stream);
      const out = [...p.push(bytes.slice(0, cut)), ...p.push(bytes.slice(cut)), ...p.end()];
      expect(out).toEqual(['{"a":1}', "line1\nline2", "[DONE]"]);
    }
    // A multi-byte character split between reads survives.
    const p = new SseParser();
    const b = new TextEncoder().encode('data: {"t":"é"}\n\n');
    const i = b.indexOf(0xc3) + 1;
    expect([...p.push(b.slice(0, i)), ...p.push(b.slice(i))]).toEqual(['{"t":"é"}']);
    // An event without its closing blank line is delivered at the end.
    const q = new SseParser();
    expect(q.push("data: tail")).toEqual([]);
    expect(q.end()).toEqual(["tail"]);
  });
});

describe("streaming client against a fake server", () => {
  it("times every token chunk, with events split across writes and batched in one write", async () => {
    const e3 = tok(" c");
    scripts.set(
      "timed",
      streamed([
        { wait: 60, write: tok("a") }, // first token ≈ 60 ms
        { wait: 40, write: tok(" b") }, // +40
        { wait: 40, write: e3.slice(0, 10) }, // half an event…
        { wait: 50, write: e3.slice(10) }, // …completed 50 ms later: that is its arrival
        { wait: 40, write: tok(" d") + tok(" e") }, // two events in one write: gap 0
        { wait: 10, write: ev({ choices: [{ index: 0, text: "", finish_reason: "length" }] }) },
        {
          write: ev({ choices: [], usage: { prompt_tokens: 11, completion_tokens: 6, total_tokens: 17 } }),
        },
        { write: "data: [DONE]\n\n" },
      ]),
    );
    const r = await sendStreaming(target(), request("timed", { priority: 3, apiKey: "k1" }));
    expect(r.ok, r.errorDetail).toBe(true);
    expect(r.chunkTimesMs).toHaveLength(5);
    expect(r.ttftMs!).toBeGreaterThanOrEqual(55);
    expect(r.ttftMs!).toBeLessThan(60 + 400);
    const [g1, g2, g3, g4] = r.itlMs;
    expect(r.itlMs).toHaveLength(4);
    expect(g1!).toBeGreaterThanOrEqual(30);
    expect(g2!).toBeGreaterThanOrEqual(80); // 40 + 50: the split event counts when complete
    expect(g3!).toBeGreaterThanOrEqual(30);
    expect(g4!).toBeLessThan(20); // same write (the bound leaves room for a busy 2-core CI machine)
    expect(g2!).toBeGreaterThan(g1!);
    // E2E ≥ TTFT + all gaps; output tokens from usage (6) although 5 chunks had text.
    expect(r.e2eMs!).toBeGreaterThanOrEqual(r.ttftMs! + r.itlMs.reduce((a, b) => a + b, 0) - 1e-6);
    expect(r.outputTokens).toBe(6);
    expect(r.outputTokensFrom).toBe("usage");
    expect(r.promptTokens).toBe(11);
    expect(r.promptTokensFrom).toBe("usage");
    expect(r.finishReason).toBe("length");

    const sent = received.find((x) => x.body.prompt === "timed")!;
    expect(sent.url).toBe("/v1/completions");
    expect(sent.headers.authorization).toBe("Bearer k1");
    expect(sent.body).toMatchObject({
      model: "fake",
      prompt: "timed",
      max_tokens: 8,
      stream: true,
      stream_options: { include_usage: true },
      ignore_eos: true,
      priority: 3,
    });
  });

  it("without usage, output tokens are the token chunks; keep-alive comments are ignored", async () => {
    scripts.set(
      "nousage",
      streamed([
        { write: ": ping\n\n" },
        { wait: 5, write: tok("x") },
        { wait: 5, write: tok("y") },
        { wait: 5, write: tok("z") },
        { write: "data: [DONE]\n\n" },
      ]),
    );
    const r = await sendStreaming(target(), request("nousage"));
    expect(r.ok).toBe(true);
    expect(r.outputTokens).toBe(3);
    expect(r.outputTokensFrom).toBe("chunks");
    expect(r.promptTokens).toBe(7);
    expect(r.promptTokensFrom).toBe("request");
  });

  it("chat: a role-only first chunk is not the first token", async () => {
    const chunk = (delta: Record<string, unknown>) =>
      ev({ object: "chat.completion.chunk", choices: [{ index: 0, delta, finish_reason: null }] });
    scripts.set(
      "chat",
      streamed([
        { write: chunk({ role: "assistant", content: "" }) },
        { wait: 50, write: chunk({ content: "Hi" }) },
        { wait: 10, write: chunk({ content: "!" }) },
        { write: ev({ choices: [{ index: 0, delta: {}, finish_reason: "stop" }] }) },
        { write: "data: [DONE]\n\n" },
      ]),
    );
    const r = await sendStreaming(target("chat"), request("chat"));
    expect(r.ok).toBe(true);
    expect(r.ttftMs!).toBeGreaterThanOrEqual(45);
    expect(r.outputTokens).toBe(2);
    const sent = received.find((x) => JSON.stringify(x.body).includes('"chat"'))!;
    expect(sent.url).toBe("/v1/chat/completions");
    expect(sent.body.messages).toEqual([{ role: "user", content: "chat" }]);
  });

  it("an error status fails with the status and the error's code", async () => {
    scripts.set("busy", async (res) => {
      res.writeHead(503, { "content-type": "application/json", "retry-after": "1" });
      res.end(
        JSON.stringify({
          error: { message: "the server is busy", type: "server_overloaded", code: "queue_full" },
        }),
      );
    });
    const r = await sendStreaming(target(), request("busy"));
    expect(r.ok).toBe(false);
    expect(r.status).toBe(503);
    expect(r.error).toBe("HTTP 503 queue_full");
    expect(r.errorDetail).toContain("the server is busy");
    expect(r.ttftMs).toBeUndefined();

    scripts.set("plain500", async (res) => {
      res.writeHead(500).end("boom");
    });
    const p = await sendStreaming(target(), request("plain500"));
    expect(p.error).toBe("HTTP 500: boom");
  });

  it("an error event in the stream, a stream cut before [DONE], and a stream with no token fail", async () => {
    scripts.set(
      "errevent",
      streamed([
        { write: tok("a") },
        { write: ev({ error: { message: "engine failed", code: "internal" } }) },
      ]),
    );
    const e = await sendStreaming(target(), request("errevent"));
    expect(e.ok).toBe(false);
    expect(e.error).toContain("stream error");
    expect(e.error).toContain("internal");
    expect(e.ttftMs).toBeDefined();

    scripts.set("cut", streamed([{ write: tok("a") }, { write: tok("b") }]));
    const c = await sendStreaming(target(), request("cut"));
    expect(c.ok).toBe(false);
    expect(c.error).toBe("stream ended before [DONE]");

    scripts.set("empty", streamed([{ write: "data: [DONE]\n\n" }]));
    const n = await sendStreaming(target(), request("empty"));
    expect(n.ok).toBe(false);
    expect(n.error).toBe("no token received");
  });

  it("an abort signal fails the request with the signal's reason, mid-stream", async () => {
    scripts.set(
      "slow",
      streamed([{ write: tok("a") }, { wait: 5000, write: tok("b") }, { write: "data: [DONE]\n\n" }]),
    );
    const ac = new AbortController();
    setTimeout(() => ac.abort("cut off at the end of the run"), 100);
    const t0 = performance.now();
    const r = await sendStreaming(target(), request("slow"), { signal: ac.signal });
    expect(performance.now() - t0).toBeLessThan(2000);
    expect(r.ok).toBe(false);
    expect(r.error).toBe("cut off at the end of the run");
    expect(r.ttftMs).toBeDefined();
  });

  it("a refused connection is a network error", async () => {
    const probe = createServer();
    await new Promise<void>((r) => probe.listen(0, "127.0.0.1", r));
    const port = (probe.address() as AddressInfo).port;
    await new Promise((r) => probe.close(r));
    const r = await sendStreaming(
      { baseUrl: `http://127.0.0.1:${port}`, api: "completions", model: "m" },
      request("x"),
    );
    expect(r.ok).toBe(false);
    expect(r.error).toMatch(/^network error/);
  });
});
