import { SpindleError } from "../errors.js";
import type { GGUFMetaValue } from "../gguf/reader.js";
import { readGGUF } from "../gguf/reader.js";
import { GGMLType, TYPE_GEOMETRY, typeName } from "../gguf/types.js";
import { meta, type TensorToWrite, writeGGUF } from "../gguf/writer.js";
import { quantize } from "../quant/index.js";
import { Rng } from "../sampling/rng.js";
import { type Architecture, SUPPORTED_ARCHITECTURES } from "./config.js";
import { LLAMA_POOLING, type PoolingType } from "./pooling.js";
import { copierPlan } from "./synth-copier.js";

/**
 * `spindle synth-model`: writes a Llama-, Qwen-, Phi-3- or Gemma-shaped GGUF (or a mixture of
 * experts: Mixtral-style llama, qwen2moe, qwen3moe) of any size with
 * deterministic random weights and a real tokenizer copied from a vocab GGUF.
 * Only one small trained model is reachable here; realistic sizes for tests
 * and benchmarks come from this.
 *
 * Weights are scaled so activations stay O(1) through the layers (matrices
 * uniform with std 1/sqrt(fan_in), norms near 1), which gives logits with a
 * real spread instead of a flat distribution, so greedy choices are stable.
 */

/** synth-model writes every architecture the forward pass runs. */
export const SYNTH_ARCHS = SUPPORTED_ARCHITECTURES;
export type SynthArch = Architecture;

export interface SynthShape {
  dim: number;
  nLayers: number;
  nHeads: number;
  nKVHeads: number;
  ffnDim: number;
  contextLength: number;
  /** Head size; default dim / nHeads. */
  headDim?: number;
  ropeFreqBase?: number;
  /** Rotated dimensions of each head (partial RoPE, e.g. Phi-4-mini); default headDim. */
  ropeDim?: number;
  /** The architecture a named shape is of (the default --arch); llama when absent. */
  arch?: SynthArch;
  /** attention.layer_norm_rms_epsilon; default 1e-5 (Gemma: 1e-6). */
  rmsEps?: number;
  /** Gemma: attention.sliding_window, and attention.sliding_window_pattern when given. */
  slidingWindow?: number;
  swaPattern?: number;
  /** Gemma 3: rope.freq_base_swa when given (llama.cpp's default for gemma3 is 10000). */
  ropeFreqBaseSwa?: number;
  /** rope.scaling.type linear with this factor (Gemma 3 4B's global layers: 8). */
  ropeScalingLinear?: number;
  /** Gemma 2: attn_logit_softcapping and final_logit_softcapping (llama.cpp's defaults 50, 30). */
  attnSoftcap?: number;
  finalSoftcap?: number;
  /**
   * Phi-3 LongRoPE: rope_factors_long/short tensors (random, ≥ 1) with
   * rope.scaling.original_context_length and rope.scaling.attn_factor.
   */
  longRope?: { originalContext: number; attnFactor: number };
  /**
   * A mixture of experts in every layer (required for qwen2moe/qwen3moe; a llama model with it is
   * Mixtral-style): expert_count, expert_used_count, each expert's feed-forward width (a llama file
   * writes it as feed_forward_length, Qwen's as expert_feed_forward_length), and qwen2moe's shared
   * expert's width (default ffnDim).
   */
  experts?: SynthExperts;
}

export interface SynthExperts {
  count: number;
  used: number;
  ffnDim: number;
  sharedFfnDim?: number;
}

/** Named shapes of real models, for realistic sizes. */
export const SHAPES: Record<string, SynthShape> = {
  tiny: { dim: 64, nLayers: 2, nHeads: 4, nKVHeads: 2, ffnDim: 128, contextLength: 512 },
  stories15M: { dim: 288, nLayers: 6, nHeads: 6, nKVHeads: 6, ffnDim: 768, contextLength: 256 },
  "smollm2-135m": {
    dim: 576,
    nLayers: 30,
    nHeads: 9,
    nKVHeads: 3,
    ffnDim: 1536,
    contextLength: 2048,
    ropeFreqBase: 100000,
  },
  /** Every dimension a multiple of 256, so every K-quant applies to every matrix. */
  k256: { dim: 256, nLayers: 2, nHeads: 4, nKVHeads: 2, ffnDim: 512, contextLength: 512 },
  /** Phi-3-mini-4k-instruct. */
  "phi3-mini": {
    arch: "phi3",
    dim: 3072,
    nLayers: 32,
    nHeads: 32,
    nKVHeads: 32,
    ffnDim: 8192,
    contextLength: 4096,
  },
  /** Phi-3.5-mini-instruct: the same with LongRoPE to 128K. */
  "phi3.5-mini": {
    arch: "phi3",
    dim: 3072,
    nLayers: 32,
    nHeads: 32,
    nKVHeads: 32,
    ffnDim: 8192,
    contextLength: 131072,
    longRope: { originalContext: 4096, attnFactor: 1.1902380714238083 },
  },
  /** Phi-4-mini-instruct: grouped KV heads, partial RoPE (96 of 128 dims), LongRoPE. */
  "phi4-mini": {
    arch: "phi3",
    dim: 3072,
    nLayers: 32,
    nHeads: 24,
    nKVHeads: 8,
    ffnDim: 8192,
    contextLength: 131072,
    ropeDim: 96,
    ropeFreqBase: 10000,
    longRope: { originalContext: 4096, attnFactor: 1.190238118 },
  },
  /** Gemma-2-2B. */
  "gemma2-2b": {
    arch: "gemma2",
    dim: 2304,
    nLayers: 26,
    nHeads: 8,
    nKVHeads: 4,
    headDim: 256,
    ffnDim: 9216,
    contextLength: 8192,
    rmsEps: 1e-6,
    slidingWindow: 4096,
    attnSoftcap: 50,
    finalSoftcap: 30,
  },
  /** Gemma-3-1B (text): sliding window 512 on 5 layers of 6, global RoPE base 1e6, local 1e4. */
  "gemma3-1b": {
    arch: "gemma3",
    dim: 1152,
    nLayers: 26,
    nHeads: 4,
    nKVHeads: 1,
    headDim: 256,
    ffnDim: 6912,
    contextLength: 32768,
    rmsEps: 1e-6,
    ropeFreqBase: 1e6,
    slidingWindow: 512,
  },
  /** Gemma-3-4B (text): sliding window 1024, global RoPE scaled linearly by 8. */
  "gemma3-4b": {
    arch: "gemma3",
    dim: 2560,
    nLayers: 34,
    nHeads: 8,
    nKVHeads: 4,
    headDim: 256,
    ffnDim: 10240,
    contextLength: 131072,
    rmsEps: 1e-6,
    ropeFreqBase: 1e6,
    ropeScalingLinear: 8,
    slidingWindow: 1024,
  },
  // Mixtures of experts.
  /** Qwen3-30B-A3B: 128 experts of width 768, 8 used, head size 128. */
  "qwen3-30b-a3b": {
    arch: "qwen3moe",
    dim: 2048,
    nLayers: 48,
    nHeads: 32,
    nKVHeads: 4,
    headDim: 128,
    ffnDim: 6144,
    contextLength: 40960,
    rmsEps: 1e-6,
    ropeFreqBase: 1e6,
    experts: { count: 128, used: 8, ffnDim: 768 },
  },
  /** Qwen1.5-MoE-A2.7B: 60 experts of width 1408, 4 used, and a shared expert of width 5632. */
  "qwen1.5-moe-a2.7b": {
    arch: "qwen2moe",
    dim: 2048,
    nLayers: 24,
    nHeads: 16,
    nKVHeads: 16,
    ffnDim: 5632,
    contextLength: 8192,
    rmsEps: 1e-6,
    ropeFreqBase: 1e6,
    experts: { count: 60, used: 4, ffnDim: 1408, sharedFfnDim: 5632 },
  },
  /** Mixtral-8x7B: llama with 8 experts of width 14336, 2 used. */
  "mixtral-8x7b": {
    arch: "llama",
    dim: 4096,
    nLayers: 32,
    nHeads: 32,
    nKVHeads: 8,
    ffnDim: 14336,
    contextLength: 32768,
    ropeFreqBase: 1e6,
    experts: { count: 8, used: 2, ffnDim: 14336 },
  },
  /** A small Mixtral-style model: 8 experts, 2 used. */
  "tiny-moe": {
    dim: 64,
    nLayers: 2,
    nHeads: 4,
    nKVHeads: 2,
    ffnDim: 128,
    contextLength: 512,
    experts: { count: 8, used: 2, ffnDim: 128 },
  },
};

/**
 * Per-tensor type mixtures, named as llama.cpp's quantize names its file types (`llama-quantize
 * in.gguf out.gguf Q3_K_M`). As a `type`, a string names the mixture and a GGMLType the pure type:
 * "Q2_K" is llama.cpp's Q2_K file type (Q2_K with Q3_K/Q4_K/Q6_K where it matters), GGMLType.Q2_K
 * every matrix in Q2_K (llama-quantize's --pure).
 */
export const SYNTH_MIXTURES = ["Q4_K_M", "Q3_K_M", "Q2_K", "IQ4_XS"] as const;
export type SynthMixture = (typeof SYNTH_MIXTURES)[number];

export interface SynthOptions {
  arch: SynthArch;
  shape: SynthShape;
  /** Weight type of the 2-D matrices (norms and biases stay F32), or a per-tensor mixture. */
  type: GGMLType | SynthMixture;
  /** Tokenizer-only GGUF whose tokenizer.* metadata is copied. */
  vocabPath: string;
  out: string;
  seed?: number;
  /** Tie the LM head to token_embd (no output.weight); gemma2 always is (llama.cpp reads no output.weight). */
  tied?: boolean;
  name?: string;
  /** A chat template to write as tokenizer.chat_template (instead of the vocab file's, if any). */
  chatTemplate?: string;
  /** Write `<arch>.pooling_type` (how embeddings pool; left out: llama.cpp's none, Spindle's mean). */
  pooling?: PoolingType;
  /** Hand-set the first two layers to an induction circuit, so the model copies its prompt (synth-copier.ts). */
  copier?: boolean;
}

export interface SynthReport {
  path: string;
  parameters: number;
  /** Matrices that could not take the requested type (row length not a block multiple) and what they got. */
  fallbacks: { tensor: string; type: string }[];
}

/** The requested type if its block divides the row length, else the closest type that fits. */
function typeFor(requested: GGMLType, cols: number): GGMLType {
  for (const t of [requested, GGMLType.Q8_0, GGMLType.F16, GGMLType.F32]) {
    if (cols % TYPE_GEOMETRY[t]!.blockSize === 0) return t;
  }
  return GGMLType.F32;
}

/** llama.cpp's llama_ftype numbers (general.file_type) of the mixtures. */
const MIXTURE_FTYPE: Record<SynthMixture, number> = { Q4_K_M: 15, Q3_K_M: 12, Q2_K: 10, IQ4_XS: 30 };

/**
 * llama.cpp's llama_ftype (general.file_type) of a file whose matrices are all `type`: the file type
 * llama-quantize names after that type (the _S variant for the K-quants that have one).
 */
const PURE_FTYPE: Partial<Record<GGMLType, number>> = {
  [GGMLType.F32]: 0,
  [GGMLType.F16]: 1,
  [GGMLType.Q4_0]: 2,
  [GGMLType.Q4_1]: 3,
  [GGMLType.Q8_0]: 7,
  [GGMLType.Q5_0]: 8,
  [GGMLType.Q5_1]: 9,
  [GGMLType.Q2_K]: 10,
  [GGMLType.Q3_K]: 11,
  [GGMLType.Q4_K]: 14,
  [GGMLType.Q5_K]: 16,
  [GGMLType.Q6_K]: 18,
  [GGMLType.IQ4_NL]: 25,
  [GGMLType.IQ4_XS]: 30,
  [GGMLType.BF16]: 32,
};

/** The layers llama.cpp's K-quant mixtures give more bits: the first and last eighth, and every third one between. */
function useMoreBits(layer: number, nLayers: number): boolean {
  const eighth = Math.floor(nLayers / 8);
  return layer < eighth || layer >= Math.floor((7 * nLayers) / 8) || (layer - eighth) % 3 === 2;
}

/** What a mixture's recipe needs to know about the model. */
interface RecipeModel {
  nLayers: number;
  /** Query heads per KV head (llama.cpp's n_gqa). */
  gqa: number;
  tied: boolean;
}

/**
 * The type llama.cpp's quantize gives a matrix in each mixture (llama_tensor_get_type, for a dense
 * model without an importance matrix, not Falcon, not 70B; before the fallbacks of kQuantFor):
 * - every mixture: Q6_K for the LM head (token_embd when tied).
 * - Q4_K_M: Q4_K; Q6_K for attn_v and ffn_down on the use-more-bits layers.
 * - Q3_K_M: Q3_K; attn_v Q5_K on layers 0 and 1, else Q4_K; ffn_down Q5_K on the first
 *   sixteenth of the layers, else Q4_K; attn_output Q4_K.
 * - Q2_K: Q2_K; attn_v Q4_K with 4 or more query heads per KV head, else Q3_K; ffn_down and
 *   attn_output Q3_K.
 * - IQ4_XS: IQ4_XS; attn_v Q5_K with 4 or more query heads per KV head; ffn_down Q5_K on the first
 *   eighth of the layers.
 * The untied token_embd keeps the mixture's base type.
 */
function mixtureType(mix: SynthMixture, name: string, m: RecipeModel): GGMLType {
  if (name === "output.weight" || (m.tied && name === "token_embd.weight")) return GGMLType.Q6_K;
  const layerOf = /^blk\.(\d+)\.(\w+)\.weight$/.exec(name);
  const layer = layerOf ? Number(layerOf[1]) : -1;
  const role = layerOf?.[2] ?? "";
  const n = m.nLayers;
  switch (mix) {
    case "Q4_K_M":
      if ((role === "attn_v" || role === "ffn_down") && useMoreBits(layer, n)) return GGMLType.Q6_K;
      return GGMLType.Q4_K;
    case "Q3_K_M":
      if (role === "attn_v") return layer < 2 ? GGMLType.Q5_K : GGMLType.Q4_K;
      if (role === "ffn_down") return layer < Math.floor(n / 16) ? GGMLType.Q5_K : GGMLType.Q4_K;
      if (role === "attn_output") return GGMLType.Q4_K;
      return GGMLType.Q3_K;
    case "Q2_K":
      if (role === "attn_v") return m.gqa >= 4 ? GGMLType.Q4_K : GGMLType.Q3_K;
      if (role === "ffn_down" || role === "attn_output") return GGMLType.Q3_K;
      return GGMLType.Q2_K;
    case "IQ4_XS":
      if (role === "attn_v" && m.gqa >= 4) return GGMLType.Q5_K;
      if (role === "ffn_down" && layer < Math.floor(n / 8)) return GGMLType.Q5_K;
      return GGMLType.IQ4_XS;
  }
}

/**
 * llama.cpp's fallback for a type whose block does not divide the row (tensor_type_fallback), then
 * F16 if still needed.
 */
const K_FALLBACK: Partial<Record<GGMLType, GGMLType>> = {
  [GGMLType.Q2_K]: GGMLType.Q4_0,
  [GGMLType.Q3_K]: GGMLType.Q4_0,
  [GGMLType.Q4_K]: GGMLType.Q5_0,
  [GGMLType.Q5_K]: GGMLType.Q5_1,
  [GGMLType.Q6_K]: GGMLType.Q8_0,
  [GGMLType.IQ4_XS]: GGMLType.IQ4_NL,
};
function kQuantFor(requested: GGMLType, cols: number): GGMLType {
  const fits = (t: GGMLType) => cols % TYPE_GEOMETRY[t]!.blockSize === 0;
  if (fits(requested)) return requested;
  const t = K_FALLBACK[requested];
  return t !== undefined && fits(t) ? t : GGMLType.F16;
}

export function synthModel(o: SynthOptions): SynthReport {
  const s = o.shape;
  const headDim = s.headDim ?? s.dim / s.nHeads;
  if (!Number.isInteger(headDim) || s.nHeads % s.nKVHeads !== 0) {
    throw new SpindleError(`bad shape: dim ${s.dim}, ${s.nHeads} heads, ${s.nKVHeads} KV heads`);
  }
  if (o.arch === "phi3" && typeof o.type === "string")
    throw new SpindleError(
      `the ${o.type} mixture is not implemented for phi3 (its fused attn_qkv has a recipe of its own)`,
    );
  const moeArch = o.arch === "qwen2moe" || o.arch === "qwen3moe";
  const x = s.experts;
  if (moeArch && !x) throw new SpindleError(`a ${o.arch} model needs experts (count, used, width)`);
  if (x && o.arch !== "llama" && !moeArch)
    throw new SpindleError(`experts are written for llama, qwen2moe and qwen3moe, not ${o.arch}`);
  if (x && (x.count < 2 || x.used < 1 || x.used > x.count))
    throw new SpindleError(`bad experts: ${x.used} used of ${x.count}`);
  if (x && typeof o.type === "string")
    throw new SpindleError("the Q4_K_M mixture is not implemented for mixtures of experts");
  const ropeDim = s.ropeDim ?? headDim;
  if (ropeDim % 2 !== 0 || ropeDim > headDim) throw new SpindleError(`bad RoPE dimension ${ropeDim}`);
  const tied = o.tied === true || o.arch === "gemma2";
  const gemma = o.arch === "gemma2" || o.arch === "gemma3";
  const vocab = readGGUF(o.vocabPath);
  const tokens = vocab.getArray("tokenizer.ggml.tokens");
  if (!tokens) throw new SpindleError(`${o.vocabPath} has no tokenizer.ggml.tokens`);
  const nVocab = tokens.length;
  if (o.copier && (o.arch !== "llama" || x || tied))
    throw new SpindleError("--copier writes an untied llama model without experts");
  const copier = o.copier ? copierPlan({ ...s, headDim }, nVocab, o.seed ?? 1) : undefined;
  const rng = new Rng(o.seed ?? 1);
  const uniform = (n: number, std: number, mean = 0) => {
    const a = std * Math.sqrt(3);
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = mean + (rng.nextU32() / 2 ** 32) * 2 * a - a;
    return out;
  };

  const tensors: TensorToWrite[] = [];
  const fallbacks: SynthReport["fallbacks"] = [];
  let parameters = 0;
  const mixture = typeof o.type === "string" ? o.type : undefined;
  const recipe: RecipeModel = { nLayers: s.nLayers, gqa: s.nHeads / s.nKVHeads, tied };
  const mat = (name: string, rows: number, cols: number, std = 1 / Math.sqrt(cols)) => {
    const wanted = mixture ? mixtureType(mixture, name, recipe) : (o.type as GGMLType);
    const type = mixture ? kQuantFor(wanted, cols) : typeFor(wanted, cols);
    if (type !== wanted) fallbacks.push({ tensor: name, type: typeName(type) });
    const values = copier?.weight(name, rows * cols) ?? uniform(rows * cols, std);
    tensors.push({ name, dims: [cols, rows], type, data: quantize(type, values, cols) });
    parameters += rows * cols;
  };
  /** n matrices stacked in one 3-D tensor (dims [cols, rows, n]), as llama.cpp stores experts. */
  const stack = (name: string, n: number, rows: number, cols: number) => {
    const type = typeFor(o.type as GGMLType, cols);
    if (type !== o.type) fallbacks.push({ tensor: name, type: typeName(type) });
    const data = quantize(type, uniform(n * rows * cols, 1 / Math.sqrt(cols)), cols);
    tensors.push({ name, dims: [cols, rows, n], type, data });
    parameters += n * rows * cols;
  };
  /** A matrix kept in F32 whatever the type (llama.cpp's quantize leaves the router unquantized). */
  const f32 = (name: string, rows: number, cols: number) => {
    const v = uniform(rows * cols, 1 / Math.sqrt(cols));
    tensors.push({
      name,
      dims: rows === 1 ? [cols] : [cols, rows],
      type: GGMLType.F32,
      data: new Uint8Array(v.buffer),
    });
    parameters += rows * cols;
  };
  const vec = (name: string, n: number, std: number, mean: number) => {
    const v = copier?.weight(name, n) ?? uniform(n, std, mean);
    tensors.push({ name, dims: [n], type: GGMLType.F32, data: new Uint8Array(v.buffer) });
    parameters += n;
  };

  const qDim = s.nHeads * headDim;
  const kvDim = s.nKVHeads * headDim;
  // Input rows are RMS-normalised before use, so their scale is free; as a tied LM head they must be
  // scaled like any other matrix so logits stay O(1).
  mat("token_embd.weight", nVocab, s.dim, tied ? 1 / Math.sqrt(s.dim) : 1);
  for (let l = 0; l < s.nLayers; l++) {
    const p = `blk.${l}.`;
    vec(`${p}attn_norm.weight`, s.dim, 0.1, 1);
    if (o.arch === "phi3") {
      // llama.cpp's names for Phi-3's fused projections: Q, K, V stacked by rows in attn_qkv.
      mat(`${p}attn_qkv.weight`, qDim + 2 * kvDim, s.dim);
    } else {
      mat(`${p}attn_q.weight`, qDim, s.dim);
      mat(`${p}attn_k.weight`, kvDim, s.dim);
      mat(`${p}attn_v.weight`, kvDim, s.dim);
    }
    if (o.arch === "qwen2" || o.arch === "qwen2moe") {
      vec(`${p}attn_q.bias`, qDim, 0.1, 0);
      vec(`${p}attn_k.bias`, kvDim, 0.1, 0);
      vec(`${p}attn_v.bias`, kvDim, 0.1, 0);
    }
    if (o.arch === "qwen3" || o.arch === "qwen3moe" || o.arch === "gemma3") {
      vec(`${p}attn_q_norm.weight`, headDim, 0.1, 1);
      vec(`${p}attn_k_norm.weight`, headDim, 0.1, 1);
    }
    mat(`${p}attn_output.weight`, s.dim, qDim);
    // Gemma's norm weights are stored as llama.cpp's converter writes them, with the 1 added.
    if (gemma) vec(`${p}post_attention_norm.weight`, s.dim, 0.1, 1);
    vec(`${p}ffn_norm.weight`, s.dim, 0.1, 1);
    if (x) {
      // The router, then each kind of expert matrix stacked over the experts.
      f32(`${p}ffn_gate_inp.weight`, x.count, s.dim);
      stack(`${p}ffn_gate_exps.weight`, x.count, x.ffnDim, s.dim);
      stack(`${p}ffn_up_exps.weight`, x.count, x.ffnDim, s.dim);
      stack(`${p}ffn_down_exps.weight`, x.count, s.dim, x.ffnDim);
      if (o.arch === "qwen2moe") {
        const sf = x.sharedFfnDim ?? s.ffnDim;
        f32(`${p}ffn_gate_inp_shexp.weight`, 1, s.dim);
        mat(`${p}ffn_gate_shexp.weight`, sf, s.dim);
        mat(`${p}ffn_up_shexp.weight`, sf, s.dim);
        mat(`${p}ffn_down_shexp.weight`, s.dim, sf);
      }
    } else if (o.arch === "phi3") {
      // Gate and up in one ffn_up of 2·ffnDim rows, the gate's first.
      mat(`${p}ffn_up.weight`, 2 * s.ffnDim, s.dim);
    } else {
      mat(`${p}ffn_gate.weight`, s.ffnDim, s.dim);
      mat(`${p}ffn_up.weight`, s.ffnDim, s.dim);
    }
    if (!x) mat(`${p}ffn_down.weight`, s.dim, s.ffnDim);
    if (gemma) vec(`${p}post_ffw_norm.weight`, s.dim, 0.1, 1);
  }
  vec("output_norm.weight", s.dim, 0.1, 1);
  if (!tied) mat("output.weight", nVocab, s.dim);
  if (s.longRope) {
    // Divisors of the RoPE angles, ≥ 1 as real ones are (short near 1, long up to tens).
    vec("rope_factors_short.weight", ropeDim / 2, 0.2, 1.3);
    vec("rope_factors_long.weight", ropeDim / 2, 4, 9);
  }

  const a = o.arch;
  const md: [string, GGUFMetaValue][] = [
    ["general.architecture", meta.str(a)],
    ["general.name", meta.str(o.name ?? `spindle-synth-${a}-${s.dim}x${s.nLayers}`)],
    ["general.file_type", meta.u32(mixture ? MIXTURE_FTYPE[mixture] : (PURE_FTYPE[o.type as GGMLType] ?? 0))],
    [`${a}.context_length`, meta.u32(s.contextLength)],
    [`${a}.embedding_length`, meta.u32(s.dim)],
    [`${a}.block_count`, meta.u32(s.nLayers)],
    // A Mixtral-style llama file's feed_forward_length is its experts' width.
    [`${a}.feed_forward_length`, meta.u32(x && !moeArch ? x.ffnDim : s.ffnDim)],
    [`${a}.attention.head_count`, meta.u32(s.nHeads)],
    [`${a}.attention.head_count_kv`, meta.u32(s.nKVHeads)],
    [`${a}.attention.layer_norm_rms_epsilon`, meta.f32(s.rmsEps ?? 1e-5)],
    [`${a}.rope.dimension_count`, meta.u32(ropeDim)],
    [`${a}.rope.freq_base`, meta.f32(copier?.ropeFreqBase ?? s.ropeFreqBase ?? 10000)],
  ];
  if (x) {
    md.push([`${a}.expert_count`, meta.u32(x.count)], [`${a}.expert_used_count`, meta.u32(x.used)]);
    if (moeArch) md.push([`${a}.expert_feed_forward_length`, meta.u32(x.ffnDim)]);
    if (a === "qwen2moe")
      md.push([`${a}.expert_shared_feed_forward_length`, meta.u32(x.sharedFfnDim ?? s.ffnDim)]);
  }
  if (s.slidingWindow !== undefined) md.push([`${a}.attention.sliding_window`, meta.u32(s.slidingWindow)]);
  if (s.swaPattern !== undefined) md.push([`${a}.attention.sliding_window_pattern`, meta.u32(s.swaPattern)]);
  if (s.ropeFreqBaseSwa !== undefined) md.push([`${a}.rope.freq_base_swa`, meta.f32(s.ropeFreqBaseSwa)]);
  if (s.ropeScalingLinear !== undefined) {
    md.push(
      [`${a}.rope.scaling.type`, meta.str("linear")],
      [`${a}.rope.scaling.factor`, meta.f32(s.ropeScalingLinear)],
    );
  }
  if (s.attnSoftcap !== undefined) md.push([`${a}.attn_logit_softcapping`, meta.f32(s.attnSoftcap)]);
  if (s.finalSoftcap !== undefined) md.push([`${a}.final_logit_softcapping`, meta.f32(s.finalSoftcap)]);
  if (s.longRope) {
    md.push(
      [`${a}.rope.scaling.original_context_length`, meta.u32(s.longRope.originalContext)],
      [`${a}.rope.scaling.attn_factor`, meta.f32(s.longRope.attnFactor)],
    );
  }
  if (headDim !== s.dim / s.nHeads) {
    md.push(
      [`${a}.attention.key_length`, meta.u32(headDim)],
      [`${a}.attention.value_length`, meta.u32(headDim)],
    );
  }
  if (o.pooling) md.push([`${a}.pooling_type`, meta.u32(LLAMA_POOLING[o.pooling])]);
  for (const [k, v] of vocab.metadata) {
    if (k.startsWith("tokenizer.") && !(o.chatTemplate !== undefined && k === "tokenizer.chat_template")) {
      md.push([k, v]);
    }
  }
  if (o.chatTemplate !== undefined) md.push(["tokenizer.chat_template", meta.str(o.chatTemplate)]);
  writeGGUF(o.out, md, tensors);
  return { path: o.out, parameters, fallbacks };
}
