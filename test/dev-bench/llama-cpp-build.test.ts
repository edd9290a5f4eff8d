import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { bundleCommit, LLAMA_BUNDLE, llamaCacheDir, llamaCppTools } from "../../bench/llama-cpp-build.js";

/**
 * bench/llama-cpp-build.ts: where llama.cpp's own programs come from for the benchmarks against
 * native llama.cpp. The build itself takes minutes and is not run here; what decides whether a
 * build is needed is: the commit of node-llama-cpp's bundled sources (read with git), the cache
 * folder it names, and a given folder used as it is.
 */

describe.runIf(existsSync(LLAMA_BUNDLE))("llama.cpp's tools for the benchmarks", () => {
  it("keys the cache by the commit of node-llama-cpp's bundled sources", async () => {
    const commit = await bundleCommit();
    expect(commit).toMatch(/^[0-9a-f]{12}$/);
    const heads = execFileSync("git", ["bundle", "list-heads", LLAMA_BUNDLE], { encoding: "utf8" });
    expect(heads.startsWith(commit)).toBe(true);
    const dir = mkdtempSync(join(tmpdir(), "spindle-llama-cache-"));
    const before = process.env.SPINDLE_LLAMA_CPP_CACHE;
    try {
      process.env.SPINDLE_LLAMA_CPP_CACHE = dir;
      expect(llamaCacheDir(commit)).toBe(join(dir, commit));
    } finally {
      if (before === undefined) delete process.env.SPINDLE_LLAMA_CPP_CACHE;
      else process.env.SPINDLE_LLAMA_CPP_CACHE = before;
      rmSync(dir, { recursive: true });
    }
  });

  it("uses a given folder as it is, naming what it lacks, and never builds there", async () => {
    const dir = mkdtempSync(join(tmpdir(), "spindle-llama-bin-"));
    try {
      await expect(llamaCppTools(["llama-server"], { dir })).rejects.toThrow(/no llama-server there/);
      writeFileSync(join(dir, "llama-server"), "");
      expect(await llamaCppTools(["llama-server"], { dir })).toEqual({
        "llama-server": join(dir, "llama-server"),
      });
    } finally {
      rmSync(dir, { recursive: true });
    }
  });
});
