import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { nativeTools, parseBatchedBench, parseLlamaBench } from "../../bench/native-llama.js";

// Output of llama.cpp's tools as built from node-llama-cpp's bundled sources, on stories260K
// (llama-bench's objects cut to some of their fields; the batched-bench lines whole).
const LLAMA_BENCH = JSON.stringify([
  {
    build_commit: "80fb11a",
    build_number: 1,
    model_type: "llama ?B (guessed) all F32",
    n_prompt: 128,
    n_gen: 0,
    n_threads: 2,
    type_k: "f16",
    avg_ts: 6981.940715,
    stddev_ts: 253.671098,
  },
  {
    build_commit: "80fb11a",
    build_number: 1,
    model_type: "llama ?B (guessed) all F32",
    n_prompt: 0,
    n_gen: 128,
    n_threads: 2,
    type_k: "f16",
    avg_ts: 4290.689451,
    stddev_ts: 149.107815,
  },
]);

const BATCHED = [
  '{"n_kv_max": 8192, "n_batch": 2048, "n_ubatch": 512, "flash_attn": -1, "is_pp_shared": 0, "n_gpu_layers": -1, "n_threads": 2, "n_threads_batch": 2, "pp": 16, "tg": 32, "pl": 1, "n_kv": 48, "t_pp": 0.004227, "speed_pp": 3785.190674, "t_tg": 0.031262, "speed_tg": 1023.606934, "t": 0.035489, "speed": 1352.531738}',
  '{"n_kv_max": 8192, "n_batch": 2048, "n_ubatch": 512, "flash_attn": -1, "is_pp_shared": 0, "n_gpu_layers": -1, "n_threads": 2, "n_threads_batch": 2, "pp": 16, "tg": 32, "pl": 32, "n_kv": 1536, "t_pp": 0.110300, "speed_pp": 4641.885742, "t_tg": 0.419658, "speed_tg": 2440.082031, "t": 0.529958, "speed": 2898.342773}',
  "",
  "llama_perf_context_print:        load time =      12.34 ms",
].join("\n");

describe("native llama.cpp tools' output", () => {
  it("reads llama-bench's prompt and generation rates and its build", () => {
    expect(parseLlamaBench(LLAMA_BENCH)).toEqual({
      prompt: 6981.940715,
      gen: 4290.689451,
      build: "b1 (80fb11a)",
    });
  });

  it("fails on llama-bench output without a generation result", () => {
    const onlyPrompt = JSON.stringify([JSON.parse(LLAMA_BENCH)[0]]);
    expect(() => parseLlamaBench(onlyPrompt)).toThrow(/no prompt or no generation/);
  });

  it("reads llama-batched-bench's decode rate per parallel count, skipping other lines", () => {
    const m = parseBatchedBench(BATCHED);
    expect([...m.entries()]).toEqual([
      [1, 1023.606934],
      [32, 2440.082031],
    ]);
  });

  it("names the tools missing from --native's folder", () => {
    const dir = mkdtempSync(join(tmpdir(), "spindle-native-"));
    try {
      expect(() => nativeTools(dir)).toThrow(/no llama-bench or llama-batched-bench there/);
      writeFileSync(join(dir, "llama-bench"), "");
      expect(() => nativeTools(dir)).toThrow(/no llama-batched-bench there$/);
      writeFileSync(join(dir, "llama-batched-bench"), "");
      expect(nativeTools(dir)["llama-batched-bench"]).toBe(join(dir, "llama-batched-bench"));
    } finally {
      rmSync(dir, { recursive: true });
    }
  });
});
