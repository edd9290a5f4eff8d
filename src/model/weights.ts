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
}

export interface ModelWeights {
  tokenEmbd: WeightMatrix;
  layers: LayerWeights[];
  outputNorm: Float32Array;
  /** The LM head; the same object as tokenEmbd when embeddings are tied. */
  output: WeightMatrix;
  ropeFreqs?: Float32Array;
}

function matrix(g: GGUFFile, name: string, rows: number, cols: number): WeightMatrix {
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
  return { name, type: t.type, rows, cols, data: g.readTensor(name), rowBytes: rowBytes(t.type, cols) };
}

function vector(g: GGUFFile, name: string, n: number): Float32Array {
  const t = g.tensor(name);
  if (t.nElements !== n)
    throw new ModelFileError(g.path, `tensor ${name} has ${t.nElements} elements, expected ${n}`);
  if (!isSupportedType(t.type))
    throw new ModelFileError(g.path, `tensor ${name} has unsupported type ${typeName(t.type)}`);
  return dequantize(t.type, g.readTensor(name), n, t.dims[0]!);
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
  const mat = (name: string, rows: number, cols: number): WeightMatrix => {
    const w = matrix(g, name, rows, cols);
    adopt?.(w);
    return w;
  };
  const layers: LayerWeights[] = [];
  for (let l = 0; l < c.nLayers; l++) {
    const p = `blk.${l}.`;
    layers.push({
      attnNorm: vector(g, `${p}attn_norm.weight`, c.dim),
      wq: mat(`${p}attn_q.weight`, qDim, c.dim),
      wk: mat(`${p}attn_k.weight`, kvDim, c.dim),
      wv: mat(`${p}attn_v.weight`, kvDim, c.dim),
      wo: mat(`${p}attn_output.weight`, c.dim, qDim),
      bq: optionalVector(g, `${p}attn_q.bias`, qDim),
      bk: optionalVector(g, `${p}attn_k.bias`, kvDim),
      bv: optionalVector(g, `${p}attn_v.bias`, kvDim),
      qNorm: optionalVector(g, `${p}attn_q_norm.weight`, c.headDim),
      kNorm: optionalVector(g, `${p}attn_k_norm.weight`, c.headDim),
      ffnNorm: vector(g, `${p}ffn_norm.weight`, c.dim),
      wGate: mat(`${p}ffn_gate.weight`, c.ffnDim, c.dim),
      wUp: mat(`${p}ffn_up.weight`, c.ffnDim, c.dim),
      wDown: mat(`${p}ffn_down.weight`, c.dim, c.ffnDim),
    });
    onLayer?.(l + 1, c.nLayers);
  }
  return {
    tokenEmbd,
    layers,
    outputNorm: vector(g, "output_norm.weight", c.dim),
    output: c.tiedEmbeddings ? tokenEmbd : mat("output.weight", c.vocabSize, c.dim),
    ropeFreqs: optionalVector(g, "rope_freqs.weight", c.rope.dim / 2),
  };
}
