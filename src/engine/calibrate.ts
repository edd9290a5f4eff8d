import { SpindleError } from "../errors.js";
import { DEFAULT_BLOCK_SIZE } from "../model/kv-cache.js";
import type { Model } from "../model/model.js";
import { Sampler } from "../sampling/sampler.js";
import { ModelRunner, type RunnerItem } from "./runner.js";
import { type SimCost, simStepMs } from "./sim-runner.js";

/**
 * Fits the simulated runner's cost model to the real runner: times a set of
 * step shapes (single prefills of several lengths, decode batches of several
 * sizes at several context lengths, and mixes), then solves a non-negative
 * least-squares problem for the four coefficients of `simStepMs`.
 *
 * The fit minimises *relative* error (each point's residual is divided by its
 * measured time): step times span three orders of magnitude (a one-sequence
 * decode against a 256-token prefill), and with plain least squares the few
 * big prefill points decide the fit while the decode steps, which are most of
 * a simulation's steps, come out wrong by a factor of two whenever a big point
 * is noisy.
 */

export interface CalibrationPoint {
  prefillTokens: number;
  decodeSeqs: number;
  context: number;
  measuredMs: number;
}

export interface Calibration {
  cost: SimCost;
  points: (CalibrationPoint & { fittedMs: number })[];
  /** Mean absolute relative error of the fit over the points. */
  relError: number;
  /** KV blocks the calibration runner allocated (just what the largest shape needs). */
  kvBlocks: number;
}

export interface CalibrationShape {
  /** Tokens of one sequence's prefill, from position 0 (0: none). */
  prefill: number;
  /** Sequences decoding one token each, at position `context`. */
  decode: number;
  context: number;
}

export const CALIBRATION_SHAPES: readonly CalibrationShape[] = [
  { prefill: 16, decode: 0, context: 0 },
  { prefill: 64, decode: 0, context: 0 },
  { prefill: 128, decode: 0, context: 0 },
  { prefill: 256, decode: 0, context: 0 },
  { prefill: 0, decode: 1, context: 64 },
  { prefill: 0, decode: 4, context: 64 },
  { prefill: 0, decode: 8, context: 64 },
  { prefill: 0, decode: 16, context: 64 },
  { prefill: 0, decode: 8, context: 512 },
  { prefill: 0, decode: 1, context: 1024 },
  { prefill: 64, decode: 8, context: 128 },
];

/** Whether a shape's positions fit in a model's context. */
export function shapeFits(shape: CalibrationShape, contextLength: number): boolean {
  return shape.prefill <= contextLength && (shape.decode === 0 || shape.context + 1 <= contextLength);
}

/** KV blocks a shape's step touches (every sequence gets its own blocks). */
function blocksFor(shape: CalibrationShape, blockSize: number): number {
  const prefill = Math.ceil(shape.prefill / blockSize);
  return prefill + shape.decode * Math.ceil((shape.context + 1) / blockSize);
}

function itemsFor(shape: CalibrationShape, runner: ModelRunner): RunnerItem[] {
  const { blockSize, vocabSize: vocab } = runner;
  const sampler = new Sampler({ temperature: 0 }, vocab, runner.samplerOps);
  const items: RunnerItem[] = [];
  let nextBlock = 0;
  const table = (tokens: number) => Array.from({ length: Math.ceil(tokens / blockSize) }, () => nextBlock++);
  const toks = (n: number) => Array.from({ length: n }, (_, i) => 1 + (i % (vocab - 1)));
  if (shape.prefill > 0) {
    items.push({
      tokens: toks(shape.prefill),
      pos: 0,
      blockTable: table(shape.prefill),
      logits: "last",
      sampler,
      history: [],
      seqKey: 0,
    });
  }
  for (let s = 0; s < shape.decode; s++) {
    items.push({
      tokens: [5 % vocab],
      pos: shape.context,
      blockTable: table(shape.context + 1),
      logits: "last",
      sampler,
      history: [],
      seqKey: s + 1,
    });
  }
  return items;
}

/**
 * Solves the square system a·x = b by Gaussian elimination with partial pivoting;
 * undefined when it is (numerically) singular. `a` is expected to have a unit diagonal scale.
 */
function solve(a: number[][], b: number[]): number[] | undefined {
  const n = b.length;
  const m = a.map((row, i) => [...row, b[i]!]);
  for (let c = 0; c < n; c++) {
    let p = c;
    for (let r = c + 1; r < n; r++) if (Math.abs(m[r]![c]!) > Math.abs(m[p]![c]!)) p = r;
    [m[c], m[p]] = [m[p]!, m[c]!];
    const d = m[c]![c]!;
    if (!(Math.abs(d) > 1e-10)) return undefined;
    for (let r = c + 1; r < n; r++) {
      const f = m[r]![c]! / d;
      for (let k = c; k <= n; k++) m[r]![k]! -= f * m[c]![k]!;
    }
  }
  const x = new Array<number>(n).fill(0);
  for (let r = n - 1; r >= 0; r--) {
    let s = m[r]![n]!;
    for (let k = r + 1; k < n; k++) s -= m[r]![k]! * x[k]!;
    x[r] = s / m[r]![r]!;
  }
  return x;
}

/** The step a calibration point stands for, as the cost model sees it. */
function pointItems(p: CalibrationPoint) {
  return [
    ...(p.prefillTokens > 0 ? [{ tokens: new Array<number>(p.prefillTokens).fill(0), pos: 0 }] : []),
    ...Array.from({ length: p.decodeSeqs }, () => ({ tokens: [0], pos: p.context })),
  ];
}

const ATTENDED_ONLY: SimCost = { baseMs: 0, perPrefillTokenMs: 0, perDecodeSeqMs: 0, perAttendedTokenMs: 1 };

/**
 * Non-negative least squares for step = base + b·prefill + c·decode + d·attended, each point's
 * residual relative to its measured time. With four unknowns the exact NNLS solution is found by
 * trying every subset of coefficients allowed to be non-zero: the optimum is the unconstrained
 * fit on its own support, so it is the best of the subset fits that come out non-negative.
 * Columns are scaled to unit norm first, which keeps the normal equations well conditioned.
 */
export function fitCost(points: readonly CalibrationPoint[]): SimCost {
  if (points.length === 0) throw new SpindleError("no calibration points to fit");
  const rows = points.map((p) => {
    const w = 1 / Math.max(p.measuredMs, 1e-9);
    const f = [1, p.prefillTokens, p.decodeSeqs, simStepMs(ATTENDED_ONLY, pointItems(p))];
    return { f: f.map((v) => v * w), t: p.measuredMs * w };
  });
  const scale = [0, 1, 2, 3].map((j) => Math.sqrt(rows.reduce((s, r) => s + r.f[j]! ** 2, 0)));
  const x = rows.map((r) => r.f.map((v, j) => (scale[j]! > 0 ? v / scale[j]! : 0)));
  const residual = (coef: number[]) =>
    rows.reduce((s, r, k) => s + (x[k]!.reduce((a, v, j) => a + v * coef[j]!, 0) - r.t) ** 2, 0);

  let best = [0, 0, 0, 0];
  let bestResidual = residual(best);
  for (let mask = 1; mask < 16; mask++) {
    const cols = [0, 1, 2, 3].filter((j) => mask & (1 << j));
    if (cols.some((j) => scale[j] === 0)) continue;
    const ata = cols.map((i) => cols.map((j) => x.reduce((s, r) => s + r[i]! * r[j]!, 0)));
    const atb = cols.map((i) => x.reduce((s, r, k) => s + r[i]! * rows[k]!.t, 0));
    const sol = solve(ata, atb);
    if (!sol || sol.some((v) => !(v >= 0))) continue;
    const coef = [0, 0, 0, 0];
    cols.forEach((j, i) => {
      coef[j] = sol[i]!;
    });
    const r = residual(coef);
    if (r < bestResidual) {
      best = coef;
      bestResidual = r;
    }
  }
  const [base, pre, dec, att] = best.map((v, j) => (scale[j]! > 0 ? v / scale[j]! : 0));
  return { baseMs: base!, perPrefillTokenMs: pre!, perDecodeSeqMs: dec!, perAttendedTokenMs: att! };
}

/** Measures the real runner on the standard shapes (median of `repeats`) and fits the cost model. */
export function calibrate(model: Model, repeats = 3): Calibration {
  if (!(Number.isInteger(repeats) && repeats >= 1)) {
    throw new SpindleError(`repeats must be a positive integer, got ${repeats}`);
  }
  const ctx = model.config.contextLength;
  const shapes = CALIBRATION_SHAPES.filter((s) => shapeFits(s, ctx));
  if (shapes.length < 4) {
    throw new SpindleError(
      `the model's context (${ctx} tokens) is too short to calibrate: at least 65 tokens are needed`,
    );
  }
  // Only what the largest step touches: the KV pool is allocated up front, and sizing it for
  // thousands of tokens per sequence would take gigabytes on a real model.
  const kvBlocks = Math.max(...shapes.map((s) => blocksFor(s, DEFAULT_BLOCK_SIZE)));
  const runner = new ModelRunner(model, kvBlocks, DEFAULT_BLOCK_SIZE);
  const points: CalibrationPoint[] = [];
  for (const shape of shapes) {
    const items = itemsFor(shape, runner);
    runner.execute(items); // warm-up
    const times: number[] = [];
    for (let r = 0; r < repeats; r++) {
      const t0 = performance.now();
      runner.execute(items);
      times.push(performance.now() - t0);
    }
    times.sort((a, b) => a - b);
    points.push({
      prefillTokens: shape.prefill,
      decodeSeqs: shape.decode,
      context: shape.context,
      measuredMs: times[Math.floor(times.length / 2)]!,
    });
  }
  const cost = fitCost(points);
  const fitted = points.map((p) => ({ ...p, fittedMs: simStepMs(cost, pointItems(p)) }));
  const relError =
    fitted.reduce((s, p) => s + Math.abs(p.fittedMs - p.measuredMs) / Math.max(p.measuredMs, 1e-9), 0) /
    fitted.length;
  return { cost, points: fitted, relError, kvBlocks };
}
