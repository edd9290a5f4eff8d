import { describe, expect, it } from "vitest";
import { requestBody, type StreamResult } from "../../src/bench/client.js";
import { CUT_OFF, drive, INTERRUPTED } from "../../src/bench/load.js";
import { PromptBuilder } from "../../src/bench/prompts.js";
import { markStructured, planRun, STRUCTURED_SCHEMA } from "../../src/bench/workload.js";
import { Rng } from "../../src/sampling/rng.js";

/** A fake request that takes `ms`, honouring the abort signal. */
function fakeSend(ms: (i: number) => number, track?: { now: number; peak: number }) {
  return (_item: unknown, i: number, signal: AbortSignal): Promise<StreamResult> =>
    new Promise((resolve) => {
      const startedAt = performance.now();
      if (track) track.peak = Math.max(track.peak, ++track.now);
      const base = { startedAt, chunkTimesMs: [], itlMs: [], outputTokensFrom: "chunks" as const };
      const finish = (r: Partial<StreamResult>) => {
        if (track) track.now--;
        resolve({
          ok: false,
          outputTokens: 0,
          promptTokens: 1,
          promptTokensFrom: "request",
          textChars: 0,
          ...base,
          ...r,
        });
      };
      const t = setTimeout(() => finish({ ok: true, ttftMs: 1, e2eMs: ms(i), outputTokens: 1 }), ms(i));
      signal.addEventListener(
        "abort",
        () => {
          clearTimeout(t);
          finish({ error: String(signal.reason), e2eMs: performance.now() - startedAt });
        },
        { once: true },
      );
    });
}

const items = (n: number) =>
  Array.from({ length: n }, (_, i) => ({ prompt: `p${i}`, promptTokens: 1, maxTokens: 1 }));

describe("load drivers", () => {
  it("closed loop keeps exactly `concurrency` requests in flight and sends every item once", async () => {
    const track = { now: 0, peak: 0 };
    const r = await drive({
      items: items(12),
      shape: { kind: "closed", concurrency: 3 },
      send: fakeSend(() => 20, track),
      rng: new Rng(1),
      maxSeconds: 10,
    });
    expect(track.peak).toBe(3);
    expect(r.records).toHaveLength(12);
    expect(new Set(r.records.map((x) => x.index)).size).toBe(12);
    expect(r.notSent).toBe(0);
    // 12 requests of 20 ms, 3 at a time: about 80 ms.
    expect(r.durationMs).toBeGreaterThanOrEqual(75);
    expect(r.durationMs).toBeLessThan(1000);
  });

  it("open loop sends on the arrival schedule, capped by max concurrency", async () => {
    const track = { now: 0, peak: 0 };
    const r = await drive({
      items: items(10),
      shape: { kind: "open", rate: Infinity, burstiness: 1, maxConcurrency: 4 },
      send: fakeSend(() => 30, track),
      rng: new Rng(1),
      maxSeconds: 10,
    });
    expect(track.peak).toBe(4);
    expect(r.records).toHaveLength(10);

    const paced = await drive({
      items: items(5),
      shape: { kind: "open", rate: 50, burstiness: 1 },
      send: fakeSend(() => 1),
      rng: new Rng(2),
      maxSeconds: 10,
    });
    const sends = paced.records.map((x) => x.sentAtMs);
    expect(sends[0]!).toBeLessThan(20);
    for (let i = 1; i < sends.length; i++) expect(sends[i]!).toBeGreaterThanOrEqual(sends[i - 1]!);
  });

  it("max-seconds stops sending and cuts off what is in flight", async () => {
    const r = await drive({
      items: items(50),
      shape: { kind: "closed", concurrency: 2 },
      send: fakeSend((i) => (i < 2 ? 30 : 5000)),
      rng: new Rng(1),
      maxSeconds: 0.2,
    });
    expect(r.timedOut).toBe(true);
    expect(r.durationMs).toBeLessThan(1500);
    const cut = r.records.filter((x) => x.result.error === CUT_OFF);
    expect(cut.length).toBe(2);
    expect(r.records.length + r.notSent).toBe(50);
  });

  it("stop (Ctrl-C) stops sending, lets in-flight requests finish within the grace period", async () => {
    const stop = new AbortController();
    setTimeout(() => stop.abort(), 50);
    const r = await drive({
      items: items(40),
      shape: { kind: "closed", concurrency: 2 },
      send: fakeSend((i) => (i % 2 === 0 ? 40 : 10_000)),
      rng: new Rng(1),
      maxSeconds: 30,
      stop: stop.signal,
      graceMs: 100,
    });
    expect(r.interrupted).toBe(true);
    expect(r.durationMs).toBeLessThan(2000);
    expect(r.records.some((x) => x.result.ok)).toBe(true);
    expect(r.records.some((x) => x.result.error === INTERRUPTED)).toBe(true);
    expect(r.notSent).toBeGreaterThan(0);
  });

  it("fixed-time items (a backlog) go out at their offset outside the shape", async () => {
    const list = [
      ...items(4).map((x) => ({ ...x, fixedAtMs: 0, klass: "low" })),
      ...items(2).map((x) => ({ ...x, klass: "high" })),
    ];
    const track = { now: 0, peak: 0 };
    const r = await drive({
      items: list,
      shape: { kind: "closed", concurrency: 1 },
      send: fakeSend(() => 40, track),
      rng: new Rng(1),
      maxSeconds: 10,
    });
    expect(r.records).toHaveLength(6);
    expect(track.peak).toBe(5); // the whole backlog plus one shaped client
  });
});

describe("workloads", () => {
  // A fake tokenizer: one token per whitespace-separated word, two for words over 5 letters.
  const counter = async (text: string) =>
    text
      .split(/\s+/)
      .filter(Boolean)
      .reduce((n, w) => n + (w.length > 5 ? 2 : 1), 0);

  it("random prompts: exact lengths with a tokenizer, in the range, deterministic per seed and run", async () => {
    const spec = { kind: "random" as const, inputLen: 40, outputLen: 16, rangeRatio: 0.5 };
    const a = await planRun(spec, new PromptBuilder(counter), 7, 0, 30);
    const b = await planRun(spec, new PromptBuilder(counter), 7, 0, 30);
    const c = await planRun(spec, new PromptBuilder(counter), 7, 1, 30);
    expect(a.items.map((x) => x.prompt)).toEqual(b.items.map((x) => x.prompt));
    expect(a.items[0]!.prompt).not.toBe(c.items[0]!.prompt);
    for (const it of a.items) {
      expect(await counter(it.prompt)).toBe(it.promptTokens);
      expect(it.promptTokens).toBeGreaterThanOrEqual(20);
      expect(it.promptTokens).toBeLessThanOrEqual(60);
      expect(it.maxTokens).toBeGreaterThanOrEqual(8);
      expect(it.maxTokens).toBeLessThanOrEqual(24);
    }
    // Without a tokenizer the length is an estimate from words.
    const est = await planRun({ ...spec, rangeRatio: 0 }, new PromptBuilder(undefined, 1), 7, 0, 3);
    for (const it of est.items) expect(it.prompt.split(" ")).toHaveLength(40);
  });

  it("copy prompts: one passage written `copies` times, a line each, its own per item", async () => {
    const spec = { kind: "copy" as const, inputLen: 60, outputLen: 16, rangeRatio: 0, copies: 3 };
    const a = await planRun(spec, new PromptBuilder(counter), 7, 0, 5);
    expect(new Set(a.items.map((x) => x.prompt)).size).toBe(5);
    for (const it of a.items) {
      const lines = it.prompt.split("\n");
      expect(lines).toHaveLength(4);
      expect(lines[3]).toBe("");
      expect(new Set(lines.slice(0, 3)).size).toBe(1);
      expect(await counter(lines[0]!)).toBe(20);
      expect(it.promptTokens).toBe(60);
      expect(it.maxTokens).toBe(16);
    }
  });

  it("shared prefix: groups share prefixes; hit primes them, miss shares nothing, mixed half", async () => {
    const base = {
      kind: "shared-prefix" as const,
      groups: 4,
      promptsPerGroup: 3,
      prefixLen: 12,
      suffixLen: 4,
      outputLen: 4,
    };
    const prefixOf = (p: string) => p.split("\n")[0]!;
    const hit = await planRun({ ...base, scenario: "hit" }, new PromptBuilder(counter), 1, 0, 100);
    expect(hit.items).toHaveLength(12);
    expect(new Set(hit.items.map((x) => prefixOf(x.prompt))).size).toBe(4);
    expect(hit.prime).toHaveLength(4);
    expect(new Set(hit.prime.map((x) => prefixOf(x.prompt)))).toEqual(
      new Set(hit.items.map((x) => prefixOf(x.prompt))),
    );
    for (const it of hit.items) expect(await counter(prefixOf(it.prompt))).toBe(12);

    const miss = await planRun({ ...base, scenario: "miss" }, new PromptBuilder(counter), 1, 0, 100);
    expect(miss.prime).toHaveLength(0);
    expect(new Set(miss.items.map((x) => prefixOf(x.prompt))).size).toBe(12);

    const mixed = await planRun({ ...base, scenario: "mixed" }, new PromptBuilder(counter), 1, 0, 100);
    expect(mixed.prime).toHaveLength(2);
    expect(mixed.items.filter((x) => x.klass === "hit")).toHaveLength(6);
    expect(mixed.items.filter((x) => x.klass === "miss")).toHaveLength(6);
  });

  it("priority: a low-priority backlog at time 0 plus high-priority arrivals", async () => {
    const spec = {
      kind: "priority" as const,
      inputLen: 8,
      outputLen: 4,
      rangeRatio: 0,
      backlog: 5,
      highPriority: 0,
      lowPriority: 10,
    };
    const p = await planRun(spec, new PromptBuilder(counter), 3, 0, 3);
    expect(p.items.filter((x) => x.klass === "low" && x.fixedAtMs === 0 && x.priority === 10)).toHaveLength(
      5,
    );
    expect(
      p.items.filter((x) => x.klass === "high" && x.fixedAtMs === undefined && x.priority === 0),
    ).toHaveLength(3);
  });

  it("--structured: an even share of the items asks for the JSON schema, each class named", async () => {
    const spec = { kind: "random" as const, inputLen: 8, outputLen: 4, rangeRatio: 0 };
    const p = await planRun(spec, new PromptBuilder(counter), 5, 0, 20);
    markStructured(p.items, 0.5);
    const structured = p.items.filter((x) => x.klass === "structured");
    expect(structured).toHaveLength(10);
    expect(p.items.filter((x) => x.klass === "unconstrained" && !x.responseFormat)).toHaveLength(10);
    // Spread evenly: every other item.
    expect(p.items.map((x) => x.klass === "structured")).toEqual(p.items.map((_, i) => i % 2 === 1));
    expect(structured[0]!.responseFormat).toEqual({
      type: "json_schema",
      json_schema: { name: "story", schema: STRUCTURED_SCHEMA, strict: true },
    });
    const body = requestBody(
      { baseUrl: "http://x", api: "chat", model: "m" },
      {
        prompt: "p",
        promptTokens: 1,
        maxTokens: 4,
        ignoreEos: true,
        responseFormat: structured[0]!.responseFormat,
      },
    );
    expect(body.response_format).toEqual(structured[0]!.responseFormat);
    const none = await planRun(spec, new PromptBuilder(counter), 5, 0, 4);
    markStructured(none.items, 0);
    expect(none.items.every((x) => x.klass === undefined && x.responseFormat === undefined)).toBe(true);
  });
});
