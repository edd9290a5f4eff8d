/** log-softmax in float64. */
export function logSoftmax(logits: ArrayLike<number>): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) max = Math.max(max, logits[i]!);
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i]! - max);
  const lse = max + Math.log(sum);
  const out = new Float64Array(logits.length);
  for (let i = 0; i < logits.length; i++) out[i] = logits[i]! - lse;
  return out;
}

export function maxAbsDiffWhere(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  where: (i: number) => boolean,
): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) if (where(i)) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

export function argmax(a: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i]! > a[best]!) best = i;
  return best;
}

/** Gap between the best and second-best value. */
export function top2Margin(a: ArrayLike<number>): number {
  let b1 = -Infinity;
  let b2 = -Infinity;
  for (let i = 0; i < a.length; i++) {
    const v = a[i]!;
    if (v > b1) {
      b2 = b1;
      b1 = v;
    } else if (v > b2) b2 = v;
  }
  return b1 - b2;
}
