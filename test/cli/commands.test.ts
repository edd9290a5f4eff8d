import { join } from "node:path";
import { afterEach, describe, expect, it, vi } from "vitest";
import { HERMES_TOOL_TEMPLATE } from "../../src/chat/hermes-template.js";
import { readGGUF } from "../../src/gguf/reader.js";
import { GGMLType } from "../../src/gguf/types.js";
import { loadModel } from "../../src/model/model.js";
import { runCli } from "../helpers/cli.js";
import { llamaGreedy } from "../helpers/llamacpp.js";
import { STORIES_260K, testModel } from "../helpers/models.js";
import { tempDir } from "../helpers/tmp.js";

const dir = tempDir();

afterEach(() => vi.restoreAllMocks());

describe("spindle generate", () => {
  it("prints stories260K's greedy continuation (llama.cpp's tokens, detokenized) and timings", async () => {
    const path = testModel(STORIES_260K);
    const r = await runCli([
      "generate",
      "--model",
      "stories260K",
      "--prompt",
      "Once upon a time",
      "--max-tokens",
      "24",
    ]);
    expect(r.code).toBe(0);
    const model = loadModel(path);
    const expected = model.tokenizer.decode(
      await llamaGreedy(path, model.tokenizer.encode("Once upon a time"), 24),
    );
    expect(r.stdout).toBe(`${expected}\n`);
    expect(r.stderr).toMatch(/generated: 24 tokens in [\d.]+ ms \([\d.]+ tok\/s\), finish: length/);
  });

  it("stops at a stop string and leaves it out", async () => {
    const r = await runCli([
      "generate",
      "-m",
      "stories260K",
      "-p",
      "Once upon a time",
      "-n",
      "40",
      "--stop",
      "Lily",
    ]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(", there was a little girl named \n");
    expect(r.stderr).toMatch(/finish: stop/);
  });

  it("a missing model is one line naming where it looked, exit code 1", async () => {
    const r = await runCli(["generate", "--model", "no-such-model", "--prompt", "x"]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(r.stderr).toMatch(
      /^spindle: model "no-such-model" not found \(looked in .*\); pass a \.gguf path/,
    );
  });

  it("a corrupt model file is one line, no stack", async () => {
    const r = await runCli([
      "generate",
      "--model",
      testModel("vocab/ggml-vocab-gpt-2.gguf"),
      "--prompt",
      "x",
    ]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^spindle: .*ggml-vocab-gpt-2\.gguf: unsupported architecture "gpt2".*\n$/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  it("an unknown option is a usage error (exit 2)", async () => {
    const r = await runCli(["generate", "--modle", "x"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--modle/);
  });
});

describe("spindle synth-model", () => {
  it("writes a stories15M-shaped Q8_0 model that loads", async () => {
    const out = join(dir, "s15m.gguf");
    const r = await runCli([
      "synth-model",
      "--shape",
      "stories15M",
      "--type",
      "Q8_0",
      "--layers",
      "2",
      "--out",
      out,
    ]);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(out);
    const g = readGGUF(out);
    expect(g.tensor("blk.0.attn_q.weight").type).toBe(GGMLType.Q8_0);
    expect(g.tensor("blk.0.attn_q.weight").dims).toEqual([288, 288]);
    const m = loadModel(out);
    expect(m.config).toMatchObject({ dim: 288, nLayers: 2, nHeads: 6, ffnDim: 768, vocabSize: 32000 });
    expect(m.tokenizer.encode("Hello world")).toEqual([1, 15043, 3186]);
  });

  it("falls back, and says so, when a type's block does not divide a row (Q4_K on 288-wide rows)", async () => {
    const out = join(dir, "s15m-q4k.gguf");
    const r = await runCli([
      "synth-model",
      "--shape",
      "stories15M",
      "--type",
      "Q4_K",
      "--layers",
      "1",
      "--out",
      out,
    ]);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/blk\.0\.attn_q\.weight stored as Q8_0/);
    expect(readGGUF(out).tensor("blk.0.ffn_down.weight").type).toBe(GGMLType.Q4_K); // 768 = 3 × 256
  });

  it("--shape gemma3-1b brings its architecture: llama.cpp's gemma3 names and keys, windows that load", async () => {
    const out = join(dir, "gemma3.gguf");
    const r = await runCli([
      "synth-model",
      "--shape",
      "gemma3-1b",
      "--type",
      "Q8_0",
      "--layers",
      "7",
      "--dim",
      "64",
      "--ffn",
      "128",
      "--out",
      out,
    ]);
    expect(r.code).toBe(0);
    const g = readGGUF(out);
    expect(g.getString("general.architecture")).toBe("gemma3");
    expect(g.getNumber("gemma3.attention.sliding_window")).toBe(512);
    expect(g.getNumber("gemma3.attention.key_length")).toBe(256);
    expect(g.tensors.has("output.weight")).toBe(false); // tied, as Gemma is
    for (const t of ["post_attention_norm", "post_ffw_norm", "attn_q_norm", "attn_k_norm"])
      expect(g.tensors.has(`blk.0.${t}.weight`), t).toBe(true);
    const m = loadModel(out);
    expect(m.config).toMatchObject({ arch: "gemma3", headDim: 256, ffnActivation: "gelu", postNorms: true });
    // 5 local layers to 1 global: layers 5 is global, the others slide over 512 tokens.
    expect(m.config.layerWindows).toEqual([512, 512, 512, 512, 512, undefined, 512]);
    expect(m.config.ropeLocal?.freqBase).toBe(10000);
    expect(m.config.rope.freqBase).toBe(1e6);
  });

  it("--shape phi3.5-mini writes fused projections and LongRoPE factors", async () => {
    const out = join(dir, "phi3.gguf");
    const r = await runCli([
      "synth-model",
      "--shape",
      "phi3.5-mini",
      "--layers",
      "1",
      "--dim",
      "64",
      "--heads",
      "4",
      "--ffn",
      "96",
      "--out",
      out,
    ]);
    expect(r.code).toBe(0);
    const g = readGGUF(out);
    expect(g.tensor("blk.0.attn_qkv.weight").dims).toEqual([64, 192]);
    expect(g.tensor("blk.0.ffn_up.weight").dims).toEqual([64, 192]);
    expect(g.tensors.has("blk.0.ffn_gate.weight")).toBe(false);
    expect(g.tensor("rope_factors_long.weight").dims).toEqual([8]);
    const m = loadModel(out);
    expect(m.config.arch).toBe("phi3");
    expect(m.config.rope.attnFactor).toBeCloseTo(1.19, 2);
    // Context 131072 > the original 4096: the long factors, as llama.cpp chooses them.
    const long = g.readTensor("rope_factors_long.weight");
    expect(Array.from(m.transformer.weights.ropeFreqs!)).toEqual(
      Array.from(new Float32Array(long.buffer, long.byteOffset, 8)),
    );
  });

  it("--shape qwen3-30b-a3b writes llama.cpp's qwen3moe experts: stacked 3-D tensors, an F32 router", async () => {
    const out = join(dir, "qwen3moe.gguf");
    const args = ["--shape", "qwen3-30b-a3b", "--type", "Q8_0", "--layers", "1", "--dim", "64"];
    const r = await runCli([
      "synth-model",
      ...args,
      "--heads",
      "4",
      "--experts",
      "16",
      "--expert-ffn",
      "32",
      "--out",
      out,
    ]);
    expect(r.code).toBe(0);
    const g = readGGUF(out);
    expect(g.getString("general.architecture")).toBe("qwen3moe");
    expect(g.getNumber("qwen3moe.expert_count")).toBe(16);
    expect(g.getNumber("qwen3moe.expert_used_count")).toBe(8);
    expect(g.getNumber("qwen3moe.expert_feed_forward_length")).toBe(32);
    expect(g.tensor("blk.0.ffn_gate_inp.weight")).toMatchObject({ dims: [64, 16], type: GGMLType.F32 });
    expect(g.tensor("blk.0.ffn_gate_exps.weight")).toMatchObject({ dims: [64, 32, 16], type: GGMLType.Q8_0 });
    expect(g.tensor("blk.0.ffn_up_exps.weight").dims).toEqual([64, 32, 16]);
    expect(g.tensor("blk.0.ffn_down_exps.weight").dims).toEqual([32, 64, 16]);
    expect(g.tensors.has("blk.0.ffn_gate.weight")).toBe(false);
    const m = loadModel(out);
    expect(m.config.moe).toEqual({ nExperts: 16, nUsed: 8, expertFfnDim: 32, normalize: true });
    expect(m.transformer.weights.layers[0]!.moe!.down.map((w) => [w.rows, w.cols])).toEqual(
      Array.from({ length: 16 }, () => [64, 32]),
    );
  });

  it("--experts makes a llama model Mixtral-style; --experts-used without experts is refused", async () => {
    const out = join(dir, "mixtral.gguf");
    const r = await runCli([
      "synth-model",
      "--layers",
      "1",
      "--experts",
      "4",
      "--expert-ffn",
      "64",
      "--out",
      out,
    ]);
    expect(r.code).toBe(0);
    const g = readGGUF(out);
    expect(g.getNumber("llama.expert_count")).toBe(4);
    expect(g.getNumber("llama.expert_used_count")).toBe(2);
    expect(g.getNumber("llama.feed_forward_length")).toBe(64); // a Mixtral file's is its experts' width
    expect(loadModel(out).config.moe).toEqual({ nExperts: 4, nUsed: 2, expertFfnDim: 64, normalize: true });
    const bad = await runCli(["synth-model", "--experts-used", "2", "--out", join(dir, "bad.gguf")]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/--experts-used and --expert-ffn need --experts/);
  });

  it("--type Q4_K_M writes llama.cpp's mixture, with its K-quant fallbacks", async () => {
    const out = join(dir, "s15m-q4km.gguf");
    const r = await runCli(["synth-model", "--type", "Q4_K_M", "--layers", "1", "--out", out]);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/blk\.0\.attn_q\.weight stored as Q5_0/);
    expect(r.stderr).toMatch(/output\.weight stored as Q8_0/);
    const g = readGGUF(out);
    expect(g.getNumber("general.file_type")).toBe(15);
    expect(g.tensor("blk.0.ffn_down.weight").type).toBe(GGMLType.Q6_K); // layer 0 of 1: more bits; 768 = 3 × 256
  });

  it("--ftype Q2_K writes llama.cpp's Q2_K mixture; --type Q2_K every matrix in Q2_K", async () => {
    const mix = join(dir, "s15m-q2k-mix.gguf");
    const args = ["synth-model", "--dim", "256", "--heads", "4", "--ffn", "512", "--layers", "1"];
    const r = await runCli([...args, "--ftype", "q2_k", "--out", mix]);
    expect(r.code).toBe(0);
    const g = readGGUF(mix);
    expect(g.getNumber("general.file_type")).toBe(10);
    expect(g.tensor("blk.0.attn_q.weight").type).toBe(GGMLType.Q2_K);
    expect(g.tensor("blk.0.attn_v.weight").type).toBe(GGMLType.Q3_K); // 1 query head per KV head
    expect(g.tensor("blk.0.ffn_down.weight").type).toBe(GGMLType.Q3_K);
    expect(g.tensor("output.weight").type).toBe(GGMLType.Q6_K);
    const pure = join(dir, "s15m-q2k.gguf");
    expect((await runCli([...args, "--type", "Q2_K", "--out", pure])).code).toBe(0);
    const p = readGGUF(pure);
    for (const t of ["blk.0.attn_v.weight", "blk.0.ffn_down.weight", "output.weight"])
      expect(p.tensor(t).type, t).toBe(GGMLType.Q2_K);
    const bad = await runCli([...args, "--ftype", "Q5_K_S", "--out", pure]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/unknown file type "Q5_K_S" \(known: Q4_K_M, Q3_K_M, Q2_K, IQ4_XS\)/);
  });

  it("--chat-template hermes writes Spindle's tool-aware template over the vocab file's (phi-3's)", async () => {
    const out = join(dir, "tiny-hermes.gguf");
    const args = ["synth-model", "--shape", "tiny", "--vocab", "vocab/ggml-vocab-phi-3.gguf", "--out", out];
    const r = await runCli([...args, "--chat-template", "hermes"]);
    expect(r.code).toBe(0);
    expect(readGGUF(out).metadata.get("tokenizer.chat_template")?.value).toBe(HERMES_TOOL_TEMPLATE);
    const bad = await runCli([...args, "--chat-template", "chatml"]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/unknown chat template "chatml" \(known: hermes\)/);
  });
});
