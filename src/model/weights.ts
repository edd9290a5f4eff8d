import { ModelFileError } from "../errors.js";
import type { GGUFFile } from "../gguf/reader.js";
import { GGMLType, SUPPORTED_WEIGHT_TYPES, typeName } from "../gguf/types.js";
import type { MatrixSource, WeightMatrix } from "../kernels/kernels.js";
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
 * own here (each read from its rows of the tensor, straight into the kernels' memory when they
 * adopt it) and the kernels multiply it as any other.
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
 * A matrix whose bytes are not read yet: its shape, and where its bytes are in the file. Offered to
 * the kernels' adopt with its source, the bytes go from the file straight into the kernels' memory
 * (no buffer in JS between them: a 1B-parameter 8-bit model's load spent about a quarter of its
 * time on page faults and the collector when each tensor had a fresh buffer, and a reused one
 * still cost a copy and its size in resident memory). Not adopted, it is read into an array of its own.
 */
interface PendingMatrix {
  w: WeightMatrix;
  read: MatrixSource;
}

const UNREAD = new Uint8Array(0);

function matrix(g: GGUFFile, name: string, rows: number, cols: number): WeightMatrix {
  return readNow(pending(g, name, rows, cols));
}

function pending(g: GGUFFile, name: string, rows: number, cols: number): PendingMatrix {
  const t = g.tensor(name);
  if (t.dims.length !== 2 || t.dims[0] !== cols || t.dims[1] !== rows) {
    throw new ModelFileError(g.path, `tensor ${name} has shape [${t.dims}], expected [${cols}, ${rows}]`);
  }
  return pendingOf(g, name, t.type, rows, cols);
}

/** The tensor as a pending rows × cols matrix of its type, once the type is checked. */
function pendingOf(g: GGUFFile, name: string, type: GGMLType, rows: number, cols: number): PendingMatrix {
  if (!isSupportedType(type)) {
    throw new ModelFileError(
      g.path,
      `tensor ${name} has type ${typeName(type)}, which Spindle does not support (supported: ${SUPPORTED_WEIGHT_TYPES.map(typeName).join(", ")})`,
    );
  }
  const w: WeightMatrix = { name, type, rows, cols, data: UNREAD, rowBytes: rowBytes(type, cols) };
  return { w, read: (dst, from) => g.readTensorRange(name, from, dst) };
}

/** The matrix with its bytes read into an array of its own. */
function readNow(p: PendingMatrix): WeightMatrix {
  const data = new Uint8Array(p.w.rows * p.w.rowBytes);
  p.read(data, 0);
  p.w.data = data;
  return p.w;
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
 * Rows [from, from + rows) of a pending matrix as a pending matrix of their own: how a fused
 * projection (Phi-3's attn_qkv, its ffn_up holding gate and up) becomes the separate matrices the
 * forward pass multiplies. Row r of the result is row from + r of the file's tensor.
 */
function rowSlice(p: PendingMatrix, name: string, from: number, rows: number): PendingMatrix {
  const { w, read } = p;
  const start = from * w.rowBytes;
  return {
    w: { name, type: w.type, rows, cols: w.cols, data: UNREAD, rowBytes: w.rowBytes },
    read: (dst, at) => read(dst, start + at),
  };
}

/**
 * A stacked 3-D tensor of `n` matrices (dims [cols, rows, n]) as n pending matrices, each its run
 * of rows of the tensor.
 */
function stacked(g: GGUFFile, name: string, n: number, rows: number, cols: number): PendingMatrix[] {
  const t = g.tensor(name);
  if (t.dims.length !== 3 || t.dims[0] !== cols || t.dims[1] !== rows || t.dims[2] !== n) {
    throw new ModelFileError(
      g.path,
      `tensor ${name} has shape [${t.dims}], expected [${cols}, ${rows}, ${n}]`,
    );
  }
  const all = pendingOf(g, name, t.type, n * rows, cols);
  return Array.from({ length: n }, (_, e) => rowSlice(all, `${name}[${e}]`, e * rows, rows));
}

function optionalVector(g: GGUFFile, name: string, n: number): Float32Array | undefined {
  return g.tensors.has(name) ? vector(g, name, n) : undefined;
}

/**
 * Reads every weight the forward pass needs, checking names, shapes and types against the config.
 * `adopt` (the kernels' adopt) is offered each matrix that is only multiplied, with its source in
 * the file, so the kernels read it into their memory and its bytes never live in JS memory: the
 * embedding table is not offered (its rows are looked up in JS), nor, when tied, the LM head that
 * shares it. `onLayer(done, total)` is called after each layer is read (and adopted): a load
 * progress bar's ticks.
 */
export function loadWeights(
  g: GGUFFile,
  c: ModelConfig,
  adopt?: (w: WeightMatrix, source?: MatrixSource) => boolean,
  onLayer?: (done: number, total: number) => void,
): ModelWeights {
  const qDim = c.nHeads * c.headDim;
  const kvDim = c.nKVHeads * c.headDim;
  const tokenEmbd = matrix(g, "token_embd.weight", c.vocabSize, c.dim);
  /** Offers the pending matrix to the kernels; read into an array of its own if they do not take it. */
  const offer = (p: PendingMatrix): WeightMatrix => (adopt?.(p.w, p.read) ? p.w : readNow(p));
  const mat = (name: string, rows: number, cols: number): WeightMatrix => offer(pending(g, name, rows, cols));
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
      const qkv = pending(g, `${p}attn_qkv.weight`, qDim + 2 * kvDim, c.dim);
      wq = offer(rowSlice(qkv, `${p}attn_qkv.weight[q]`, 0, qDim));
      wk = offer(rowSlice(qkv, `${p}attn_qkv.weight[k]`, qDim, kvDim));
      wv = offer(rowSlice(qkv, `${p}attn_qkv.weight[v]`, qDim + kvDim, kvDim));
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
    const ffn = c.moe ? { moe: experts(g, c, p, mat, offer) } : denseFFN(g, c, p, mat, offer);
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
type Offer = (p: PendingMatrix) => WeightMatrix;

/**
 * A dense feed-forward block. Gate and up: separate, or both in ffn_up (Phi-3: 2·ffnDim rows, the
 * gate's first, as llama.cpp's swiglu of the fused product takes them) and split here.
 */
function denseFFN(
  g: GGUFFile,
  c: ModelConfig,
  p: string,
  mat: Mat,
  offer: Offer,
): Pick<LayerWeights, "wGate" | "wUp" | "wDown"> {
  let wGate: WeightMatrix;
  let wUp: WeightMatrix;
  if (!g.tensors.has(`${p}ffn_gate.weight`) && g.tensors.has(`${p}ffn_up.weight`)) {
    const fused = pending(g, `${p}ffn_up.weight`, 2 * c.ffnDim, c.dim);
    wGate = offer(rowSlice(fused, `${p}ffn_up.weight[gate]`, 0, c.ffnDim));
    wUp = offer(rowSlice(fused, `${p}ffn_up.weight[up]`, c.ffnDim, c.ffnDim));
  } else {
    wGate = mat(`${p}ffn_gate.weight`, c.ffnDim, c.dim);
    wUp = mat(`${p}ffn_up.weight`, c.ffnDim, c.dim);
  }
  return { wGate, wUp, wDown: mat(`${p}ffn_down.weight`, c.dim, c.ffnDim) };
}

/** A mixture-of-experts block: the router, each expert's matrices (adopted one by one), the shared expert. */
function experts(g: GGUFFile, c: ModelConfig, p: string, mat: Mat, offer: Offer): ExpertWeights {
  const m = c.moe!;
  const ff = m.expertFfnDim;
  const split = (name: string, rows: number, cols: number) =>
    stacked(g, `${p}${name}.weight`, m.nExperts, rows, cols).map(offer);
  const e: ExpertWeights = {
    router: mat(`${p}ffn_gate_inp.weight`, m.nExperts, c.dim),
    gate: split("ffn_gate_exps", ff, c.dim),
    up: split("ffn_up_exps", ff, c.dim),
    down: split("ffn_down_exps", c.dim, ff),
  };
  if (m.sharedFfnDim !== undefined) {
    const sf = m.sharedFfnDim;
    const v = vector(g, `${p}ffn_gate_inp_shexp.weight`, c.dim);
    const gateInp = offer({
      w: {
        name: `${p}ffn_gate_inp_shexp.weight`,
        type: GGMLType.F32,
        rows: 1,
        cols: c.dim,
        data: UNREAD,
        rowBytes: 4 * c.dim,
      },
      read: (dst, from) => dst.set(new Uint8Array(v.buffer, v.byteOffset + from, dst.length)),
    });
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
