/** Seeded test data for the codec tests (no Math.random: failures must reproduce). */
import { rng } from "../helpers/rng.js";

export { rng };

/** n normal samples with standard deviation sigma (Box-Muller). */
export function gaussian(n: number, seed: number, sigma = 1): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = 1 - r();
    const v = r();
    out[i] = sigma * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
  return out;
}

export function rms(a: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * a[i]!;
  return Math.sqrt(s / a.length);
}

/** RMS of (approx - exact) divided by RMS of exact. */
export function relRmsError(approx: ArrayLike<number>, exact: ArrayLike<number>): number {
  let e = 0;
  let s = 0;
  for (let i = 0; i < exact.length; i++) {
    const d = approx[i]! - exact[i]!;
    e += d * d;
    s += exact[i]! * exact[i]!;
  }
  return Math.sqrt(e / s);
}

export function dot(a: ArrayLike<number>, b: ArrayLike<number>, bOffset = 0): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[bOffset + i]!;
  return s;
}

export function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("hex");
}

export function fromHex(s: string): Uint8Array {
  return new Uint8Array(Buffer.from(s, "hex"));
}
