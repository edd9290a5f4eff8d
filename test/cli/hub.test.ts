import { existsSync, readFileSync, statSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { ensureModel } from "../../src/model/default-model.js";
import { chooseFile, DEFAULT_QUANT_TAG, fileHasTag, parseRepoRef } from "../../src/model/hub-ref.js";
import { runCli } from "../helpers/cli.js";
import { STORIES_260K, TINY_RANDOM, testModel } from "../helpers/models.js";
import { tempDir } from "../helpers/tmp.js";

/**
 * `spindle pull` by repository and quantization tag, and the cache commands (list, show, rm),
 * against a stand-in for the Hugging Face hub on 127.0.0.1: it answers the model API's file
 * listing (`GET /api/models/{owner}/{repo}`, its `siblings`) and serves real GGUF files at
 * `/{owner}/{repo}/resolve/{rev}/{file}`: stories260K as the Q8_0 and Q4_K_M files of the
 * repository, llama-2-tiny-random as its F16 file.
 */

const REPO_FILES: Record<string, Record<string, string>> = {
  "acme/Stories-GGUF": {
    "README.md": "",
    "stories-260k-Q8_0.gguf": STORIES_260K,
    "stories-260k-Q4_K_M.gguf": STORIES_260K,
    "tiny-F16.gguf": TINY_RANDOM,
    "mmproj-stories-Q4_K_M.gguf": TINY_RANDOM,
    "big/stories-Q5_K_M-00001-of-00002.gguf": STORIES_260K,
    "big/stories-Q5_K_M-00002-of-00002.gguf": STORIES_260K,
  },
};

interface Hit {
  url: string;
}

let hub: Server;
let endpoint: string;
const hits: Hit[] = [];

beforeAll(async () => {
  hub = createServer((req, res) => {
    const url = decodeURIComponent(req.url ?? "");
    hits.push({ url });
    const api = /^\/api\/models\/([^/]+\/[^/]+)$/.exec(url);
    if (api) {
      const files = REPO_FILES[api[1]!];
      if (!files) {
        res.writeHead(404, { "content-type": "application/json" }).end('{"error":"Repository not found"}');
        return;
      }
      res.writeHead(200, { "content-type": "application/json" });
      res.end(
        JSON.stringify({ id: api[1], siblings: Object.keys(files).map((rfilename) => ({ rfilename })) }),
      );
      return;
    }
    const file = /^\/([^/]+\/[^/]+)\/resolve\/main\/(.+)$/.exec(url);
    const model = file && REPO_FILES[file[1]!]?.[file[2]!];
    if (!model) {
      res.writeHead(404).end("Entry not found");
      return;
    }
    const bytes = readFileSync(testModel(model));
    res.writeHead(200, { "content-length": String(bytes.length) }).end(bytes);
  });
  await new Promise<void>((r) => hub.listen(0, "127.0.0.1", () => r()));
  endpoint = `http://127.0.0.1:${(hub.address() as AddressInfo).port}`;
});

afterAll(async () => {
  hub.closeAllConnections();
  await new Promise<void>((r) => hub.close(() => r()));
});

let cache: string;
const saved: Record<string, string | undefined> = {};
const root = tempDir("spindle-hub-");
let n = 0;

beforeEach(() => {
  for (const k of ["SPINDLE_CACHE", "SPINDLE_HF_ENDPOINT", "HF_ENDPOINT"]) saved[k] = process.env[k];
  cache = join(root, `cache-${n++}`);
  process.env.SPINDLE_CACHE = cache;
  process.env.SPINDLE_HF_ENDPOINT = endpoint;
  delete process.env.HF_ENDPOINT;
  hits.length = 0;
});

afterEach(() => {
  for (const [k, v] of Object.entries(saved)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
});

const same = (a: string, b: string) => expect(readFileSync(a).equals(readFileSync(b))).toBe(true);

describe("repository references", () => {
  it("reads hf.co/owner/repo[:TAG], owner/repo:TAG and, only when asked, a bare owner/repo", () => {
    expect(parseRepoRef("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M")).toEqual({
      owner: "bartowski",
      repo: "Llama-3.2-1B-Instruct-GGUF",
      revision: "main",
      tag: "Q4_K_M",
    });
    expect(parseRepoRef("huggingface.co/a/b")?.tag).toBe(DEFAULT_QUANT_TAG);
    expect(parseRepoRef("a/b@v2:q8_0")).toMatchObject({ repo: "b", revision: "v2", tag: "q8_0" });
    expect(parseRepoRef("a/b")).toBeUndefined();
    expect(parseRepoRef("a/b", { bare: true })?.tag).toBe(DEFAULT_QUANT_TAG);
    for (const notRef of ["a/b/c.gguf", "./a/b", "/abs/x:Q8_0", "file.gguf", "a/b.gguf"]) {
      expect(parseRepoRef(notRef, { bare: true })).toBeUndefined();
    }
  });

  it("matches a tag at the end of the file name, any case, never a longer tag or a projector", () => {
    expect(fileHasTag("Llama-3.2-1B-Instruct-Q4_K_M.gguf", "q4_k_m")).toBe(true);
    expect(fileHasTag("Llama-3.2-1B-Instruct-Q4_K_M.gguf", "Q4_K")).toBe(false);
    expect(fileHasTag("smollm2-135m-instruct-q8_0.gguf", "Q8_0")).toBe(true);
    expect(fileHasTag("x.Q8_0.gguf", "Q8_0")).toBe(true);
    expect(fileHasTag("xQ8_0.gguf", "Q8_0")).toBe(false);
    expect(fileHasTag("mmproj-x-Q8_0.gguf", "Q8_0")).toBe(false);
    expect(fileHasTag("sub/x-Q5_K_M-00001-of-00002.gguf", "Q5_K_M")).toBe(true);
  });

  it("chooses the single file, refuses split models, and lists the files when no tag matches", () => {
    const files = Object.keys(REPO_FILES["acme/Stories-GGUF"]!);
    const ref = parseRepoRef("acme/Stories-GGUF", { bare: true })!;
    expect(chooseFile(ref, files)).toBe("stories-260k-Q4_K_M.gguf");
    expect(chooseFile({ ...ref, tag: "f16" }, files)).toBe("tiny-F16.gguf");
    expect(() => chooseFile({ ...ref, tag: "Q5_K_M" }, files)).toThrow(
      /split into 2 files.*llama-gguf-split --merge/,
    );
    expect(() => chooseFile({ ...ref, tag: "IQ4_XS" }, files)).toThrow(
      /no \.gguf file tagged IQ4_XS; its files: stories-260k-Q8_0\.gguf, .*tiny-F16\.gguf/,
    );
  });
});

describe("spindle pull by tag, against a stand-in hub", () => {
  it("owner/repo:TAG picks the file from the listing, downloads it, and finds it again offline", async () => {
    const r = await runCli(["pull", "acme/Stories-GGUF:q8_0"]);
    expect(r.stderr).toContain("acme/Stories-GGUF:q8_0 is acme/Stories-GGUF/stories-260k-Q8_0.gguf");
    expect(r.code).toBe(0);
    const path = join(cache, "acme", "Stories-GGUF", "stories-260k-Q8_0.gguf");
    expect(r.stdout).toBe(`${path}\n`);
    same(path, testModel(STORIES_260K));
    expect(hits.map((h) => h.url)).toEqual([
      "/api/models/acme/Stories-GGUF",
      "/acme/Stories-GGUF/resolve/main/stories-260k-Q8_0.gguf",
    ]);
    // Pulled once: the same name is found in the cache without asking the hub.
    hits.length = 0;
    expect((await runCli(["pull", "hf.co/acme/Stories-GGUF:Q8_0"])).stdout).toBe(`${path}\n`);
    expect(await ensureModel("acme/Stories-GGUF:Q8_0", { progress: false })).toBe(path);
    expect(hits).toEqual([]);
  });

  it("hf.co/owner/repo takes the default tag, Q4_K_M; hf.co/owner/repo/file.gguf the exact file", async () => {
    const r = await runCli(["pull", "hf.co/acme/Stories-GGUF"]);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(join(cache, "acme", "Stories-GGUF", "stories-260k-Q4_K_M.gguf"));
    const exact = await runCli(["pull", "hf.co/acme/Stories-GGUF/tiny-F16.gguf"]);
    expect(exact.code).toBe(0);
    same(exact.stdout.trim(), testModel(TINY_RANDOM));
  });

  it("serve and run take the same names: ensureModel resolves and pulls on first use", async () => {
    const path = await ensureModel("hf.co/acme/Stories-GGUF:F16", { progress: false });
    expect(path).toBe(join(cache, "acme", "Stories-GGUF", "tiny-F16.gguf"));
    same(path, testModel(TINY_RANDOM));
  });

  it("a split model, a missing tag and a missing repository are one line each (exit 1), nothing written", async () => {
    const split = await runCli(["pull", "acme/Stories-GGUF:Q5_K_M"]);
    expect(split.code).toBe(1);
    expect(split.stderr).toMatch(/^spindle: acme\/Stories-GGUF:Q5_K_M is split into 2 files .*\n$/);
    const tag = await runCli(["pull", "acme/Stories-GGUF:IQ2_XXS"]);
    expect(tag.code).toBe(1);
    expect(tag.stderr).toMatch(/no \.gguf file tagged IQ2_XXS; its files: /);
    const repo = await runCli(["pull", "hf.co/acme/Nothing-GGUF:Q8_0"]);
    expect(repo.code).toBe(1);
    expect(repo.stderr).toMatch(/^spindle: no repository acme\/Nothing-GGUF .*HTTP 404.*\n$/);
    expect(existsSync(cache)).toBe(false);
  });
});

describe("spindle list, show, rm", () => {
  it("list shows each cached model with size, architecture, parameters and quantization; rm deletes it", async () => {
    expect((await runCli(["pull", "acme/Stories-GGUF:Q8_0"])).code).toBe(0);
    expect((await runCli(["pull", "acme/Stories-GGUF:F16"])).code).toBe(0);
    const list = await runCli(["list"]);
    expect(list.code).toBe(0);
    const lines = list.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^NAME\s+SIZE\s+ARCH\s+PARAMS\s+QUANT\s+MODIFIED$/);
    expect(lines).toHaveLength(3);
    expect(lines[1]).toMatch(
      /^acme\/Stories-GGUF\/stories-260k-Q8_0\.gguf\s+1\.2 MB\s+llama\s+293K\s+F32\s+just now$/,
    );
    expect(lines[2]).toMatch(/^acme\/Stories-GGUF\/tiny-F16\.gguf\s+1\.8 MB\s+llama\s+\S+\s+\S+\s+just now$/);
    const json = (await runCli(["ls", "--json"])).stdout
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { name: string; size: number; parameters: number });
    expect(json[0]).toMatchObject({
      name: "acme/Stories-GGUF/stories-260k-Q8_0.gguf",
      size: statSync(testModel(STORIES_260K)).size,
      parameters: 292_800,
    });

    const rm = await runCli(["rm", "acme/Stories-GGUF:Q8_0"]);
    expect(rm).toMatchObject({ code: 0, stdout: "deleted acme/Stories-GGUF/stories-260k-Q8_0.gguf\n" });
    expect((await runCli(["rm", "acme/Stories-GGUF/tiny-F16.gguf"])).code).toBe(0);
    expect((await runCli(["list"])).stdout.trim().split("\n")).toHaveLength(1);
    expect(existsSync(join(cache, "acme"))).toBe(false); // emptied folders go too
  });

  it("rm never deletes a file outside the cache, and a missing model is one line", async () => {
    const outside = await runCli(["rm", STORIES_260K]);
    expect(outside.code).toBe(1);
    expect(outside.stderr).toMatch(/^spindle: .*stories260K\.gguf is not in the model cache/);
    expect(existsSync(testModel(STORIES_260K))).toBe(true);
    const missing = await runCli(["rm", "nope/Nothing-GGUF:Q8_0"]);
    expect(missing.code).toBe(1);
    expect(missing.stderr.trim().split("\n")).toHaveLength(1);
  });

  it("show prints the architecture, context length, quantization mix and chat template of a file", async () => {
    const r = await runCli(["show", STORIES_260K]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/architecture\s+llama\n/);
    expect(r.stdout).toMatch(/parameters\s+293K \(292,800\)\n/);
    expect(r.stdout).toMatch(/context length\s+2048\n/);
    expect(r.stdout).toMatch(/embedding length\s+64\n/);
    expect(r.stdout).toMatch(/Quantization mix\n\s+F32\s+48 tensors\s+100\.0% of the weights/);
    expect(r.stdout).toMatch(/Chat template\n\s+none in the file: ChatML is used/);
    const meta = await runCli(["show", STORIES_260K, "--metadata"]);
    expect(meta.stdout).toMatch(/llama\.block_count\s+5\n/);
    const json = JSON.parse((await runCli(["show", TINY_RANDOM, "--json"])).stdout) as {
      quantMix: { type: string; share: number }[];
    };
    expect(json.quantMix.reduce((s, q) => s + q.share, 0)).toBeCloseTo(1, 9);
    const none = await runCli(["show", STORIES_260K, "--template"]);
    expect(none.code).toBe(1);
    expect(none.stderr).toContain("has no chat template");
  });
});
