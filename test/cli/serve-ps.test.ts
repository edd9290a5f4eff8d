import { type ChildProcess, spawn } from "node:child_process";
import { resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli } from "../helpers/cli.js";
import { STORIES_260K, testModel } from "../helpers/models.js";

/**
 * `spindle serve --ctx-size` as a real process (from source), its logs piped (so JSON lines), and
 * `spindle ps` asking it over HTTP what it has loaded.
 */

const ROOT = resolve(import.meta.dirname, "../..");
let proc: ChildProcess;
let url: string;
let stdout = "";

beforeAll(async () => {
  proc = spawn(
    process.execPath,
    [
      "--import",
      "tsx",
      "src/cli/entry.ts",
      "serve",
      "-m",
      testModel(STORIES_260K),
      "--port",
      "0",
      "-c",
      "300",
    ],
    { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] },
  );
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
      /^stories260K:latest\s+\S+ MB\s+local\s+300\s+\S+ (?:KB|MB) \((\d+) tokens\)\s+0\.0%\s+0\s+0$/.exec(
        row!,
      );
    expect(m, row).not.toBeNull();
    expect(Number(m![1])).toBe(19 * 16 * 64);
    const json = JSON.parse((await runCli(["ps", "--url", url, "--json"])).stdout) as {
      models: { kv_cache: { bytes: number; tokens: number; usage: number }; context_length: number }[];
    };
    expect(json.models[0]).toMatchObject({
      context_length: 300,
      kv_cache: { tokens: Number(m![1]), usage: 0 },
    });
  });

  it("ps without a server is one line naming where it looked", async () => {
    const r = await runCli(["ps", "--port", "9"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^spindle: no Spindle server at http:\/\/127\.0\.0\.1:9 .*\n$/);
  });
});
