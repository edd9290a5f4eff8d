import { SpindleError } from "../errors.js";
import { Rng } from "../sampling/rng.js";

/**
 * The weights of a model that copies its prompt, for `synth-model --copier`: random weights never
 * repeat their input, so they cannot show what speculation gains where output copies (an edit, a
 * quote, an extraction). Written by hand into a llama-shaped file, an induction circuit of two layers
 * (the mechanism trained models learn for in-context copying):
 *
 * - every token has a random ±1 code; the embedding holds it (the C band of the residual) and a
 *   constant 1 (the last dimension);
 * - layer 0: in each KV group, one query head attends exactly one position back and one two back
 *   (their queries are the key's constant turned back by one or two RoPE steps, so the score peaks
 *   at that distance) and writes the code found there into the P1 or P2 band;
 * - layer 1: in each KV group one head matches its query [C, P1] (tokens i, i-1) against the keys
 *   [P1, P2] (tokens j-1, j-2) of every earlier position, on head dimensions RoPE barely turns (a
 *   RoPE base of 1e30), so it attends where the last two tokens occurred before and adds the code of
 *   the token that followed them, three times over, to C;
 * - the LM head scores every token's code against C.
 *
 * Each KV group works on its own slice of the code (a third of it with 3 KV heads), so a group that
 * attends wrongly is outvoted. The position code singles out one and two back at every distance up
 * to MAX_CONTEXT (its smallest margin there is 0.23 of a unit, times the scales below: about 30
 * logits), and over that many positions the matching dimensions turn by under 0.1 radian.
 * Every other layer computes as the shape does with random weights but writes nothing (zero output
 * projections), so a step costs what the shape costs. Each hand-made matrix row has one nonzero or
 * only ±c entries, so Q8_0 stores it exactly.
 */
export interface CopierShape {
  dim: number;
  nLayers: number;
  nHeads: number;
  nKVHeads: number;
  headDim: number;
  contextLength: number;
}

export interface CopierPlan {
  /** rope.freq_base: pairs 0–3 turn fast enough to find a position, pairs 5 on barely turn. */
  ropeFreqBase: number;
  /** The `size` values a tensor gets instead of random ones; undefined: random. */
  weight(name: string, size: number): Float32Array | undefined;
}

const ROPE_BASE = 1e30;
const MAX_CONTEXT = 4096;
const HEAD_DIM = 64;
/** RoPE pairs that carry position in layer 0 (angles 1, 0.115, 0.0133, 0.00154 per position). */
const POSITION_PAIRS = 4;
/** The first head dimension RoPE barely turns (pair 5: 2e-5 per position). */
const FREE_DIM = 10;
/** Layer 0: query scale × key value (score = their product × Σ cos(θ·Δ) / √64). */
const Q0 = 262;
const K0 = 4;
/** Layer 1: query and key scales of the code matches. */
const Q1 = 280;
const K1 = 8;
/** How strongly layer 1 writes the next token's code, against the current one's 1. */
const NEXT = 3;
/** LM head scale. */
const HEAD = 3;

export function copierPlan(s: CopierShape, nVocab: number, seed: number): CopierPlan {
  const { dim, nHeads, nKVHeads: nKV, headDim } = s;
  const gqa = nHeads / nKV;
  if (headDim !== HEAD_DIM || gqa < 2 || s.nLayers < 2)
    throw new SpindleError(
      `--copier needs head size ${HEAD_DIM}, at least 2 query heads per KV head and 2 layers (got ${headDim}, ${gqa}, ${s.nLayers})`,
    );
  // The residual: C, P1 and P2 bands of nKV slices each, then the constant in the last dimension.
  const slice = Math.min(headDim, Math.floor((dim - 1) / (3 * nKV)));
  const match = Math.min(slice, Math.floor((headDim - FREE_DIM) / 2));
  const code = slice * nKV;
  const C = 0;
  const P1 = code;
  const P2 = 2 * code;
  const ONE = dim - 1;
  if (s.contextLength > MAX_CONTEXT)
    throw new SpindleError(
      `--copier holds its positions apart up to ${MAX_CONTEXT} tokens (context ${s.contextLength})`,
    );
  if (match < 16)
    throw new SpindleError(`--copier needs a wider model (dim ${dim} leaves ${slice} per KV head)`);
  const qDim = nHeads * headDim;
  const kvDim = nKV * headDim;
  const rng = new Rng(seed * 7919 + 1);
  const unit = 1 / Math.sqrt(code);
  const codes = new Float32Array(nVocab * code);
  for (let i = 0; i < codes.length; i++) codes[i] = rng.nextU32() & 1 ? unit : -unit;
  const theta = (f: number) => ROPE_BASE ** ((-2 * f) / headDim);

  const matrix = (
    rows: number,
    cols: number,
    fill: (set: (r: number, c: number, v: number) => void) => void,
  ) => {
    const m = new Float32Array(rows * cols);
    fill((r, c, v) => {
      m[r * cols + c] = v;
    });
    return m;
  };
  /** Rows of the LM head or embedding: each token's code scaled, plus an optional constant. */
  const vocabRows = (scale: number, one: number) =>
    matrix(nVocab, dim, (set) => {
      for (let v = 0; v < nVocab; v++) {
        for (let k = 0; k < code; k++) set(v, C + k, scale * codes[v * code + k]!);
        if (one !== 0) set(v, ONE, one);
      }
    });
  /** V of both layers: each KV head reads its slice of the token's own code. */
  const values = () =>
    matrix(kvDim, dim, (set) => {
      for (let g = 0; g < nKV; g++)
        for (let k = 0; k < slice; k++) set(g * headDim + k, C + g * slice + k, 1);
    });
  /** RMS norm weight that undoes the norm of a residual holding `units` unit-norm parts. */
  const norm = (units: number) => new Float32Array(dim).fill(Math.sqrt(units / dim));

  const made: Record<string, () => Float32Array> = {
    "token_embd.weight": () => vocabRows(1, 1),
    "output.weight": () => vocabRows(HEAD, 0),
    "blk.0.attn_norm.weight": () => norm(2),
    "blk.0.attn_q.weight": () =>
      matrix(qDim, dim, (set) => {
        for (let g = 0; g < nKV; g++)
          for (const back of [1, 2]) {
            const h = g * gqa + back - 1;
            for (let f = 0; f < POSITION_PAIRS; f++) {
              set(h * headDim + 2 * f, ONE, Q0 * Math.cos(theta(f) * back));
              set(h * headDim + 2 * f + 1, ONE, -Q0 * Math.sin(theta(f) * back));
            }
          }
      }),
    "blk.0.attn_k.weight": () =>
      matrix(kvDim, dim, (set) => {
        for (let g = 0; g < nKV; g++)
          for (let f = 0; f < POSITION_PAIRS; f++) set(g * headDim + 2 * f, ONE, K0);
      }),
    "blk.0.attn_v.weight": values,
    "blk.0.attn_output.weight": () =>
      matrix(dim, qDim, (set) => {
        for (let g = 0; g < nKV; g++)
          for (let k = 0; k < slice; k++) {
            set(P1 + g * slice + k, g * gqa * headDim + k, 1);
            set(P2 + g * slice + k, (g * gqa + 1) * headDim + k, 1);
          }
      }),
    "blk.1.attn_norm.weight": () => norm(4),
    "blk.1.attn_q.weight": () =>
      matrix(qDim, dim, (set) => {
        for (let g = 0; g < nKV; g++)
          for (let m = 0; m < match; m++) {
            const h = g * gqa;
            set(h * headDim + FREE_DIM + m, C + g * slice + m, Q1);
            set(h * headDim + FREE_DIM + match + m, P1 + g * slice + m, Q1);
          }
      }),
    "blk.1.attn_k.weight": () =>
      matrix(kvDim, dim, (set) => {
        for (let g = 0; g < nKV; g++)
          for (let m = 0; m < match; m++) {
            set(g * headDim + FREE_DIM + m, P1 + g * slice + m, K1);
            set(g * headDim + FREE_DIM + match + m, P2 + g * slice + m, K1);
          }
      }),
    "blk.1.attn_v.weight": values,
    "blk.1.attn_output.weight": () =>
      matrix(dim, qDim, (set) => {
        for (let g = 0; g < nKV; g++)
          for (let k = 0; k < slice; k++) set(C + g * slice + k, g * gqa * headDim + k, NEXT);
      }),
    "output_norm.weight": () => new Float32Array(dim).fill(1),
  };
  return {
    ropeFreqBase: ROPE_BASE,
    weight(name, size) {
      const m = made[name]?.();
      if (m && m.length !== size) throw new Error(`copier: ${name} has ${m.length} values, not ${size}`);
      // Every other layer's attention and feed-forward, and the first two layers' feed-forward, write nothing.
      if (!m && /^blk\.\d+\.(attn_output|ffn_down)\.weight$/.test(name)) return new Float32Array(size);
      return m;
    },
  };
}
