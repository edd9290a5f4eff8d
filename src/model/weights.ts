import { ModelFileError } from "../errors.js";
import type { GGUFFile } from "../gguf/reader.js";
import { GGMLType, SUPPORTED_WEIGHT_TYPES, typeName } from "../gguf/types.js";
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
  /** The dense feed-forward block; absent in a mixture-of-experts layer, which has `moe`. */
  wGate?: WeightMatrix;
  wUp?: WeightMatrix;
  wDown?: WeightMatrix;
  moe?: ExpertWeights;
  /** Gemma 2/3: RMS norms on the attention and feed-forward outputs. */
  attnPostNorm?: Float32Array;
  ffnPostNorm?: Float32Array;
}

/**
 * A mixture-of-experts block's weights. The file stacks the experts' matrices in 3-D tensors
 * (ffn_gate_exps, ffn_up_exps: [dim, expertFfn, nExperts]; ffn_down_exps: [expertFfn, dim,
 * nExperts]); expert e's matrix is the e-th contiguous run of rows, so each becomes a matrix of its
 * own here (sharing the tensor's bytes until the kernels adopt it) and the kernels multiply it as
 * any other.
 */
export interface ExpertWeights {
  /** ffn_gate_inp: nExperts × dim, the router's logits. */
  router: WeightMatrix;
  /** Per expert: gate and up (expertFfn × dim), down (dim × expertFfn). */
  gate: WeightMatrix[];
  up: WeightMatrix[];
  down: WeightMatrix[];
  /** Qwen2-MoE's shared expert and its gate (ffn_gate_inp_shexp: 1 × dim, sigmoid of its output). */
  shared?: { gate: WeightMatrix; up: WeightMatrix; down: WeightMatrix; gateInp: WeightMatrix };
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
  if (t.dims.length !== 2 || t.dims[0] !== cols || t.dims[1] !== rows) {
    throw new ModelFileError(g.path, `tensor ${name} has shape [${t.dims}], expected [${cols}, ${rows}]`);
  }
  return matrixOf(g, name, t.type, rows, cols, into);
}

/**
 * The tensor's bytes as a rows × cols matrix of its type, once the type is checked; read into
 * `into` when given (see ReadBuffer).
 */
function matrixOf(
  g: GGUFFile,
  name: string,
  type: GGMLType,
  rows: number,
  cols: number,
  into?: ReadBuffer,
): WeightMatrix {
  if (!isSupportedType(type)) {
    throw new ModelFileError(
      g.path,
      `tensor ${name} has type ${typeName(type)}, which Spindle does not support (supported: ${SUPPORTED_WEIGHT_TYPES.map(typeName).join(", ")})`,
    );
  }
  const data = g.readTensor(name, into?.take(g.tensor(name).nbytes));
  return { name, type, rows, cols, data, rowBytes: rowBytes(type, cols) };
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

/**
 * A stacked 3-D tensor of `n` matrices (dims [cols, rows, n]) as n matrices, each a view of its
 * rows of the tensor's bytes.
 */
function stacked(
  g: GGUFFile,
  name: string,
  n: number,
  rows: number,
  cols: number,
  into?: ReadBuffer,
): WeightMatrix[] {
  const t = g.tensor(name);
  if (t.dims.length !== 3 || t.dims[0] !== cols || t.dims[1] !== rows || t.dims[2] !== n) {
    throw new ModelFileError(
      g.path,
      `tensor ${name} has shape [${t.dims}], expected [${cols}, ${rows}, ${n}]`,
    );
  }
  const all = matrixOf(g, name, t.type, n * rows, cols, into);
  return Array.from({ length: n }, (_, e) => rowSlice(all, `${name}[${e}]`, e * rows, rows));
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
    const ffn = c.moe ? { moe: experts(g, c, p, mat, offer, buffer) } : denseFFN(g, c, p, mat, offer, buffer);
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
      ...ffn,
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

type Mat = (name: string, rows: number, cols: number) => WeightMatrix;

/**
 * A dense feed-forward block. Gate and up: separate, or both in ffn_up (Phi-3: 2·ffnDim rows, the
 * gate's first, as llama.cpp's swiglu of the fused product takes them) and split here.
 */
function denseFFN(
  g: GGUFFile,
  c: ModelConfig,
  p: string,
  mat: Mat,
  offer: (w: WeightMatrix) => void,
  buffer: ReadBuffer | undefined,
): Pick<LayerWeights, "wGate" | "wUp" | "wDown"> {
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
  return { wGate, wUp, wDown: mat(`${p}ffn_down.weight`, c.dim, c.ffnDim) };
}

/** A mixture-of-experts block: the router, each expert's matrices (adopted one by one), the shared expert. */
function experts(
  g: GGUFFile,
  c: ModelConfig,
  p: string,
  mat: Mat,
  offer: (w: WeightMatrix) => void,
  buffer: ReadBuffer | undefined,
): ExpertWeights {
  const m = c.moe!;
  const ff = m.expertFfnDim;
  const split = (name: string, rows: number, cols: number) => {
    const ws = stacked(g, `${p}${name}.weight`, m.nExperts, rows, cols, buffer);
    for (const w of ws) offer(w);
    return ws;
  };
  const e: ExpertWeights = {
    router: mat(`${p}ffn_gate_inp.weight`, m.nExperts, c.dim),
    gate: split("ffn_gate_exps", ff, c.dim),
    up: split("ffn_up_exps", ff, c.dim),
    down: split("ffn_down_exps", c.dim, ff),
  };
  if (m.sharedFfnDim !== undefined) {
    const sf = m.sharedFfnDim;
    const v = vector(g, `${p}ffn_gate_inp_shexp.weight`, c.dim);
    const gateInp: WeightMatrix = {
      name: `${p}ffn_gate_inp_shexp.weight`,
      type: GGMLType.F32,
      rows: 1,
      cols: c.dim,
      data: new Uint8Array(v.buffer, v.byteOffset, v.byteLength),
      rowBytes: 4 * c.dim,
    };
    offer(gateInp);
    e.shared = {
      gate: mat(`${p}ffn_gate_shexp.weight`, sf, c.dim),
      up: mat(`${p}ffn_up_shexp.weight`, sf, c.dim),
      down: mat(`${p}ffn_down_shexp.weight`, c.dim, sf),
      gateInp,
    };
  }
  return e;
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
