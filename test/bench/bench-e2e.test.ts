import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { benchCommand } from "../../src/cli/bench.js";
import { SpindleError } from "../../src/errors.js";
import { startTestServer, type TestServer } from "../helpers/server.js";
import { tempDir } from "../helpers/tmp.js";

/**
 * `spindle bench` end to end against a real Spindle server (stories260K on 127.0.0.1): a small
 * sweep, then the JSON result checked for consistency and the report files for presence.
 */

interface RunJson {
  target: string;
  max_concurrency: number;
  sent: number;
  completed: number;
  failed: number;
  duration: number;
  total_input_tokens: number;
  total_output_tokens: number;
  request_throughput: number;
  output_throughput: number;
  total_token_throughput: number;
  errors: Record<string, number>;
  server: {
    kind: string;
    batchSize?: { steps: number; mean: number | null; buckets: Array<{ label: string; count: number }> };
    kvUsage: { peak: number | null };
  } | null;
  requests?: Array<{ ok: boolean; output_tokens: number; ttft_ms?: number; e2el_ms?: number }>;
  [k: string]: unknown;
}

let srv: TestServer;
const dir = tempDir("spindle-bench-e2e-");

beforeAll(async () => {
  srv = await startTestServer({ apiKeys: ["key-a", "key-b"] });
});

afterAll(async () => {
  await srv?.close();
});

const sink = { write: () => true };

describe("spindle bench against a real Spindle server", () => {
  it("runs a concurrency sweep and writes a consistent JSON result and a report", async () => {
    const resultFile = join(dir, "result.json");
    let stdout = "";
    const code = await benchCommand(
      [
        "--base-url",
        srv.url,
        "--api-key",
        "key-a",
        "--concurrency",
        "1,4",
        "--num-prompts",
        "8",
        "--input-len",
        "16",
        "--output-len",
        "8",
        "--warmup",
        "1",
        "--max-seconds",
        "60",
        "--metrics-interval-ms",
        "100",
        "--result-file",
        resultFile,
        "--save-detailed",
        "--report",
        join(dir, "report"),
        "--quiet",
      ],
      { stdout: { write: (s: string) => (stdout += s) }, stderr: sink, handleSigint: false },
    );
    expect(code).toBe(0);
    expect(stdout).toContain("============ Serving Benchmark Result ============");
    expect(stdout).toContain("Mean TTFT (ms):");

    const j = JSON.parse(readFileSync(resultFile, "utf8")) as {
      runs: RunJson[];
      targets: Array<{ model: string }>;
    };
    expect(j.targets[0]!.model).toBeTruthy();
    expect(j.runs.map((r) => r.max_concurrency)).toEqual([1, 4]);
    for (const r of j.runs) {
      expect(r.sent).toBe(8);
      expect(r.completed + r.failed).toBe(r.sent);
      expect(r.failed, JSON.stringify(r.errors)).toBe(0);
      // Exact output lengths (ignore_eos): 8 tokens each, counted from the usage chunk.
      expect(r.total_output_tokens).toBe(8 * 8);
      for (const q of r.requests!) expect(q.output_tokens).toBe(8);
      expect(r.request_throughput).toBeCloseTo(r.completed / r.duration, 6);
      expect(r.output_throughput).toBeCloseTo(r.total_output_tokens / r.duration, 6);
      expect(r.total_token_throughput).toBeCloseTo(
        (r.total_input_tokens + r.total_output_tokens) / r.duration,
        6,
      );
      for (const m of ["ttft", "tpot", "itl", "e2el"]) {
        const v = (s: string) => r[`${s}_${m}_ms`] as number;
        expect(v("min")).toBeGreaterThanOrEqual(0);
        expect(v("median")).toBeLessThanOrEqual(v("p90") + 1e-9);
        expect(v("p90")).toBeLessThanOrEqual(v("p99") + 1e-9);
        expect(v("p99")).toBeLessThanOrEqual(v("max") + 1e-9);
      }
      expect(r.mean_ttft_ms as number).toBeLessThanOrEqual(r.mean_e2el_ms as number);
      // Spindle's engine metrics were scraped: the batch-size distribution covers the run's steps.
      expect(r.server?.kind).toBe("spindle");
      const bs = r.server!.batchSize!;
      expect(bs.steps).toBeGreaterThan(0);
      expect(bs.buckets.reduce((a, b) => a + b.count, 0)).toBe(bs.steps);
      expect(r.server!.kvUsage.peak).not.toBeNull();
    }
    // Concurrency 1 never batches more than one sequence.
    expect(j.runs[0]!.server!.batchSize!.mean).toBeCloseTo(1, 6);
    // Charts and the report exist.
    for (const f of ["report.md", "ttft-vs-load.svg", "throughput-vs-load.svg", "ttft-cdf.svg"])
      expect(existsSync(join(dir, "report", f)), f).toBe(true);
  });

  it("shared prefixes hit the prefix cache; two API keys are two tenants", async () => {
    const resultFile = join(dir, "prefix.json");
    const code = await benchCommand(
      [
        "--base-url",
        srv.url,
        "--api-key",
        "key-a",
        "--api-key",
        "key-b",
        "--workload",
        "shared-prefix",
        "--cache-scenario",
        "hit",
        "--num-groups",
        "2",
        "--prompts-per-group",
        "4",
        "--prefix-len",
        "64",
        "--suffix-len",
        "8",
        "--output-len",
        "4",
        "--concurrency",
        "2",
        "--warmup",
        "0",
        "--result-file",
        resultFile,
        "--quiet",
      ],
      { stdout: sink, stderr: sink, handleSigint: false },
    );
    expect(code).toBe(0);
    const j = JSON.parse(readFileSync(resultFile, "utf8")) as {
      targets: Array<{ tokenizer: boolean }>;
      runs: Array<
        RunJson & {
          cached_prompt_tokens: number | null;
          tenants: Record<string, { sent: number; completed: number }> | null;
          jain_fairness: number | null;
          server: { prefixCache?: { hitRate: number | null } } | null;
        }
      >;
    };
    const r = j.runs[0]!;
    expect(r.completed).toBe(8);
    // Every prompt's 64-token prefix was primed: most prompt tokens come from the cache.
    expect(r.server!.prefixCache!.hitRate!).toBeGreaterThan(0.5);
    expect(r.cached_prompt_tokens!).toBeGreaterThan(r.total_input_tokens / 2);
    expect(Object.keys(r.tenants!)).toEqual(["tenant0", "tenant1"]);
    for (const t of Object.values(r.tenants!)) expect(t).toMatchObject({ sent: 4, completed: 4 });
    expect(r.jain_fairness!).toBeGreaterThan(0.9);
  });

  it("an unreachable target or a refused key is a one-line error", async () => {
    const io = { stdout: sink, stderr: sink, handleSigint: false };
    await expect(benchCommand(["--base-url", "http://127.0.0.1:9", "--quiet"], io)).rejects.toThrow(
      SpindleError,
    );
    await expect(
      benchCommand(["--base-url", srv.url, "--api-key", "wrong", "--model", "x", "--quiet"], io),
    ).rejects.toThrow(/every warm-up request failed \(HTTP 401/);
  });
});
