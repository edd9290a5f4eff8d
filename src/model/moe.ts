import type { Kernels, MatmulItem, WeightMatrix } from "../kernels/kernels.js";
import type { MoEConfig } from "./config.js";
import type { ExpertWeights } from "./weights.js";

/**
 * A mixture-of-experts feed-forward block over a batch, as llama.cpp's build_moe_ffn computes it
 * (softmax gating): each token's router logits are softmaxed over all experts, the `nUsed` most
 * probable experts are chosen, and the token's output is the sum of their outputs weighted by their
 * probabilities (divided first by their sum when the config normalizes).
 *
 * The batch is grouped by expert: the rows routed to expert e are gathered into one block, its
 * gate/up/down matmuls run once over that block (all chosen experts' in one kernel call,
 * matmulList), and the results are added back to their rows with their weights. So each expert's
 * weights are read once per step, however many tokens chose it, and experts no token chose are not
 * read at all. A token's output depends only on its own row
 * (the matmuls are batch-invariant and its experts are added in expert order), so a sequence's
 * logits never depend on its batch mates.
 */

/** Which rows each expert runs, with their weights: a batch's routing, grouped by expert. */
export interface Routing {
  /** Expert e's entries are [start[e], start[e + 1]) of rows and weights. */
  start: Int32Array;
  /** Row (token of the batch) of each entry, in batch order within an expert. */
  rows: Int32Array;
  weights: Float32Array;
}

/** llama.cpp clamps the sum of the chosen probabilities to this (the smallest normal F16) before dividing by it. */
const MIN_WEIGHT_SUM = 6.103515625e-5;

/**
 * Routes `n` tokens from their router logits (n × nExperts): softmax, top nUsed (the larger
 * probability first; the lower expert on a tie), optional normalisation, then grouped by expert.
 */
export function route(logits: Float32Array, n: number, m: MoEConfig): Routing {
  const E = m.nExperts;
  const K = m.nUsed;
  const chosen = new Int32Array(n * K);
  const chosenW = new Float32Array(n * K);
  const probs = new Float64Array(E);
  const taken = new Uint8Array(E);
  const start = new Int32Array(E + 1);
  for (let t = 0; t < n; t++) {
    const row = logits.subarray(t * E, (t + 1) * E);
    let max = Number.NEGATIVE_INFINITY;
    for (let e = 0; e < E; e++) max = Math.max(max, row[e]!);
    let sum = 0;
    for (let e = 0; e < E; e++) {
      probs[e] = Math.exp(row[e]! - max);
      sum += probs[e]!;
    }
    taken.fill(0);
    let chosenSum = 0;
    for (let j = 0; j < K; j++) {
      let best = -1;
      for (let e = 0; e < E; e++) if (!taken[e] && (best < 0 || probs[e]! > probs[best]!)) best = e;
      taken[best] = 1;
      const p = Math.fround(probs[best]! / sum);
      chosen[t * K + j] = best;
      chosenW[t * K + j] = p;
      chosenSum += p;
      start[best + 1]!++;
    }
    if (m.normalize) {
      const s = Math.max(Math.fround(chosenSum), MIN_WEIGHT_SUM);
      for (let j = 0; j < K; j++) chosenW[t * K + j] = chosenW[t * K + j]! / s;
    }
  }
  for (let e = 0; e < E; e++) start[e + 1]! += start[e]!;
  const fill = start.slice(0, E);
  const rows = new Int32Array(n * K);
  const weights = new Float32Array(n * K);
  for (let t = 0; t < n; t++) {
    for (let j = 0; j < K; j++) {
      const at = fill[chosen[t * K + j]!]!++;
      rows[at] = t;
      weights[at] = chosenW[t * K + j]!;
    }
  }
  return { start, rows, weights };
}

/** Scratch buffers in the kernels' memory, by name (the forward pass's). */
export type ScratchOf = (name: string, n: number) => Float32Array;

/**
 * out (n × dim) = the mixture-of-experts block applied to xn (n × dim, the normed activations),
 * plus, for Qwen2-MoE, its shared expert weighted by sigmoid(xn · gateInp).
 */
export function moeFFN(
  k: Kernels,
  scratch: ScratchOf,
  m: MoEConfig,
  w: ExpertWeights,
  xn: Float32Array,
  n: number,
  dim: number,
  out: Float32Array,
): void {
  const logits = scratch("moe.router", n * m.nExperts);
  k.matmul(w.router, xn, n, logits);
  const r = route(logits, n, m);
  out.fill(0, 0, n * dim);
  const ff = m.expertFfnDim;
  // Every entry's row, grouped by expert: each expert's tokens are one block of rows.
  const entries = r.start[m.nExperts]!;
  const xg = scratch("moe.x", entries * dim);
  const gate = scratch("moe.gate", entries * ff);
  const up = scratch("moe.up", entries * ff);
  const y = scratch("moe.y", entries * dim);
  for (let i = 0; i < entries; i++) {
    const row = r.rows[i]!;
    xg.set(xn.subarray(row * dim, (row + 1) * dim), i * dim);
  }
  const chosen: { e: number; from: number; count: number }[] = [];
  for (let e = 0; e < m.nExperts; e++) {
    const from = r.start[e]!;
    const count = r.start[e + 1]! - from;
    if (count > 0) chosen.push({ e, from, count });
  }
  const rowsOf = (a: Float32Array, width: number, from: number, count: number) =>
    a.subarray(from * width, (from + count) * width);
  // All chosen experts' gate and up projections in one call, the SwiGLU over all of them, then
  // all their down projections in one call.
  matmulAll(
    k,
    chosen.flatMap(({ e, from, count }) => {
      const x = rowsOf(xg, dim, from, count);
      return [
        { w: w.gate[e]!, x, nTokens: count, out: rowsOf(gate, ff, from, count) },
        { w: w.up[e]!, x, nTokens: count, out: rowsOf(up, ff, from, count) },
      ];
    }),
  );
  k.swiglu(gate, up, entries * ff, gate);
  matmulAll(
    k,
    chosen.map(({ e, from, count }) => ({
      w: w.down[e]!,
      x: rowsOf(gate, ff, from, count),
      nTokens: count,
      out: rowsOf(y, dim, from, count),
    })),
  );
  // Each token's experts added in expert order (the entries' order).
  for (let i = 0; i < entries; i++) {
    const o = r.rows[i]! * dim;
    const wt = r.weights[i]!;
    const yo = i * dim;
    for (let d = 0; d < dim; d++) out[o + d] = out[o + d]! + wt * y[yo + d]!;
  }
  if (w.shared) {
    const sf = w.shared.gate.rows;
    const sg = scratch("moe.shared.gate", n * sf);
    const su = scratch("moe.shared.up", n * sf);
    const gl = scratch("moe.shared.logit", n);
    swigluFFN(k, w.shared.gate, w.shared.up, w.shared.down, xn, n, sg, su, y);
    k.matmul(w.shared.gateInp, xn, n, gl);
    for (let t = 0; t < n; t++) {
      const s = 1 / (1 + Math.exp(-gl[t]!));
      const o = t * dim;
      for (let d = 0; d < dim; d++) out[o + d] = out[o + d]! + s * y[o + d]!;
    }
  }
}

/** The matmuls of a list, in one call where the kernels take lists. */
function matmulAll(k: Kernels, items: readonly MatmulItem[]): void {
  if (k.matmulList) k.matmulList(items);
  else for (const it of items) k.matmul(it.w, it.x, it.nTokens, it.out);
}

/** y = down · (silu(gate · x) ⊙ (up · x)) over n rows of x. */
function swigluFFN(
  k: Kernels,
  wGate: WeightMatrix,
  wUp: WeightMatrix,
  wDown: WeightMatrix,
  x: Float32Array,
  n: number,
  gate: Float32Array,
  up: Float32Array,
  y: Float32Array,
): void {
  if (k.matmulShared) k.matmulShared([wGate, wUp], x, n, [gate, up]);
  else {
    k.matmul(wGate, x, n, gate);
    k.matmul(wUp, x, n, up);
  }
  k.swiglu(gate, up, n * wGate.rows, gate);
  k.matmul(wDown, gate, n, y);
}
