import { ModelFileError } from "../errors.js";
import type { GGUFFile } from "../gguf/reader.js";
import { SUPPORTED_WEIGHT_TYPES, typeName } from "../gguf/types.js";
import type { WeightMatrix } from "../kernels/kernels.js";
import { dequantize, isSupportedType, rowBytes } from "../quant/index.js";
import type { ModelConfig } from "./config.js";

/** One transformer block's weights. Vectors are float32; matrices keep their file type. */
export interface LayerWeights {
  attnNorm: Float32Array;
  wq: WeightMatrix;
  wk: WeightMatrix;
  wv: WeightMatrix;
  wo: WeightMatrix;
  bq?: Float32Array;
  bk?: Float32Array;
  bv?: Float32Array;
  qNorm?: Float32Array;
  kNorm?: Float32Array;
  ffnNorm: Float32Array;
  wGate: WeightMatrix;
  wUp: WeightMatrix;
  wDown: WeightMatrix;
  /** Gemma 2/3: RMS norms on the attention and feed-forward outputs. */
  attnPostNorm?: Float32Array;
  ffnPostNorm?: Float32Array;
}

export interface ModelWeights {
  tokenEmbd: WeightMatrix;
  layers: LayerWeights[];
  outputNorm: Float32Array;
  /** The LM head; the same object as tokenEmbd when embeddings are tied. */
  output: WeightMatrix;
  /** Per-frequency divisors of the RoPE angles: llama 3.1's rope_freqs, or Phi-3's LongRoPE factors. */
  ropeFreqs?: Float32Array;
}

/**
 * Where matrices offered to the kernels' adopt are read: one grow-only buffer, reused from matrix to
 * matrix, since an adopted matrix's bytes are copied into the kernels' memory at once. A fresh
 * buffer per tensor cost a page fault per 4 KiB and the collector's time (about a quarter of
 * loading a 1B-parameter 8-bit model). A matrix not adopted gets a copy of its own (keep).
 */
class ReadBuffer {
  private buf = new Uint8Array(0);

  take(nbytes: number): Uint8Array {
    if (this.buf.length < nbytes) this.buf = new Uint8Array(nbytes);
    return this.buf;
  }

  /** w's bytes as its own array when they still live in this buffer (not adopted). */
  keep(w: WeightMatrix): void {
    if (w.data.buffer === this.buf.buffer) w.data = w.data.slice();
  }
}

function matrix(g: GGUFFile, name: string, rows: number, cols: number, into?: ReadBuffer): WeightMatrix {
  const t = g.tensor(name);
  if (!isSupportedType(t.type)) {
    throw new ModelFileError(
      g.path,
      `tensor ${name} has type ${typeName(t.type)}, which Spindle does not support (supported: ${SUPPORTED_WEIGHT_TYPES.map(typeName).join(", ")})`,
    );
  }
  if (t.dims.length !== 2 || t.dims[0] !== cols || t.dims[1] !== rows) {
    throw new ModelFileError(g.path, `tensor ${name} has shape [${t.dims}], expected [${cols}, ${rows}]`);
  }
  const data = g.readTensor(name, into?.take(t.nbytes));
  return { name, type: t.type, rows, cols, data, rowBytes: rowBytes(t.type, cols) };
}

function vector(g: GGUFFile, name: string, n: number): Float32Array {
  const t = g.tensor(name);
  if (t.nElements !== n)
    throw new ModelFileError(g.path, `tensor ${name} has ${t.nElements} elements, expected ${n}`);
  if (!isSupportedType(t.type))
    throw new ModelFileError(g.path, `tensor ${name} has unsupported type ${typeName(t.type)}`);
  return dequantize(t.type, g.readTensor(name), n, t.dims[0]!);
}

/**
 * Rows [from, from + rows) of a matrix as a matrix of their own, sharing its bytes: how a fused
 * projection (Phi-3's attn_qkv, its ffn_up holding gate and up) becomes the separate matrices the
 * forward pass multiplies. Row r of the result is row from + r of the file's tensor.
 */
function rowSlice(w: WeightMatrix, name: string, from: number, rows: number): WeightMatrix {
  const data = w.data.subarray(from * w.rowBytes, (from + rows) * w.rowBytes);
  return { name, type: w.type, rows, cols: w.cols, data, rowBytes: w.rowBytes };
}

function optionalVector(g: GGUFFile, name: string, n: number): Float32Array | undefined {
  return g.tensors.has(name) ? vector(g, name, n) : undefined;
}

/**
 * Reads every weight the forward pass needs, checking names, shapes and types against the config.
 * `adopt` (the kernels' adopt) is offered each matrix that is only multiplied, as soon as it is
 * read, so the kernels can take it into their memory and the file's bytes need not stay in JS
 * memory as well: the embedding table is not offered (its rows are looked up in JS), nor, when
 * tied, the LM head that shares it.
 */
/** `onLayer(done, total)` is called after each layer is read (and adopted): a load progress bar's ticks. */
export function loadWeights(
  g: GGUFFile,
  c: ModelConfig,
  adopt?: (w: WeightMatrix) => unknown,
  onLayer?: (done: number, total: number) => void,
): ModelWeights {
  const qDim = c.nHeads * c.headDim;
  const kvDim = c.nKVHeads * c.headDim;
  const tokenEmbd = matrix(g, "token_embd.weight", c.vocabSize, c.dim);
  const buffer = adopt && new ReadBuffer();
  /** Offers w to the kernels; its bytes stay readable in JS (a copy of their own) if not taken. */
  const offer = (w: WeightMatrix): void => {
    adopt?.(w);
    buffer?.keep(w);
  };
  const mat = (name: string, rows: number, cols: number): WeightMatrix => {
    const w = matrix(g, name, rows, cols, buffer);
    offer(w);
    return w;
  };
  const layers: LayerWeights[] = [];
  for (let l = 0; l < c.nLayers; l++) {
    const p = `blk.${l}.`;
    // Q, K and V: separate, or fused in attn_qkv (Phi-3) and split here by rows (Q, then K, then V).
    let wq: WeightMatrix;
    let wk: WeightMatrix;
    let wv: WeightMatrix;
    let bq: Float32Array | undefined;
    let bk: Float32Array | undefined;
    let bv: Float32Array | undefined;
    if (g.tensors.has(`${p}attn_qkv.weight`)) {
      const qkv = matrix(g, `${p}attn_qkv.weight`, qDim + 2 * kvDim, c.dim, buffer);
      wq = rowSlice(qkv, `${p}attn_qkv.weight[q]`, 0, qDim);
      wk = rowSlice(qkv, `${p}attn_qkv.weight[k]`, qDim, kvDim);
      wv = rowSlice(qkv, `${p}attn_qkv.weight[v]`, qDim + kvDim, kvDim);
      for (const w of [wq, wk, wv]) offer(w);
      const b = optionalVector(g, `${p}attn_qkv.bias`, qDim + 2 * kvDim);
      bq = b?.subarray(0, qDim);
      bk = b?.subarray(qDim, qDim + kvDim);
      bv = b?.subarray(qDim + kvDim);
    } else {
      wq = mat(`${p}attn_q.weight`, qDim, c.dim);
      wk = mat(`${p}attn_k.weight`, kvDim, c.dim);
      wv = mat(`${p}attn_v.weight`, kvDim, c.dim);
      bq = optionalVector(g, `${p}attn_q.bias`, qDim);
      bk = optionalVector(g, `${p}attn_k.bias`, kvDim);
      bv = optionalVector(g, `${p}attn_v.bias`, kvDim);
    }
    // Gate and up: separate, or both in ffn_up (Phi-3: 2·ffnDim rows, the gate's first, as
    // llama.cpp's swiglu of the fused product takes them) and split here.
    let wGate: WeightMatrix;
    let wUp: WeightMatrix;
    if (!g.tensors.has(`${p}ffn_gate.weight`) && g.tensors.has(`${p}ffn_up.weight`)) {
      const fused = matrix(g, `${p}ffn_up.weight`, 2 * c.ffnDim, c.dim, buffer);
      wGate = rowSlice(fused, `${p}ffn_up.weight[gate]`, 0, c.ffnDim);
      wUp = rowSlice(fused, `${p}ffn_up.weight[up]`, c.ffnDim, c.ffnDim);
      offer(wGate);
      offer(wUp);
    } else {
      wGate = mat(`${p}ffn_gate.weight`, c.ffnDim, c.dim);
      wUp = mat(`${p}ffn_up.weight`, c.ffnDim, c.dim);
    }
    layers.push({
      attnNorm: vector(g, `${p}attn_norm.weight`, c.dim),
      wq,
      wk,
      wv,
      wo: mat(`${p}attn_output.weight`, c.dim, qDim),
      bq,
      bk,
      bv,
      qNorm: optionalVector(g, `${p}attn_q_norm.weight`, c.headDim),
      kNorm: optionalVector(g, `${p}attn_k_norm.weight`, c.headDim),
      ffnNorm: vector(g, `${p}ffn_norm.weight`, c.dim),
      wGate,
      wUp,
      wDown: mat(`${p}ffn_down.weight`, c.dim, c.ffnDim),
      attnPostNorm: c.postNorms ? vector(g, `${p}post_attention_norm.weight`, c.dim) : undefined,
      ffnPostNorm: c.postNorms ? vector(g, `${p}post_ffw_norm.weight`, c.dim) : undefined,
    });
    onLayer?.(l + 1, c.nLayers);
  }
  return {
    tokenEmbd,
    layers,
    outputNorm: vector(g, "output_norm.weight", c.dim),
    output: c.tiedEmbeddings ? tokenEmbd : mat("output.weight", c.vocabSize, c.dim),
    ropeFreqs: ropeFactors(g, c),
  };
}

/**
 * The RoPE frequency factors, if the file has any: llama 3.1's rope_freqs, or Phi-3's LongRoPE
 * pair, of which llama.cpp uses the long factors when the context it serves is longer than the
 * original context (rope.scaling.original_context_length) and the short ones otherwise. Spindle
 * serves the model's whole context (contextLength), so that is the context compared.
 */
function ropeFactors(g: GGUFFile, c: ModelConfig): Float32Array | undefined {
  const n = c.rope.dim / 2;
  const freqs = optionalVector(g, "rope_freqs.weight", n);
  if (freqs) return freqs;
  const long = optionalVector(g, "rope_factors_long.weight", n);
  const short = optionalVector(g, "rope_factors_short.weight", n);
  if ((long === undefined) !== (short === undefined))
    throw new ModelFileError(g.path, "has only one of rope_factors_long and rope_factors_short");
  return c.contextLength > c.ropeOriginalContext ? long : short;
}
