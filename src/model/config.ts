import { ModelFileError } from "../errors.js";
import type { GGUFFile } from "../gguf/reader.js";
import type { RopeParams } from "../kernels/kernels.js";
import { type PoolingType, poolingFromGGUF } from "./pooling.js";

/**
 * Architectures the forward pass implements: the Llama family (Mixtral-style experts under `llama`
 * included), Qwen2-MoE and Qwen3-MoE, Phi-3, Gemma 2 and Gemma 3 (text).
 */
export const SUPPORTED_ARCHITECTURES = [
  "llama",
  "qwen2",
  "qwen3",
  "qwen2moe",
  "qwen3moe",
  "phi3",
  "gemma2",
  "gemma3",
] as const;
export type Architecture = (typeof SUPPORTED_ARCHITECTURES)[number];

/**
 * A mixture-of-experts feed-forward block (llama.cpp's build_moe_ffn with softmax gating): the
 * router's logits are softmaxed over all experts, the `nUsed` most probable experts run, and their
 * outputs are summed weighted by their probabilities, which are first divided by their sum when
 * `normalize` (Mixtral, Qwen3-MoE; Qwen2-MoE keeps the raw probabilities).
 */
export interface MoEConfig {
  /** expert_count: experts per layer. */
  nExperts: number;
  /** expert_used_count: experts each token runs (top-k). */
  nUsed: number;
  /** Each expert's feed-forward width (qwen*moe: expert_feed_forward_length; llama: feed_forward_length). */
  expertFfnDim: number;
  normalize: boolean;
  /**
   * Qwen2-MoE's shared expert, run by every token and weighted by sigmoid(x · ffn_gate_inp_shexp):
   * its feed-forward width (expert_shared_feed_forward_length); undefined without one.
   */
  sharedFfnDim?: number;
}

export interface ModelConfig {
  arch: Architecture;
  name: string;
  vocabSize: number;
  /** Width of the residual stream (n_embd). */
  dim: number;
  nLayers: number;
  nHeads: number;
  nKVHeads: number;
  headDim: number;
  /** The dense feed-forward width (of a mixture-of-experts model: as the file says, unused). */
  ffnDim: number;
  /** Mixture of experts in every layer's feed-forward block; undefined for a dense model. */
  moe?: MoEConfig;
  contextLength: number;
  rmsEps: number;
  rope: RopeParams;
  /** Q/K/V projections have biases (qwen2). */
  qkvBias: boolean;
  /** Per-head RMS norm on Q and K before RoPE (qwen3). */
  qkNorm: boolean;
  /** The output projection reuses token_embd (no output.weight in the file; always for gemma2). */
  tiedEmbeddings: boolean;
  /**
   * How embeddings pool the final hidden states (`<arch>.pooling_type`, mean when absent);
   * undefined when the file asks for a pooling Spindle does not compute (rank).
   */
  pooling: PoolingType | undefined;
  /** Multiplies the token embeddings: sqrt(dim) for Gemma, 1 elsewhere. */
  embedScale: number;
  /** The feed-forward gate's activation: SiLU (SwiGLU) or tanh-GELU (Gemma's GeGLU). */
  ffnActivation: "silu" | "gelu";
  /** RMS norms on the attention and feed-forward outputs before their residual adds (Gemma 2/3). */
  postNorms: boolean;
  /** Multiplies q·k: 1/sqrt(headDim), except Gemma's 27B models (llama.cpp: 1/sqrt(dim / nHeads)). */
  attnScale: number;
  /** Gemma 2's soft-capping of attention scores (cap · tanh(s / cap)) and of the final logits. */
  attnSoftcap?: number;
  finalSoftcap?: number;
  /**
   * Per layer, its sliding window (llama.cpp's standard SWA: a query at p sees keys p-window+1..p)
   * or undefined for a global layer. Gemma 2: every other layer; Gemma 3: 5 local to 1 global.
   */
  layerWindows: (number | undefined)[];
  /** The RoPE of the sliding-window layers when it differs from `rope` (Gemma 3: base 10000, unscaled). */
  ropeLocal?: RopeParams;
  /**
   * Phi-3 LongRoPE: the context its short factors cover (rope.scaling.original_context_length).
   * As llama.cpp does, the long factors are used when the served context is longer than this.
   */
  ropeOriginalContext: number;
}

/** Reads the architecture hyper-parameters from GGUF metadata; one clear error if something is missing. */
export function configFromGGUF(g: GGUFFile): ModelConfig {
  const arch = g.getString("general.architecture");
  if (!(SUPPORTED_ARCHITECTURES as readonly string[]).includes(arch)) {
    throw new ModelFileError(
      g.path,
      `unsupported architecture "${arch}" (Spindle runs ${SUPPORTED_ARCHITECTURES.join(", ")})`,
    );
  }
  const a = arch as Architecture;
  const k = (key: string) => `${a}.${key}`;
  const dim = g.getNumber(k("embedding_length"));
  const nHeads = g.getNumber(k("attention.head_count"));
  const nKVHeads = g.getNumber(k("attention.head_count_kv"), nHeads);
  const headDim = g.getNumber(k("attention.key_length"), dim / nHeads);
  const valueDim = g.getNumber(k("attention.value_length"), headDim);
  if (valueDim !== headDim)
    throw new ModelFileError(g.path, `key length ${headDim} != value length ${valueDim}`);
  if (!Number.isInteger(headDim) || nHeads % nKVHeads !== 0) {
    throw new ModelFileError(
      g.path,
      `inconsistent attention shape: ${nHeads} heads, ${nKVHeads} KV heads, dim ${dim}`,
    );
  }
  const tokens = g.getArray("tokenizer.ggml.tokens");
  const embd = g.tensors.get("token_embd.weight");
  const vocabSize = g.getNumber(k("vocab_size"), embd?.dims[1] ?? tokens?.length ?? 0);
  const scalingType = g.getString(k("rope.scaling.type"), "none");
  const scalingFactor = g.getNumber(k("rope.scaling.factor"), 1);
  const freqScale =
    scalingType === "linear" && scalingFactor > 0
      ? 1 / scalingFactor
      : g.getNumber(k("rope.scale_linear"), 1);
  const ropeDim = g.getNumber(k("rope.dimension_count"), headDim);
  const nLayers = g.getNumber(k("block_count"));
  const contextLength = g.getNumber(k("context_length"), 2048);
  const freqBase = g.getNumber(k("rope.freq_base"), 10000);
  const rope: RopeParams = {
    style: a === "llama" ? "normal" : "neox",
    dim: ropeDim,
    freqBase,
    freqScale,
  };
  const attnFactor = g.getNumber(k("rope.scaling.attn_factor"), 1);
  if (attnFactor !== 1) rope.attnFactor = attnFactor;
  const gemma = a === "gemma2" || a === "gemma3";
  // llama.cpp's f_attention_scale: Gemma's 27B sizes (62 and 46 layers) scale by dim / nHeads.
  const big = (a === "gemma3" && nLayers === 62) || (a === "gemma2" && nLayers === 46);
  const config: ModelConfig = {
    arch: a,
    name: g.getString("general.name", a),
    vocabSize,
    dim,
    nLayers,
    nHeads,
    nKVHeads,
    headDim,
    // Optional in a Qwen MoE file (its experts have a width of their own).
    ffnDim:
      a === "qwen2moe" || a === "qwen3moe"
        ? g.getNumber(k("feed_forward_length"), 0)
        : g.getNumber(k("feed_forward_length")),
    contextLength,
    rmsEps: g.getNumber(k("attention.layer_norm_rms_epsilon"), 1e-5),
    rope,
    qkvBias: g.tensors.has("blk.0.attn_q.bias") || g.tensors.has("blk.0.attn_qkv.bias"),
    qkNorm: g.tensors.has("blk.0.attn_q_norm.weight"),
    tiedEmbeddings: a === "gemma2" || !g.tensors.has("output.weight"),
    embedScale: gemma ? Math.fround(Math.sqrt(dim)) : 1,
    ffnActivation: gemma ? "gelu" : "silu",
    postNorms: gemma,
    attnScale: 1 / Math.sqrt(big ? dim / nHeads : headDim),
    layerWindows: new Array<number | undefined>(nLayers).fill(undefined),
    ropeOriginalContext: g.getNumber(k("rope.scaling.original_context_length"), contextLength),
    pooling: poolingFromGGUF(g.has(k("pooling_type")) ? g.getNumber(k("pooling_type")) : undefined),
  };
  if (a === "gemma2") {
    config.attnSoftcap = g.getNumber(k("attn_logit_softcapping"), 50);
    config.finalSoftcap = g.getNumber(k("final_logit_softcapping"), 30);
    const window = g.getNumber(k("attention.sliding_window"), 4096);
    config.layerWindows = swaLayers(g, k("attention.sliding_window_pattern"), nLayers, 2).map((swa) =>
      swa ? window : undefined,
    );
    const base = g.getNumber(k("rope.freq_base_swa"), freqBase);
    if (base !== freqBase) config.ropeLocal = { ...rope, freqBase: base };
  }
  if (a === "gemma3") {
    const cap = g.getNumber(k("final_logit_softcapping"), 0);
    if (cap > 0) config.finalSoftcap = cap;
    const window = g.getNumber(k("attention.sliding_window"), 0);
    if (window > 0) {
      config.layerWindows = swaLayers(g, k("attention.sliding_window_pattern"), nLayers, 6).map((swa) =>
        swa ? window : undefined,
      );
      // Local layers: their own base (10000 unless the file says), never the global linear scaling.
      config.ropeLocal = { ...rope, freqBase: g.getNumber(k("rope.freq_base_swa"), 10000), freqScale: 1 };
    }
  }
  config.moe = moeConfig(g, a, config.ffnDim);
  // phi3's attention.sliding_window is ignored: llama.cpp disables Phi-3's sliding window (its
  // converters fill it inconsistently), and Spindle computes what llama.cpp computes.
  return config;
}

/**
 * The experts of a mixture-of-experts file, as llama.cpp reads them: `expert_count` (a llama file
 * with more than one is Mixtral-style), `expert_used_count`, and for qwen2moe/qwen3moe the experts'
 * own width (`expert_feed_forward_length`, else feed_forward_length / expert_used_count) and
 * qwen2moe's shared expert. Undefined for a dense model.
 */
function moeConfig(g: GGUFFile, a: Architecture, ffnDim: number): MoEConfig | undefined {
  const k = (key: string) => `${a}.${key}`;
  const qwenMoE = a === "qwen2moe" || a === "qwen3moe";
  const nExperts = g.getNumber(k("expert_count"), 0);
  if (!qwenMoE && nExperts <= 1) return undefined;
  const nUsed = g.getNumber(k("expert_used_count"), 0);
  if (nExperts <= 1 || nUsed < 1 || nUsed > nExperts)
    throw new ModelFileError(g.path, `bad mixture of experts: ${nUsed} used of ${nExperts} experts`);
  if (a !== "llama" && !qwenMoE)
    throw new ModelFileError(g.path, `experts in a ${a} model are not supported`);
  const expertFfnDim = qwenMoE
    ? g.getNumber(k("expert_feed_forward_length"), Math.floor(ffnDim / nUsed))
    : ffnDim;
  const moe: MoEConfig = { nExperts, nUsed, expertFfnDim, normalize: a !== "qwen2moe" };
  if (a === "qwen2moe") moe.sharedFfnDim = g.getNumber(k("expert_shared_feed_forward_length"), ffnDim);
  return moe;
}

/**
 * Which layers use the sliding window, as llama.cpp's set_swa_pattern reads
 * `attention.sliding_window_pattern`: a period n makes every layer but each n-th (il % n < n - 1)
 * a sliding one (default: Gemma 2's 2, Gemma 3's 6); an array gives each layer's flag.
 */
function swaLayers(g: GGUFFile, key: string, nLayers: number, defaultPeriod: number): boolean[] {
  const v = g.get(key);
  if (v !== undefined && typeof v === "object" && "length" in v) {
    const flags = Array.from(v as ArrayLike<unknown>, (x) => Boolean(x));
    if (flags.length !== nLayers)
      throw new ModelFileError(g.path, `${key} has ${flags.length} entries for ${nLayers} layers`);
    return flags;
  }
  const n = g.getNumber(key, defaultPeriod);
  return Array.from({ length: nLayers }, (_, il) => n === 0 || il % n < n - 1);
}
