import { ModelFileError } from "../errors.js";
import type { GGUFFile } from "../gguf/reader.js";
import type { RopeParams } from "../kernels/kernels.js";
import { type PoolingType, poolingFromGGUF } from "./pooling.js";

/** Architectures the forward pass implements: the Llama family. */
export const SUPPORTED_ARCHITECTURES = ["llama", "qwen2", "qwen3"] as const;
export type Architecture = (typeof SUPPORTED_ARCHITECTURES)[number];

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
  ffnDim: number;
  contextLength: number;
  rmsEps: number;
  rope: RopeParams;
  /** Q/K/V projections have biases (qwen2). */
  qkvBias: boolean;
  /** Per-head RMS norm on Q and K before RoPE (qwen3). */
  qkNorm: boolean;
  /** The output projection reuses token_embd (no output.weight in the file). */
  tiedEmbeddings: boolean;
  /**
   * How embeddings pool the final hidden states (`<arch>.pooling_type`, mean when absent);
   * undefined when the file asks for a pooling Spindle does not compute (rank).
   */
  pooling: PoolingType | undefined;
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
  return {
    arch: a,
    name: g.getString("general.name", a),
    vocabSize,
    dim,
    nLayers: g.getNumber(k("block_count")),
    nHeads,
    nKVHeads,
    headDim,
    ffnDim: g.getNumber(k("feed_forward_length")),
    contextLength: g.getNumber(k("context_length"), 2048),
    rmsEps: g.getNumber(k("attention.layer_norm_rms_epsilon"), 1e-5),
    rope: {
      style: a === "llama" ? "normal" : "neox",
      dim: ropeDim,
      freqBase: g.getNumber(k("rope.freq_base"), 10000),
      freqScale,
    },
    qkvBias: g.tensors.has("blk.0.attn_q.bias"),
    qkNorm: g.tensors.has("blk.0.attn_q_norm.weight"),
    tiedEmbeddings: !g.tensors.has("output.weight"),
    pooling: poolingFromGGUF(g.has(k("pooling_type")) ? g.getNumber(k("pooling_type")) : undefined),
  };
}
