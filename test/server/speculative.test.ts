import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { diffServer, ServerMetricsClient } from "../../src/bench/server-metrics.js";
import { runCli } from "../helpers/cli.js";
import { STORIES_260K, testModel } from "../helpers/models.js";
import { engineStats, startTestServer, type TestServer } from "../helpers/server.js";

/**
 * Speculative decoding behind a real server: the same completions as a server without it, vLLM's
 * spec_decode counters on /metrics, and its flags checked at the command line.
 */

const COPY = "Tom has a red ball. Tom has a red ball. Tom has a red ball. Tom has a red ball. Tom has";

let plain: TestServer;
let spec: TestServer;

beforeAll(async () => {
  const modelPath = testModel(STORIES_260K);
  plain = await startTestServer();
  spec = await startTestServer({
    backend: { kind: "local", modelPath, options: { speculative: { method: "ngram", numTokens: 4 } } },
  });
});
afterAll(async () => {
  await plain?.close();
  await spec?.close();
});

async function complete(srv: TestServer, body: Record<string, unknown>) {
  const res = await fetch(`${srv.url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  expect(res.status).toBe(200);
  return (await res.json()) as {
    choices: { text: string; finish_reason: string; logprobs?: { tokens: string[] } }[];
    usage: { completion_tokens: number };
  };
}

const metric = (text: string, name: string) => {
  const line = text
    .split("\n")
    .find((l) => l.startsWith(`spindle_${name}{`) || l.startsWith(`spindle_${name} `));
  return line === undefined ? undefined : Number(line.trim().split(/\s+/).pop());
};

describe("speculative decoding through the server", () => {
  it("answers exactly as without it (greedy, n > 1 seeded, stop strings, logprobs) and counts drafts", async () => {
    const bodies = [
      { prompt: COPY, max_tokens: 60, temperature: 0 },
      { prompt: COPY, max_tokens: 40, temperature: 0, stop: ["ball."], logprobs: 2 },
      { prompt: COPY, max_tokens: 30, temperature: 0.8, seed: 11, n: 3 },
      { prompt: "Once upon a time", max_tokens: 50, temperature: 0 },
    ];
    const client = (await ServerMetricsClient.detect(spec.url))!;
    const before = await client.scrape();
    for (const body of bodies) {
      const [a, b] = await Promise.all([complete(plain, body), complete(spec, body)]);
      expect(b.choices).toEqual(a.choices);
      expect(b.usage.completion_tokens).toBe(a.usage.completion_tokens);
    }
    const text = await (await fetch(`${spec.url}/metrics`)).text();
    const drafts = metric(text, "spec_decode_num_drafts_total")!;
    const draftTokens = metric(text, "spec_decode_num_draft_tokens_total")!;
    const accepted = metric(text, "spec_decode_num_accepted_tokens_total")!;
    expect(drafts).toBeGreaterThan(0);
    expect(accepted).toBeGreaterThan(0);
    expect(accepted).toBeLessThanOrEqual(draftTokens);
    expect(text).toMatch(/spindle_spec_decode_num_accepted_tokens_per_pos_total\{position="0"/);
    // As `spindle bench` reads them.
    const run = diffServer("spindle", before, await client.scrape(), []);
    expect(run.specDecode).toEqual({ drafts, draftTokens, acceptedTokens: accepted });
    const json = (await (await fetch(`${spec.url}/metrics?format=json`)).json()) as {
      spec_decode: { num_drafts: number; num_accepted_tokens: number };
    };
    expect(json.spec_decode.num_drafts).toBe(drafts);
    expect(json.spec_decode.num_accepted_tokens).toBe(accepted);
    // The plain server drafts nothing.
    expect(metric(await (await fetch(`${plain.url}/metrics`)).text(), "spec_decode_num_drafts_total")).toBe(
      0,
    );
    const stats = await engineStats(spec);
    expect(stats.unfinished).toBe(0);
    expect(stats.freeBlocks).toBe(stats.numBlocks);
  });

  it("refuses bad speculative flags at the command line", async () => {
    const model = testModel(STORIES_260K);
    const bad = [
      ["--speculative", "eagle"],
      ["--speculative", "ngram", "--spec-tokens", "0"],
      ["--spec-tokens", "4"],
      ["--speculative", "ngram", "--spec-token-cost", "2"],
      ["--speculative", "ngram", "--backend", "llamacpp"],
    ];
    for (const args of bad) {
      const r = await runCli(["serve", "-m", model, "--port", "0", ...args]);
      expect(r.code, args.join(" ")).not.toBe(0);
      expect(r.stderr, args.join(" ")).toMatch(/speculative|spec-tokens|spec-token-cost/);
    }
  });
});
