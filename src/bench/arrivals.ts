import type { Rng } from "../sampling/rng.js";

/**
 * Open-loop arrival times, as vLLM's `bench serve` draws them: gaps between
 * requests are Gamma(shape = burstiness, scale = 1 / (rate · burstiness)), so
 * the mean gap is 1/rate whatever the burstiness; burstiness 1 is a Poisson
 * process (exponential gaps), below 1 burstier, above 1 more regular. The first
 * request goes at 0. An infinite rate sends everything at once.
 */

/** A standard normal deviate (Box–Muller). */
export function normal(rng: Rng): number {
  let u = 0;
  while (u === 0) u = rng.next();
  const v = rng.next();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
}

/** A Gamma(shape, 1) deviate (Marsaglia–Tsang; shape < 1 via the U^(1/shape) boost). */
export function gamma(rng: Rng, shape: number): number {
  if (!(shape > 0)) throw new RangeError(`gamma shape must be positive, got ${shape}`);
  if (shape < 1) {
    let u = 0;
    while (u === 0) u = rng.next();
    return gamma(rng, shape + 1) * u ** (1 / shape);
  }
  const d = shape - 1 / 3;
  const c = 1 / Math.sqrt(9 * d);
  for (;;) {
    let x: number;
    let v: number;
    do {
      x = normal(rng);
      v = 1 + c * x;
    } while (v <= 0);
    v = v * v * v;
    const u = rng.next();
    if (u < 1 - 0.0331 * x * x * x * x) return d * v;
    if (u > 0 && Math.log(u) < 0.5 * x * x + d * (1 - v + Math.log(v))) return d * v;
  }
}

/** Send offsets in ms for `n` requests at `rate` requests/s. */
export function arrivalOffsetsMs(rng: Rng, n: number, rate: number, burstiness = 1): number[] {
  if (!(rate > 0)) throw new RangeError(`request rate must be positive, got ${rate}`);
  if (!(burstiness > 0)) throw new RangeError(`burstiness must be positive, got ${burstiness}`);
  const out: number[] = [];
  let t = 0;
  for (let i = 0; i < n; i++) {
    out.push(t);
    if (Number.isFinite(rate)) t += (gamma(rng, burstiness) / (rate * burstiness)) * 1000;
  }
  return out;
}
