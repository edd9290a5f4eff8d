import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { benchCommand, parseBenchArgs } from "../../src/cli/bench.js";
import { SpindleError } from "../../src/errors.js";
import { STORIES_260K, testModel } from "../helpers/models.js";
import { startTestServer, type TestServer } from "../helpers/server.js";
import { tempDir } from "../helpers/tmp.js";

/**
 * `spindle bench --protocol http|connect|grpc --scenario cache-miss|cache-hit|mixed-prompt` against
 * a real Spindle server on 127.0.0.1 (the sim backend: the real scheduler and prefix cache, simulated
 * compute) with its RPC service on --grpc-port too: every protocol runs every scenario with small
 * counts, and the prefix hits and tokens saved that the server's /metrics report are checked
 * against what each scenario must produce and against the requests' own usage.
 */

const N = 12;
const PREFIX = 64;

interface RunJson {
  sent: number;
  completed: number;
  failed: number;
  total_output_tokens: number;
  errors: Record<string, number>;
  mean_ttft_ms: number | null;
  mean_itl_ms: number | null;
  mean_e2el_ms: number | null;
  request_throughput: number;
  cached_prompt_tokens: number | null;
  prefix_hit_requests: number | null;
  prefix_tokens_saved: number | null;
  classes: Record<string, { sent: number; completed: number }> | null;
  server: { kind: string; prefixCache?: { hits: number; hitRequests?: number } } | null;
}

interface ResultJson {
  config: { scenario: string | null; num_prompts: number; loads: string[] };
  targets: Array<{
    protocol: string;
    rpc_url: string | null;
    tokenizer: boolean;
    server_metrics: string | null;
  }>;
  runs: RunJson[];
}

let srv: TestServer;
const dir = tempDir("spindle-bench-scenarios-");
const sink = { write: () => true };
const io = { stdout: sink, stderr: sink, handleSigint: false };

beforeAll(async () => {
  srv = await startTestServer({ backend: { kind: "sim", modelPath: testModel(STORIES_260K) }, grpcPort: 0 });
});

afterAll(async () => {
  await srv?.close();
});

const rpcUrl = (protocol: string) => (protocol === "grpc" ? srv.server.grpcUrl! : srv.url);

let seed = 7;

async function scenario(protocol: string, name: string): Promise<{ j: ResultJson; stdout: string }> {
  const resultFile = join(dir, `${protocol}-${name}.json`);
  let stdout = "";
  const args = ["--base-url", srv.url, "--protocol", protocol, "--scenario", name];
  if (protocol !== "http") args.push("--rpc-url", rpcUrl(protocol));
  args.push("--num-prompts", `${N}`, "--concurrency", "4", "--prefix-len", `${PREFIX}`, "--suffix-len", "8");
  args.push("--short-len", "12", "--num-groups", "2", "--output-len", "4", "--warmup", "1");
  // A seed of its own per run: the server's prefix cache remembers the prompts of earlier runs.
  args.push("--seed", `${seed++}`);
  args.push("--result-file", resultFile, "--quiet");
  const code = await benchCommand(args, { ...io, stdout: { write: (s: string) => (stdout += s) } });
  expect(code).toBe(0);
  return { j: JSON.parse(readFileSync(resultFile, "utf8")) as ResultJson, stdout };
}

describe("spindle bench: the named scenarios over HTTP, Connect and gRPC", () => {
  for (const protocol of ["http", "connect", "grpc"]) {
    it(`${protocol}: cache-miss, cache-hit and mixed-prompt report the prefix cache as each scenario makes it`, async () => {
      const runs: Record<string, RunJson> = {};
      for (const name of ["cache-miss", "cache-hit", "mixed-prompt"]) {
        const { j, stdout } = await scenario(protocol, name);
        expect(j.config.scenario).toBe(name);
        expect(j.targets[0]).toMatchObject({
          protocol,
          rpc_url: protocol === "http" ? null : rpcUrl(protocol),
          tokenizer: true,
          server_metrics: "spindle",
        });
        const r = j.runs[0]!;
        expect(r.failed, JSON.stringify(r.errors)).toBe(0);
        expect(r.completed).toBe(N);
        // ignore_eos: exact output lengths, counted from the final message's (or chunk's) usage.
        expect(r.total_output_tokens).toBe(N * 4);
        for (const k of ["mean_ttft_ms", "mean_itl_ms", "mean_e2el_ms"] as const)
          expect(r[k], k).toBeGreaterThan(0);
        expect(r.mean_ttft_ms!).toBeLessThan(r.mean_e2el_ms!);
        // The server's counters and the requests' own usage (cached_tokens) agree.
        expect(r.server!.prefixCache!.hits).toBe(r.prefix_tokens_saved);
        expect(r.server!.prefixCache!.hitRequests).toBe(r.prefix_hit_requests);
        expect(r.cached_prompt_tokens).toBe(r.prefix_tokens_saved);
        // The summary line of the scenario, with the protocol beside the target.
        const line = stdout.split("\n").find((l) => l.startsWith(name));
        expect(line, stdout).toMatch(
          new RegExp(`^${name}\\s+base\\s+${protocol}\\s+concurrency 4\\s+${N}\\s+0\\s`),
        );
        runs[name] = r;
      }
      // cache-miss: nothing is shared, nothing is saved.
      expect(runs["cache-miss"]!.prefix_hit_requests).toBe(0);
      expect(runs["cache-miss"]!.prefix_tokens_saved).toBe(0);
      // cache-hit: the primed prefix serves every request at least its full blocks (BOS + 63 of 64).
      expect(runs["cache-hit"]!.prefix_hit_requests).toBe(N);
      expect(runs["cache-hit"]!.prefix_tokens_saved!).toBeGreaterThanOrEqual(N * PREFIX);
      // mixed-prompt: some long prompts hit their group's prefix; short ones never do.
      const mixed = runs["mixed-prompt"]!;
      const classes = mixed.classes!;
      expect(Object.keys(classes).sort()).toEqual(["long", "short"]);
      expect(mixed.prefix_hit_requests!).toBeGreaterThan(0);
      expect(mixed.prefix_hit_requests!).toBeLessThanOrEqual(classes.long!.sent);
      expect(mixed.prefix_tokens_saved!).toBeGreaterThanOrEqual(mixed.prefix_hit_requests! * 48);
    });
  }

  it("gRPC against the HTTP/1.1 port is a one-line error that names --grpc-port", async () => {
    await expect(
      benchCommand(["--base-url", srv.url, "--protocol", "grpc", "--num-prompts", "1", "--quiet"], io),
    ).rejects.toThrow(/over grpc .*--grpc-port/);
  });
});

describe("spindle bench's scenario and protocol flags", () => {
  it("a scenario runs 1000 requests at concurrency 100 unless told otherwise", () => {
    const p = parseBenchArgs(["--scenario", "cache-hit"]);
    if (p.help) throw new Error("help");
    expect(p.config.scenario).toBe("cache-hit");
    expect(p.config.numPrompts).toBe(1000);
    expect(p.config.shapes).toEqual([{ kind: "closed", concurrency: 100 }]);
    expect(p.config.workload).toMatchObject({ kind: "shared-prefix", groups: 1, promptsPerGroup: 1000 });
    const q = parseBenchArgs(["--scenario", "mixed-prompt", "-n", "20", "-c", "5", "--protocol", "connect"]);
    if (q.help) throw new Error("help");
    expect(q.config.numPrompts).toBe(20);
    expect(q.config.shapes).toEqual([{ kind: "closed", concurrency: 5 }]);
    expect(q.config.workload.kind).toBe("mixed-prompt");
    expect(q.config.targets[0]!.protocol).toBe("connect");
  });

  it("refuses unknown names and contradictions", () => {
    expect(() => parseBenchArgs(["--scenario", "warm"])).toThrow(SpindleError);
    expect(() => parseBenchArgs(["--protocol", "websocket"])).toThrow(
      /--protocol must be http, connect, grpc/,
    );
    expect(() => parseBenchArgs(["--scenario", "cache-hit", "--workload", "random"])).toThrow(/--scenario/);
    expect(() => parseBenchArgs(["--rpc-url", "http://127.0.0.1:8001"])).toThrow(
      /--protocol connect or grpc/,
    );
  });
});
