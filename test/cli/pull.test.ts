import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { pullCommand } from "../../src/cli/pull.js";
import { SpindleError } from "../../src/errors.js";
import { DEFAULT_MODEL_SPEC, ensureModel } from "../../src/model/default-model.js";
import {
  isPullSpec,
  PullNetworkError,
  parseSpec,
  pullDestination,
  pullModel,
  pullUrl,
} from "../../src/model/pull.js";
import { findModel, resolveModel } from "../../src/model/resolve.js";
import { ProgressBar } from "../../src/progress.js";

/** 3 MiB of deterministic pseudo-random bytes (xorshift32). */
function makeData(n: number): Buffer {
  const words = new Uint32Array(Math.ceil(n / 4));
  let x = 0x9e3779b9;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x >>> 0;
  }
  return Buffer.from(words.buffer, 0, n);
}
const DATA = makeData(3 * 1024 * 1024 + 12345);

interface Hit {
  url: string;
  range: string | undefined;
  auth: string | undefined;
}

/**
 * Serves DATA at /<owner>/<repo>/resolve/<rev>/<file>. The repo picks the behaviour:
 * `norange` ignores Range, `short` promises the full length and hangs up halfway,
 * `gated` answers 401; a file name containing `missing` is a 404.
 */
function startServer(): Promise<{ server: Server; endpoint: string; log: Hit[] }> {
  const log: Hit[] = [];
  const server = createServer((req, res) => {
    const url = req.url ?? "";
    log.push({ url, range: req.headers.range, auth: req.headers.authorization });
    const m = /^\/([^/]+)\/([^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url);
    if (!m || m[4]!.includes("missing")) {
      res.writeHead(404, { "content-type": "text/plain" }).end("Entry not found");
      return;
    }
    const repo = m[2]!;
    if (repo === "gated") {
      res.writeHead(401, { "content-type": "text/plain" }).end("Access to model is restricted");
      return;
    }
    if (repo === "short") {
      res.writeHead(200, { "content-length": String(DATA.length) });
      res.write(DATA.subarray(0, DATA.length >> 1), () => res.destroy());
      return;
    }
    const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? "");
    if (range && repo !== "norange") {
      const start = Number(range[1]);
      if (start >= DATA.length) {
        res.writeHead(416, { "content-range": `bytes */${DATA.length}` }).end();
        return;
      }
      res.writeHead(206, {
        "content-range": `bytes ${start}-${DATA.length - 1}/${DATA.length}`,
        "content-length": String(DATA.length - start),
      });
      res.end(DATA.subarray(start));
      return;
    }
    res.writeHead(200, { "content-length": String(DATA.length) });
    res.end(DATA);
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as AddressInfo;
      resolve({ server, endpoint: `http://127.0.0.1:${port}`, log });
    });
  });
}

/** An endpoint on a port nothing listens on. */
async function closedEndpoint(): Promise<string> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", () => r()));
  const { port } = s.address() as AddressInfo;
  await new Promise<void>((r) => s.close(() => r()));
  return `http://127.0.0.1:${port}`;
}

const noFetch = (() => {
  throw new Error("no network expected");
}) as unknown as typeof fetch;

function sink() {
  const out = { text: "", write: (s: string) => (out.text += s) };
  return out;
}

const ENV_KEYS = ["SPINDLE_CACHE", "SPINDLE_MODELS", "HF_TOKEN", "SPINDLE_HF_ENDPOINT", "HF_ENDPOINT"];

let server: Server;
let endpoint: string;
let log: Hit[];
let tmp: string;
let cache: string;
let savedEnv: Record<string, string | undefined>;

beforeAll(async () => {
  ({ server, endpoint, log } = await startServer());
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
});

beforeEach(() => {
  tmp = mkdtempSync(join(tmpdir(), "spindle-pull-"));
  cache = join(tmp, "cache");
  mkdirSync(join(tmp, "models"));
  savedEnv = Object.fromEntries(ENV_KEYS.map((k) => [k, process.env[k]]));
  for (const k of ENV_KEYS) delete process.env[k];
  process.env.SPINDLE_CACHE = cache;
  process.env.SPINDLE_MODELS = join(tmp, "models");
  // Anything that forgets its endpoint fails here instead of reaching the internet.
  process.env.SPINDLE_HF_ENDPOINT = "http://127.0.0.1:9";
  log.length = 0;
});

afterEach(() => {
  for (const k of ENV_KEYS) {
    if (savedEnv[k] === undefined) delete process.env[k];
    else process.env[k] = savedEnv[k];
  }
  rmSync(tmp, { recursive: true, force: true });
});

function prePart(spec: string, bytes: Buffer): string {
  const part = `${pullDestination(spec, cache)}.part`;
  mkdirSync(dirname(part), { recursive: true });
  writeFileSync(part, bytes);
  return part;
}

describe("spec parsing", () => {
  it("splits owner, repo, revision and a file in a subfolder", () => {
    expect(parseSpec("o/r/a.gguf")).toEqual({ owner: "o", repo: "r", revision: "main", file: "a.gguf" });
    expect(parseSpec("o/r@v1.2/sub/dir/a.gguf")).toEqual({
      owner: "o",
      repo: "r",
      revision: "v1.2",
      file: "sub/dir/a.gguf",
    });
    expect(pullUrl("o/r@v1/sub/a b.gguf", "http://h/")).toBe("http://h/o/r/resolve/v1/sub/a%20b.gguf");
    expect(pullDestination("o/r@v1/sub/a.gguf", "/c")).toBe("/c/o/r/sub/a.gguf");
    for (const bad of ["o/r", "o//a.gguf", "o/r/../x.gguf", "../r/a.gguf", "o/r@/a.gguf"]) {
      expect(() => parseSpec(bad)).toThrow(SpindleError);
    }
    expect(isPullSpec("o/r/a.gguf")).toBe(true);
    expect(isPullSpec("/abs/o/r/a.gguf")).toBe(false);
    expect(isPullSpec("models/a.gguf")).toBe(false);
  });
});

describe("pullModel", () => {
  it("downloads the whole file with progress and leaves no .part", async () => {
    const calls: { received: number; total: number | undefined }[] = [];
    const path = await pullModel("o/r/model.gguf", {
      endpoint,
      cacheDir: cache,
      onProgress: (p) => calls.push(p),
    });
    expect(path).toBe(join(cache, "o", "r", "model.gguf"));
    expect(readFileSync(path).equals(DATA)).toBe(true);
    expect(statSync(path).size).toBe(DATA.length);
    expect(existsSync(`${path}.part`)).toBe(false);
    expect(calls.length).toBeGreaterThan(1);
    expect(calls.at(-1)).toEqual({ received: DATA.length, total: DATA.length });
    expect(log.map((h) => h.url)).toEqual(["/o/r/resolve/main/model.gguf"]);
    expect(log[0]!.range).toBeUndefined();
    expect(log[0]!.auth).toBeUndefined();
  });

  it("resumes a .part with a Range request", async () => {
    const n = 1_000_001;
    prePart("o/r/model.gguf", DATA.subarray(0, n));
    const calls: number[] = [];
    const path = await pullModel("o/r/model.gguf", {
      endpoint,
      cacheDir: cache,
      onProgress: (p) => calls.push(p.received),
    });
    expect(log).toHaveLength(1);
    expect(log[0]!.range).toBe(`bytes=${n}-`);
    expect(calls[0]).toBe(n);
    expect(readFileSync(path).equals(DATA)).toBe(true);
    expect(existsSync(`${path}.part`)).toBe(false);
  });

  it("starts over when the server ignores Range", async () => {
    prePart("o/norange/model.gguf", Buffer.alloc(777, 0xab));
    const path = await pullModel("o/norange/model.gguf", { endpoint, cacheDir: cache });
    expect(log[0]!.range).toBe("bytes=777-");
    expect(readFileSync(path).equals(DATA)).toBe(true);
  });

  it("takes a file in a subfolder and a revision", async () => {
    const path = await pullModel("o/r@v2/sub/dir/nested.gguf", { endpoint, cacheDir: cache });
    expect(log[0]!.url).toBe("/o/r/resolve/v2/sub/dir/nested.gguf");
    expect(path).toBe(join(cache, "o", "r", "sub", "dir", "nested.gguf"));
    expect(readFileSync(path).equals(DATA)).toBe(true);
  });

  it("sends HF_TOKEN as a bearer token", async () => {
    process.env.HF_TOKEN = "hf_test";
    await pullModel("o/r/model.gguf", { endpoint, cacheDir: cache });
    expect(log[0]!.auth).toBe("Bearer hf_test");
  });

  it("returns a file already present without a request", async () => {
    await pullModel("o/r/model.gguf", { endpoint, cacheDir: cache });
    expect(log).toHaveLength(1);
    const path = await pullModel("o/r/model.gguf", { endpoint, cacheDir: cache, fetchImpl: noFetch });
    expect(path).toBe(join(cache, "o", "r", "model.gguf"));
    expect(log).toHaveLength(1);
  });

  it("fails when the connection ends before Content-Length, without a final file", async () => {
    const err = await pullModel("o/short/model.gguf", { endpoint, cacheDir: cache }).catch((e) => e);
    expect(err).toBeInstanceOf(SpindleError);
    expect(err.message).not.toContain("\n");
    expect(existsSync(pullDestination("o/short/model.gguf", cache))).toBe(false);
  });

  it("fails on a body shorter than Content-Length, without a final file", async () => {
    const fetchImpl = (async () =>
      new Response(new Uint8Array(50), {
        status: 200,
        headers: { "content-length": "100" },
      })) as typeof fetch;
    const err = await pullModel("o/r/model.gguf", { endpoint, cacheDir: cache, fetchImpl }).catch((e) => e);
    expect(err).toBeInstanceOf(SpindleError);
    expect(err.message).toMatch(/size mismatch.*got 50 bytes, expected 100/);
    expect(err.message).not.toContain("\n");
    expect(existsSync(pullDestination("o/r/model.gguf", cache))).toBe(false);
  });

  it("fails on a .part larger than the file and removes it", async () => {
    const part = prePart("o/r/model.gguf", Buffer.alloc(DATA.length + 10));
    const err = await pullModel("o/r/model.gguf", { endpoint, cacheDir: cache }).catch((e) => e);
    expect(err).toBeInstanceOf(SpindleError);
    expect(err.message).toMatch(/size mismatch/);
    expect(log[0]!.range).toBe(`bytes=${DATA.length + 10}-`);
    expect(existsSync(pullDestination("o/r/model.gguf", cache))).toBe(false);
    expect(existsSync(part)).toBe(false);
  });

  it("completes a .part that already holds the whole file (416)", async () => {
    prePart("o/r/model.gguf", DATA);
    const path = await pullModel("o/r/model.gguf", { endpoint, cacheDir: cache });
    expect(log[0]!.range).toBe(`bytes=${DATA.length}-`);
    expect(readFileSync(path).equals(DATA)).toBe(true);
  });

  it("404 is one line naming the file", async () => {
    const err = await pullModel("o/r/missing.gguf", { endpoint, cacheDir: cache }).catch((e) => e);
    expect(err).toBeInstanceOf(SpindleError);
    expect(err.message).toContain("no such file in repo o/r");
    expect(err.message).toContain("missing.gguf");
    expect(err.message).toContain("404");
    expect(err.message).not.toContain("\n");
    expect(existsSync(join(cache, "o", "r", "missing.gguf.part"))).toBe(false);
  });

  it("401 mentions HF_TOKEN", async () => {
    const err = await pullModel("o/gated/model.gguf", { endpoint, cacheDir: cache }).catch((e) => e);
    expect(err).toBeInstanceOf(SpindleError);
    expect(err.message).toContain("401");
    expect(err.message).toContain("HF_TOKEN");
    expect(err.message).not.toContain("\n");
  });

  it("an unreachable endpoint is one line that points at local files", async () => {
    const closed = await closedEndpoint();
    const err = await pullModel("o/r/model.gguf", { endpoint: closed, cacheDir: cache }).catch((e) => e);
    expect(err).toBeInstanceOf(PullNetworkError);
    expect(err.message).toMatch(
      /^download of http:\/\/127\.0\.0\.1:\d+\/o\/r\/resolve\/main\/model\.gguf failed/,
    );
    expect(err.message).toContain("ECONNREFUSED");
    expect(err.message).toContain("--model /path/to/file.gguf");
    expect(err.message).toContain("SPINDLE_MODELS");
    expect(err.message).not.toContain("\n");
  });
});

describe("resolve finds pulled models", () => {
  it("by spec and by bare file name", async () => {
    const top = await pullModel("o/r/model.gguf", { endpoint });
    const nested = await pullModel("o/r@v2/sub/dir/nested.gguf", { endpoint });
    expect(top).toBe(join(cache, "o", "r", "model.gguf"));
    expect(findModel("o/r/model.gguf")).toBe(top);
    expect(findModel("o/r@v2/model.gguf")).toBe(top);
    expect(resolveModel("model.gguf")).toBe(top);
    expect(resolveModel("model")).toBe(top);
    expect(findModel("o/r@v2/sub/dir/nested.gguf")).toBe(nested);
    expect(findModel("nested.gguf")).toBe(nested);
    expect(findModel("other.gguf")).toBeUndefined();
    expect(() => resolveModel("other.gguf")).toThrow(/not found/);
  });
});

describe("ensureModel", () => {
  it("uses the default model from the cache without the network", async () => {
    const dest = pullDestination(DEFAULT_MODEL_SPEC, cache);
    mkdirSync(dirname(dest), { recursive: true });
    writeFileSync(dest, "x");
    expect(await ensureModel(undefined, { fetchImpl: noFetch, progress: false })).toBe(dest);
  });

  it("pulls the default model with a progress bar", async () => {
    const stderr = sink();
    const path = await ensureModel(undefined, { endpoint, stderr });
    expect(path).toBe(pullDestination(DEFAULT_MODEL_SPEC, cache));
    expect(log[0]!.url).toBe(
      "/HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/resolve/main/smollm2-135m-instruct-q8_0.gguf",
    );
    expect(stderr.text).toContain(`downloading ${DEFAULT_MODEL_SPEC}`);
    expect(stderr.text).toContain("100%");
  });

  it("offline: one line telling how to use a local file", async () => {
    const closed = await closedEndpoint();
    const err = await ensureModel(undefined, { endpoint: closed, progress: false }).catch((e) => e);
    expect(err).toBeInstanceOf(SpindleError);
    expect(err.message).toMatch(
      /^no network to download the default model HuggingFaceTB\/SmolLM2-135M-Instruct-GGUF\/smollm2-135m-instruct-q8_0\.gguf \(.*ECONNREFUSED.*\); run with --model \/path\/to\/model\.gguf or set SPINDLE_MODELS to a folder of \.gguf files$/,
    );
    expect(err.message).not.toContain("\n");
  });

  it("resolves a --model path, and pulls a spec missing from the cache", async () => {
    const local = join(tmp, "models", "mine.gguf");
    writeFileSync(local, "x");
    expect(await ensureModel("mine.gguf", { fetchImpl: noFetch })).toBe(local);
    expect(await ensureModel("o/r/model.gguf", { endpoint, progress: false })).toBe(
      join(cache, "o", "r", "model.gguf"),
    );
    await expect(ensureModel("nope.gguf", { fetchImpl: noFetch })).rejects.toThrow(/not found/);
  });
});

describe("pullCommand", () => {
  it("prints the path on stdout and progress on stderr", async () => {
    const stdout = sink();
    const stderr = sink();
    const code = await pullCommand(["o/r/model.gguf", "--endpoint", endpoint], { stdout, stderr });
    expect(code).toBe(0);
    expect(stdout.text).toBe(`${join(cache, "o", "r", "model.gguf")}\n`);
    expect(stderr.text).toContain("100%");
    // Non-TTY: one line per 10% at most.
    expect(stderr.text.trim().split("\n").length).toBeLessThanOrEqual(11);
  });

  it("usage on bad arguments, one-line error on a failed pull", async () => {
    for (const args of [[], ["a", "b"], ["--bogus", "o/r/f.gguf"], ["not-a-spec"]]) {
      const stderr = sink();
      expect(await pullCommand(args, { stdout: sink(), stderr })).toBe(2);
      expect(stderr.text).toContain("usage: spindle pull");
    }
    const help = sink();
    expect(await pullCommand(["--help"], { stdout: help, stderr: sink() })).toBe(0);
    expect(help.text).toContain("usage: spindle pull");

    const stdout = sink();
    const stderr = sink();
    expect(await pullCommand(["o/r/missing.gguf", `--endpoint=${endpoint}`], { stdout, stderr })).toBe(1);
    expect(stdout.text).toBe("");
    expect(stderr.text).toMatch(/^spindle: no such file in repo o\/r .*missing\.gguf.*\n$/);
  });
});

describe("ProgressBar", () => {
  it("redraws in place on a TTY", () => {
    let t = 0;
    const out = Object.assign(sink(), { isTTY: true, columns: 200 });
    const bar = new ProgressBar({ label: "f.gguf", stream: out, now: () => t });
    for (let i = 0; i <= 100; i++) {
      t = i * 50;
      bar.update(i * 1048576, 100 * 1048576);
    }
    bar.done();
    expect(out.text.startsWith("\r")).toBe(true);
    expect(out.text.endsWith("\n")).toBe(true);
    expect(out.text.split("\n")).toHaveLength(2);
    const last = out.text.trimEnd().split("\r").at(-1)!;
    expect(last).toContain("f.gguf  100% [####################]  100.0/100.0 MiB  20.0 MiB/s  ETA 0:00");
  });

  it("prints at most one line per 10% elsewhere", () => {
    let t = 0;
    const out = sink();
    const bar = new ProgressBar({ stream: out, now: () => t });
    for (let i = 0; i <= 1000; i++) {
      t = i * 10;
      bar.update(i * 1000, 1_000_000);
    }
    bar.done();
    const lines = out.text.trimEnd().split("\n");
    expect(lines).toHaveLength(11);
    expect(lines[5]).toMatch(/^ 50% \[#{10}\.{10}\] {2}0\.5\/1\.0 MiB {2}0\.1 MiB\/s {2}ETA 0:05$/);
    expect(out.text).not.toContain("\r");
  });

  it("prints nothing when nothing was reported", () => {
    const out = sink();
    new ProgressBar({ stream: out }).done();
    expect(out.text).toBe("");
  });
});
