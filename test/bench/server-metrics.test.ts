import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  diffServer,
  histogramDelta,
  parsePrometheus,
  ServerMetricsClient,
  sumOf,
} from "../../src/bench/server-metrics.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

/**
 * `spindle bench`'s reading of a server's /metrics, on a real Spindle server's output: what the
 * parser and the diff report must agree with what was sent and what the server answered.
 */
let srv: TestServer;

beforeAll(async () => {
  srv = await startTestServer({ modelName: "stories260K" });
});
afterAll(async () => {
  await srv?.close();
});

interface Sent {
  promptTokens: number;
  completionTokens: number;
  finishReason: string;
}

/** One completion, waited for; what its response says it cost. */
async function complete(prompt: string, maxTokens: number): Promise<Sent> {
  const r = await fetch(`${srv.url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "stories260K", prompt, max_tokens: maxTokens, temperature: 0 }),
  });
  expect(r.status).toBe(200);
  const j = (await r.json()) as {
    choices: { finish_reason: string }[];
    usage: { prompt_tokens: number; completion_tokens: number };
  };
  return {
    promptTokens: j.usage.prompt_tokens,
    completionTokens: j.usage.completion_tokens,
    finishReason: j.choices[0]!.finish_reason,
  };
}

describe("server metrics, read from a real Spindle server", () => {
  it("the scrape before and after a few requests differs by what those requests were", async () => {
    const client = await ServerMetricsClient.detect(srv.url);
    expect(client?.kind).toBe("spindle");
    const before = await client!.scrape();

    // One at a time, so every engine step holds one sequence.
    const sent: Sent[] = [];
    for (const [prompt, maxTokens] of [
      ["Once upon a time", 8],
      ["Lily and Ben went to the park.", 12],
      ["The cat", 3],
      ["One day, a little girl", 20],
    ] as const)
      sent.push(await complete(prompt, maxTokens));
    const after = await client!.scrape();
    const polled = await client!.poll(0);

    const a = after.samples;
    const b = before.samples;
    const total = (f: (s: Sent) => number) => sent.reduce((n, s) => n + f(s), 0);
    const byReason: Record<string, number> = {};
    for (const s of sent) byReason[s.finishReason] = (byReason[s.finishReason] ?? 0) + 1;

    // The parser: names without the prefix, labels (the server adds model_name to every sample).
    const success = a.filter((s) => s.name === "request_success_total");
    expect(success.length).toBeGreaterThan(0);
    for (const s of success) expect(s.labels).toMatchObject({ model_name: "stories260K" });
    expect(Object.keys(success[0]!.labels).sort()).toEqual(["finished_reason", "model_name"]);

    // Counters: the tokens the responses reported.
    const delta = (name: string) => (sumOf(a, name) ?? 0) - (sumOf(b, name) ?? 0);
    expect(delta("prompt_tokens_total")).toBe(total((s) => s.promptTokens));
    expect(delta("generation_tokens_total")).toBe(total((s) => s.completionTokens));

    // Histograms: one observation per request, summing to the same tokens.
    const promptLen = histogramDelta(b, a, "request_prompt_tokens")!;
    expect(promptLen.count).toBe(sent.length);
    expect(promptLen.sum).toBe(total((s) => s.promptTokens));
    expect(promptLen.buckets.reduce((n, x) => n + x.count, 0)).toBe(sent.length);
    const genLen = histogramDelta(b, a, "request_generation_tokens")!;
    expect(genLen.count).toBe(sent.length);
    expect(genLen.sum).toBe(total((s) => s.completionTokens));

    // The run as `spindle bench` reports it.
    const run = diffServer("spindle", before, after, [polled]);
    expect(run.finished).toEqual(byReason);
    expect(run.rejected).toEqual({});
    expect(run.preemptions).toBe(0);
    expect(run.specDecode).toBeUndefined(); // this server does not speculate
    // Every step held one sequence: all of them in the first bucket, labelled "1", then "2", "3-4", …
    const steps = run.batchSize!.steps;
    expect(steps).toBeGreaterThanOrEqual(sent.length);
    expect(run.batchSize!.mean).toBe(1);
    expect(run.batchSize!.buckets[0]).toEqual({ le: 1, label: "1", count: steps });
    expect(run.batchSize!.buckets.slice(0, 3).map((x) => x.label)).toEqual(["1", "2", "3-4"]);
    expect(run.batchSize!.buckets.slice(1).every((x) => x.count === 0)).toBe(true);
    expect(run.batchSize!.buckets.at(-1)!.le).toBe(Infinity);
    expect(run.iterationTokens!.steps).toBe(steps);
    for (const k of ["queue", "ttft", "e2e"] as const) expect(run.serverMeanMs[k]).toBeGreaterThan(0);
    expect(run.serverMeanMs.e2e!).toBeGreaterThanOrEqual(run.serverMeanMs.ttft!);
    // Nothing in flight once the last response arrived; the JSON poll and the text agree.
    expect(polled).toMatchObject({ running: 0, waiting: 0 });
    expect(run.peakRunning).toBe(0);
    expect(run.kvUsage.end).toBe(polled.kvUsage);
  });

  it("parses the Prometheus text as served: every sample line, escaped label values", async () => {
    const text = await (await fetch(`${srv.url}/metrics`)).text();
    const lines = text.split("\n").filter((l) => l !== "" && !l.startsWith("#"));
    const all = parsePrometheus(text);
    expect(all).toHaveLength(lines.length);
    // Each sample's value is the number its line ends with (NaN included: Node's event-loop gauges
    // read NaN before their first sample, and Prometheus text allows it).
    const values = lines.map((l) => Number(l.slice(l.lastIndexOf(" ") + 1)));
    expect(all.every((s, i) => Object.is(s.value, values[i]))).toBe(true);
    expect(
      all.filter((s) => Number.isNaN(s.value)).every((s) => s.name.includes("nodejs_eventloop_lag")),
    ).toBe(true);
    expect(parsePrometheus(text, "spindle_")).toHaveLength(
      all.filter((s) => s.name.startsWith("spindle_")).length,
    );
    expect(parsePrometheus('x_total{a="q\\"uote",b="back\\\\slash"} 3\n', "x_")).toEqual([
      { name: "total", labels: { a: 'q"uote', b: "back\\slash" }, value: 3 },
    ]);
  });
});
