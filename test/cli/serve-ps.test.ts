import type { ChildProcess } from "node:child_process";
import { type AddressInfo, createServer } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readGGUF } from "../../src/gguf/reader.js";
import { configFromGGUF } from "../../src/model/config.js";
import { KVCacheStorage } from "../../src/model/kv-cache.js";
import { runCli, spawnCli } from "../helpers/cli.js";
import { STORIES_260K, testModel } from "../helpers/models.js";

/**
 * `spindle serve --ctx-size -ctk f16 --jump-forward-max-batch 0 --threads 2` as a real process (from source), its logs piped (so JSON lines), and
 * `spindle ps` asking it over HTTP what it has loaded.
 */

let proc: ChildProcess;
let url: string;
let stdout = "";

beforeAll(async () => {
  proc = spawnCli([
    "serve",
    "-m",
    testModel(STORIES_260K),
    "--port",
    "0",
    "-c",
    "300",
    "-ctk",
    "f16",
    "--jump-forward-max-batch",
    "0",
    "--threads",
    "2",
  ]);
  proc.stdout!.on("data", (d) => (stdout += d));
  let err = "";
  url = await new Promise<string>((ok, fail) => {
    const timer = setTimeout(() => fail(new Error(`no URL on stderr after 30 s: ${err}`)), 30_000);
    proc.stderr!.on("data", (d) => {
      err += d;
      const m = /spindle: serving .* at (http:\/\/\S+)/.exec(err);
      if (m) {
        clearTimeout(timer);
        ok(m[1]!);
      }
    });
    proc.once("exit", (code) => fail(new Error(`spindle serve exited (${code}): ${err}`)));
  });
});

afterAll(async () => {
  if (proc.exitCode === null) {
    const exited = new Promise((r) => proc.once("exit", r));
    proc.kill("SIGTERM");
    await exited;
  }
});

describe("spindle serve --ctx-size, and spindle ps", () => {
  it("logs JSON lines when piped", () => {
    const lines = stdout.trim().split("\n");
    expect(lines.length).toBeGreaterThan(0);
    for (const l of lines) expect(JSON.parse(l)).toHaveProperty("level");
  });

  it("-c caps the context: the API reports it and a longer request is a 400", async () => {
    const models = (await (await fetch(`${url}/v1/models`)).json()) as { data: { max_model_len: number }[] };
    expect(models.data[0]!.max_model_len).toBe(300);
    const res = await fetch(`${url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ prompt: "Once upon a time", max_tokens: 400 }),
    });
    expect(res.status).toBe(400);
  });

  it("ps shows the model, its memory with the KV cache, the context and KV use, from the server's API", async () => {
    const r = await runCli(["ps", "--url", url]);
    expect(r.code).toBe(0);
    const [head, row, ...rest] = r.stdout.trimEnd().split("\n");
    expect(rest).toEqual([]);
    expect(head).toMatch(/^NAME\s+SIZE\s+BACKEND\s+CONTEXT\s+KV CACHE\s+KV USED\s+RUNNING\s+WAITING$/);
    // stories260K's KV is small: the default budget holds what 64 sequences (--max-num-seqs) of 300
    // tokens (19 blocks of 16) need, and no more: the pool is sized by the context cap.
    const m =
      /^stories260K:latest\s+\S+ MB\s+local\s+300\s+\S+ (?:KB|MB) f16 \((\d+) blocks, (\d+) tokens\)\s+0\.0%\s+0\s+0$/.exec(
        row!,
      );
    expect(m, row).not.toBeNull();
    expect(Number(m![1])).toBe(19 * 64);
    expect(Number(m![2])).toBe(19 * 16 * 64);
    const json = JSON.parse((await runCli(["ps", "--url", url, "--json"])).stdout) as {
      models: { kv_cache: { bytes: number; tokens: number; usage: number }; context_length: number }[];
    };
    // f16: 2 bytes per K or V element.
    const config = configFromGGUF(readGGUF(testModel(STORIES_260K)));
    expect(KVCacheStorage.bytesPerToken(config, "f16")).toBe(
      2 * config.nLayers * config.nKVHeads * config.headDim * 2,
    );
    expect(json.models[0]).toMatchObject({
      context_length: 300,
      kv_cache: {
        type: "f16",
        blocks: 19 * 64,
        tokens: Number(m![2]),
        bytes: 19 * 16 * 64 * KVCacheStorage.bytesPerToken(config, "f16"),
        usage: 0,
      },
    });
  });

  it("the ready log line names the KV cache's type, blocks and bytes; the decode split is logged once measured, after ready", async () => {
    const logLines = () =>
      stdout
        .slice(0, stdout.lastIndexOf("\n") + 1) // whole lines only
        .trim()
        .split("\n")
        .filter((l) => l.length > 0)
        .map((l) => JSON.parse(l) as Record<string, unknown>);
    // Lines arrive as the server writes them: wait for each (the measurement comes after ready).
    const logged = async (msg: string) => {
      const deadline = Date.now() + 20_000;
      let line: Record<string, unknown> | undefined;
      while (!(line = logLines().find((l) => l.msg === msg)) && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 100));
      return line;
    };
    expect(await logged("ready")).toMatchObject({ kvCacheType: "f16", numBlocks: 19 * 64 });
    // Two kernel threads: whether decode splits over them, chosen by the faster of two timed ways
    // while the engine is idle after ready.
    const measured = await logged("measured");
    const { decodeSplits, decodeStepMs } = measured as {
      decodeSplits: boolean;
      decodeStepMs: Record<string, number>;
    };
    expect(decodeStepMs.split).toBeGreaterThan(0);
    expect(decodeStepMs.oneThread).toBeGreaterThan(0);
    if (decodeStepMs.split !== decodeStepMs.oneThread)
      expect(decodeSplits).toBe(decodeStepMs.split < decodeStepMs.oneThread);
  }, 30_000);

  it("--jump-forward-max-batch 0: a constrained request is sampled token by token, none jumped", async () => {
    const res = await fetch(`${url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        prompt: "Once upon a time",
        max_tokens: 40,
        response_format: {
          type: "json_schema",
          json_schema: { name: "t", schema: { enum: ["a long forced answer"] } },
        },
      }),
    });
    const body = (await res.json()) as { choices: { text: string; finish_reason: string }[] };
    // The only value the schema allows, every token of it forced, and still none jumped.
    expect(body.choices[0]).toMatchObject({ text: '"a long forced answer"', finish_reason: "stop" });
    const metrics = await (await fetch(`${url}/metrics`)).text();
    expect(metrics).toMatch(/jump_forward_tokens_total(\{[^}]*\})? 0\n/);
    const bad = await runCli(["serve", "-m", testModel(STORIES_260K), "--jump-forward-max-batch", "1.5"]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/--jump-forward-max-batch must be an integer ≥ 0, got "1.5"/);
  });

  it("a KV cache type other than f16 or f32, or K and V types that differ, is refused before loading", async () => {
    const model = testModel(STORIES_260K);
    const bad = await runCli(["serve", "-m", model, "--port", "0", "--kv-cache-type", "q8_0"]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/KV cache type must be one of f16, f32, got "q8_0"/);
    const mixed = await runCli(["serve", "-m", model, "--port", "0", "-ctk", "f16", "-ctv", "f32"]);
    expect(mixed.code).toBe(1);
    expect(mixed.stderr).toMatch(/--cache-type-k f16, --cache-type-v f32: Spindle keeps K and V in one type/);
  });

  it("--decode-split takes auto, on or off, for the local backend, refused otherwise before loading", async () => {
    const model = testModel(STORIES_260K);
    const bad = await runCli(["serve", "-m", model, "--port", "0", "--decode-split", "maybe"]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/--decode-split must be auto, on or off, got "maybe"/);
    const sim = await runCli([
      "serve",
      "-m",
      model,
      "--port",
      "0",
      "--backend",
      "sim",
      "--decode-split",
      "on",
    ]);
    expect(sim.code).toBe(1);
    expect(sim.stderr).toMatch(/--decode-split applies to --backend local, not sim/);
  });

  it("ps without a server is one line naming where it looked", async () => {
    const r = await runCli(["ps", "--port", "9"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^spindle: no Spindle server at http:\/\/127\.0\.0\.1:9 .*\n$/);
  });
});

describe("spindle serve on a port already taken", () => {
  it("exits 1 with one clear line, and stops the model it had started loading", async () => {
    const taken = createServer();
    await new Promise<void>((r) => taken.listen(0, "127.0.0.1", r));
    const port = (taken.address() as AddressInfo).port;
    try {
      const child = spawnCli(["serve", "-m", testModel(STORIES_260K), "--port", String(port)]);
      let err = "";
      child.stderr!.on("data", (d) => (err += d));
      const code = await new Promise<number | null>((r) => child.once("exit", r));
      expect(code).toBe(1);
      expect(err.trim()).toBe(
        `spindle: cannot listen on 127.0.0.1:${port}: the address is already in use (is another server running there? choose another port)`,
      );
    } finally {
      taken.close();
    }
  }, 30_000);
});
