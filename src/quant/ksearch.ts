/**
 * Scale searches for the K-quant quantizers. Each works on one sub-block of at
 * most 32 values `x[xo..xo+n)` with importance weights `w[wo..wo+n)`, and
 * writes its result into `fit` (module state, so a search allocates nothing).
 *
 * The approach: try a small grid of candidate step sizes around the naive one
 * (range / levels); for each, assign levels and solve the weighted
 * least-squares problem for the scale (and offset) that best fit those levels;
 * keep the best. Then alternate "re-assign levels for this scale" and "re-fit
 * the scale" while the weighted error keeps dropping.
 *
 * Levels here round half up rather than half to even: ties do not matter for
 * quality, and the integer truncation keeps these inner loops cheap.
 */

export const fit = { scale: 0, offset: 0, error: 0 };

const MAX_SUB = 32;
const levelsTry = new Uint8Array(MAX_SUB);
const signedTry = new Int8Array(MAX_SUB);

// Sums over the current sub-block that do not depend on the levels.
let sumW = 0;
let sumWX = 0;
let sumWXX = 0;

function prepareSums(x: Float32Array, xo: number, n: number, w: Float64Array, wo: number): void {
  sumW = 0;
  sumWX = 0;
  sumWXX = 0;
  for (let i = 0; i < n; i++) {
    const v = x[xo + i]!;
    const wv = w[wo + i]! * v;
    sumW += w[wo + i]!;
    sumWX += wv;
    sumWXX += wv * v;
  }
}

// Output of solveAffine.
let solvedScale = 0;
let solvedOffset = 0;

/**
 * Weighted least squares for x ~ scale * level + offset, offset <= 0, scale > 0,
 * given the level sums sl = sum w*l, sll = sum w*l^2, sxl = sum w*x*l. Returns
 * the weighted squared error, or Infinity when no positive scale fits.
 */
function solveAffine(sl: number, sll: number, sxl: number): number {
  const det = sumW * sll - sl * sl;
  if (!(det > 0)) return Infinity;
  let s = (sumW * sxl - sumWX * sl) / det;
  let b = (sll * sumWX - sl * sxl) / det;
  if (b > 0) {
    // The format only subtracts a (non-negative) minimum: pin the offset to zero.
    b = 0;
    s = sxl / sll;
  }
  if (!(s > 0)) return Infinity;
  solvedScale = s;
  solvedOffset = b;
  const err = sumWXX - 2 * s * sxl - 2 * b * sumWX + s * s * sll + 2 * s * b * sl + b * b * sumW;
  return Math.max(0, err);
}

/**
 * Fits x ~ scale * L + offset with integer L in [0, nmax] and offset <= 0,
 * minimizing sum w * err^2. Writes levels into L[lo..lo+n) and
 * scale/offset/error into `fit`.
 */
export function fitAffine(
  x: Float32Array,
  xo: number,
  n: number,
  w: Float64Array,
  wo: number,
  nmax: number,
  L: Uint8Array,
  lo: number,
): void {
  let mn = 0;
  let mx = x[xo]!;
  for (let i = 0; i < n; i++) {
    const v = x[xo + i]!;
    if (v < mn) mn = v;
    if (v > mx) mx = v;
  }
  if (!(mx > mn)) {
    // Constant non-positive block: the offset alone is exact.
    L.fill(0, lo, lo + n);
    fit.scale = 0;
    fit.offset = mn;
    fit.error = 0;
    return;
  }
  prepareSums(x, xo, n, w, wo);

  // Grid over the step: nmax + t levels across [mn, mx], t in [-1, 1]. The t = 0
  // candidate holds the naive levels, so the best fit is never worse than naive.
  let bestErr = Infinity;
  let bestIscale = nmax / (mx - mn);
  let bestScale = 1 / bestIscale;
  let bestOffset = mn;
  for (let k = -10; k <= 10; k++) {
    const iscale = (nmax + 0.1 * k) / (mx - mn);
    let sl = 0;
    let sll = 0;
    let sxl = 0;
    for (let i = 0; i < n; i++) {
      const v = x[xo + i]!;
      const l = Math.min(nmax, ((v - mn) * iscale + 0.5) | 0);
      const wl = w[wo + i]! * l;
      sl += wl;
      sll += wl * l;
      sxl += wl * v;
    }
    const err = solveAffine(sl, sll, sxl);
    if (err < bestErr) {
      bestErr = err;
      bestIscale = iscale;
      bestScale = solvedScale;
      bestOffset = solvedOffset;
    }
  }
  for (let i = 0; i < n; i++) L[lo + i] = Math.min(nmax, ((x[xo + i]! - mn) * bestIscale + 0.5) | 0);
  if (bestErr === Infinity) {
    // Every candidate put all values on one level (a constant positive block), which
    // leaves scale and offset undetermined: keep the naive fit, exact in that case.
    bestErr = affineError(x, xo, n, w, wo, nmax, bestScale, bestOffset);
  }

  // Alternate re-assignment and re-fit until it stops helping.
  for (let it = 0; it < 4; it++) {
    const inv = 1 / bestScale;
    let changed = false;
    let sl = 0;
    let sll = 0;
    let sxl = 0;
    for (let i = 0; i < n; i++) {
      const v = x[xo + i]!;
      const t = (v - bestOffset) * inv + 0.5;
      const l = t > 0 ? Math.min(nmax, t | 0) : 0;
      levelsTry[i] = l;
      if (l !== L[lo + i]) changed = true;
      const wl = w[wo + i]! * l;
      sl += wl;
      sll += wl * l;
      sxl += wl * v;
    }
    if (!changed) break;
    const err = solveAffine(sl, sll, sxl);
    if (!(err < bestErr)) break;
    bestErr = err;
    bestScale = solvedScale;
    bestOffset = solvedOffset;
    for (let i = 0; i < n; i++) L[lo + i] = levelsTry[i]!;
  }

  fit.scale = bestScale;
  fit.offset = bestOffset;
  fit.error = bestErr;
}

/** Nearest integer to t in [-nmax, nmax - 1] (clamped first, so the shifted truncation is a floor). */
function signedLevel(t: number, nmax: number): number {
  const c = Math.max(-nmax, Math.min(nmax - 1, t));
  return ((c + nmax + 0.5) | 0) - nmax;
}

/**
 * Fits x ~ scale * L with integer L in [-nmax, nmax - 1]. The scale may be
 * negative: the element of largest magnitude goes to the -nmax end, which has
 * one more step. Writes levels into L[lo..lo+n) and scale/error into `fit`.
 */
export function fitSymmetric(
  x: Float32Array,
  xo: number,
  n: number,
  w: Float64Array,
  wo: number,
  nmax: number,
  L: Int8Array,
  lo: number,
): void {
  let amax = 0;
  let max = 0;
  for (let i = 0; i < n; i++) {
    const v = x[xo + i]!;
    if (Math.abs(v) > amax) {
      amax = Math.abs(v);
      max = v;
    }
  }
  fit.offset = 0;
  if (!(amax > 1e-30)) {
    L.fill(0, lo, lo + n);
    fit.scale = 0;
    fit.error = 0;
    return;
  }
  prepareSums(x, xo, n, w, wo);

  // For fixed levels the best scale is sxl/sll and the error is sumWXX - sxl^2/sll,
  // so the candidate with the largest sxl^2/sll wins.
  let bestScore = -1;
  let bestScale = 0;
  let bestIscale = -nmax / max;
  for (let k = -15; k <= 5; k++) {
    const iscale = -(nmax + 0.1 * k) / max;
    let sxl = 0;
    let sll = 0;
    for (let i = 0; i < n; i++) {
      const v = x[xo + i]!;
      const l = signedLevel(iscale * v, nmax);
      const wl = w[wo + i]! * l;
      sxl += wl * v;
      sll += wl * l;
    }
    if (sll > 0 && sxl * sxl > bestScore * sll) {
      bestScore = (sxl * sxl) / sll;
      bestScale = sxl / sll;
      bestIscale = iscale;
    }
  }
  for (let i = 0; i < n; i++) {
    L[lo + i] = signedLevel(bestIscale * x[xo + i]!, nmax);
  }

  for (let it = 0; it < 4; it++) {
    const inv = 1 / bestScale;
    let sxl = 0;
    let sll = 0;
    let changed = false;
    for (let i = 0; i < n; i++) {
      const v = x[xo + i]!;
      const l = signedLevel(v * inv, nmax);
      signedTry[i] = l;
      if (l !== L[lo + i]) changed = true;
      const wl = w[wo + i]! * l;
      sxl += wl * v;
      sll += wl * l;
    }
    if (!changed || !(sll > 0) || !(sxl * sxl > bestScore * sll)) break;
    bestScore = (sxl * sxl) / sll;
    bestScale = sxl / sll;
    for (let i = 0; i < n; i++) L[lo + i] = signedTry[i]!;
  }

  fit.scale = bestScale;
  fit.error = Math.max(0, sumWXX - bestScore);
}

/**
 * Weighted squared error of x against scale * L + offset with the nearest
 * levels in [0, nmax] (all zero when scale is 0); when `L` is given the levels
 * are written to L[lo..lo+n).
 */
export function affineError(
  x: Float32Array,
  xo: number,
  n: number,
  w: Float64Array,
  wo: number,
  nmax: number,
  scale: number,
  offset: number,
  L?: Uint8Array,
  lo = 0,
): number {
  let err = 0;
  const inv = scale > 0 ? 1 / scale : 0;
  for (let i = 0; i < n; i++) {
    const v = x[xo + i]!;
    const t = (v - offset) * inv + 0.5;
    const l = t > 0 ? Math.min(nmax, t | 0) : 0;
    if (L !== undefined) L[lo + i] = l;
    const e = scale * l + offset - v;
    err += w[wo + i]! * e * e;
  }
  return err;
}

/**
 * Weighted squared error of x against scale * L with the nearest levels in
 * [-nmax, nmax - 1]; when `L` is given the levels are written to L[lo..lo+n).
 */
export function symmetricError(
  x: Float32Array,
  xo: number,
  n: number,
  w: Float64Array,
  wo: number,
  nmax: number,
  scale: number,
  L?: Int8Array,
  lo = 0,
): number {
  let err = 0;
  const inv = scale !== 0 ? 1 / scale : 0;
  for (let i = 0; i < n; i++) {
    const v = x[xo + i]!;
    const l = signedLevel(v * inv, nmax);
    if (L !== undefined) L[lo + i] = l;
    const e = scale * l - v;
    err += w[wo + i]! * e * e;
  }
  return err;
}

/** Importance weights for a sub-block: its RMS plus each value's magnitude. */
export function importanceWeights(x: Float32Array, xo: number, n: number, w: Float64Array, wo: number): void {
  let s2 = 0;
  for (let i = 0; i < n; i++) s2 += x[xo + i]! * x[xo + i]!;
  const rms = Math.sqrt(s2 / n);
  for (let i = 0; i < n; i++) w[wo + i] = rms + Math.abs(x[xo + i]!);
}
