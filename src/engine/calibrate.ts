import type { Model } from "../model/model.js";
import { Sampler } from "../sampling/sampler.js";
import { ModelRunner, type RunnerItem } from "./runner.js";
import { type SimCost, simStepMs } from "./sim-runner.js";

/**
 * Fits the simulated runner's cost model to the real runner: times a set of
 * step shapes (single prefills of several lengths, decode batches of several
 * sizes at several context lengths, and mixes), then solves the least-squares
 * problem for the four coefficients of `simStepMs`.
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
}

interface Shape {
  prefill: number;
  decode: number;
  context: number;
}

const SHAPES: Shape[] = [
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

function itemsFor(shape: Shape, blockSize: number, vocab: number): RunnerItem[] {
  const sampler = new Sampler({ temperature: 0 }, vocab);
  const items: RunnerItem[] = [];
  let nextBlock = 0;
  const table = (tokens: number) => Array.from({ length: Math.ceil(tokens / blockSize) }, () => nextBlock++);
  const toks = (n: number) => Array.from({ length: n }, (_, i) => 1 + (i % (vocab - 1)));
  if (shape.prefill > 0) {
    items.push({
      tokens: toks(shape.prefill),
      pos: 0,
      blockTable: table(shape.prefill),
      sample: true,
      sampler,
      history: [],
      seqKey: 0,
    });
  }
  for (let s = 0; s < shape.decode; s++) {
    items.push({
      tokens: [5],
      pos: shape.context,
      blockTable: table(shape.context + 1),
      sample: true,
      sampler,
      history: [],
      seqKey: s + 1,
    });
  }
  return items;
}

function solve(a: number[][], b: number[]): number[] {
  const n = b.length;
  const m = a.map((row, i) => [...row, b[i]!]);
  for (let c = 0; c < n; c++) {
    let p = c;
    for (let r = c + 1; r < n; r++) if (Math.abs(m[r]![c]!) > Math.abs(m[p]![c]!)) p = r;
    [m[c], m[p]] = [m[p]!, m[c]!];
    const d = m[c]![c]! || 1e-12;
    for (let r = 0; r < n; r++) {
      if (r === c) continue;
      const f = m[r]![c]! / d;
      for (let k = c; k <= n; k++) m[r]![k]! -= f * m[c]![k]!;
    }
  }
  return m.map((row, i) => row[n]! / (row[i]! || 1e-12));
}

/** The step a calibration point stands for, as the cost model sees it. */
function pointItems(p: CalibrationPoint) {
  return [
    ...(p.prefillTokens > 0 ? [{ tokens: new Array<number>(p.prefillTokens).fill(0), pos: 0 }] : []),
    ...Array.from({ length: p.decodeSeqs }, () => ({ tokens: [0], pos: p.context })),
  ];
}

const ATTENDED_ONLY: SimCost = { baseMs: 0, perPrefillTokenMs: 0, perDecodeSeqMs: 0, perAttendedTokenMs: 1 };

/** Least squares for step = base + b·prefill + c·decode + d·attended. */
export function fitCost(points: CalibrationPoint[]): SimCost {
  const features = points.map((p) => [
    1,
    p.prefillTokens,
    p.decodeSeqs,
    simStepMs(ATTENDED_ONLY, pointItems(p)),
  ]);
  const ata = [0, 1, 2, 3].map((i) =>
    [0, 1, 2, 3].map((j) => features.reduce((s, f) => s + f[i]! * f[j]!, 0)),
  );
  const atb = [0, 1, 2, 3].map((i) => features.reduce((s, f, k) => s + f[i]! * points[k]!.measuredMs, 0));
  const [base, pre, dec, att] = solve(ata, atb).map((v) => Math.max(0, v));
  return { baseMs: base!, perPrefillTokenMs: pre!, perDecodeSeqMs: dec!, perAttendedTokenMs: att! };
}

/** Measures the real runner on the standard shapes (median of `repeats`) and fits the cost model. */
export function calibrate(model: Model, repeats = 3): Calibration {
  const maxBlocks = Math.ceil(2048 / 16) * 24;
  const runner = new ModelRunner(model, maxBlocks);
  const points: CalibrationPoint[] = [];
  for (const shape of SHAPES) {
    if (shape.context + 1 > model.config.contextLength || shape.prefill > model.config.contextLength)
      continue;
    const items = itemsFor(shape, runner.blockSize, runner.vocabSize);
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
    fitted.reduce((s, p) => s + Math.abs(p.fittedMs - p.measuredMs) / p.measuredMs, 0) / fitted.length;
  return { cost, points: fitted, relError };
}
