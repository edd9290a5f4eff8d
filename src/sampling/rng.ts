import { randomBytes } from "node:crypto";

/**
 * A small, fast, seeded PRNG: xoshiro128** (Blackman & Vigna) on four 32-bit words,
 * with its state filled from a 64-bit seed by splitmix64. The same seed always gives
 * the same sequence, on every platform (all arithmetic is exact 32-bit integer math).
 */

const MASK64 = (1n << 64n) - 1n;

/** splitmix64: turns any 64-bit seed into well-mixed state words (BigInt only at seeding time). */
function splitmix64(seed: bigint): () => bigint {
  let state = seed & MASK64;
  return () => {
    state = (state + 0x9e3779b97f4a7c15n) & MASK64;
    let z = state;
    z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
    z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK64;
    return z ^ (z >> 31n);
  };
}

/** A fresh 64-bit seed from the operating system's cryptographic random source. */
export function randomSeed(): bigint {
  return randomBytes(8).readBigUInt64LE(0);
}

export class Rng {
  private s0 = 0;
  private s1 = 0;
  private s2 = 0;
  private s3 = 0;

  /**
   * @param seed any integer (negative numbers are taken modulo 2^64); omitted: seeded from crypto random.
   */
  constructor(seed?: number | bigint) {
    const s = seed === undefined ? randomSeed() : typeof seed === "bigint" ? seed : BigInt(Math.trunc(seed));
    const next = splitmix64(BigInt.asUintN(64, s));
    const a = next();
    const b = next();
    this.s0 = Number(a & 0xffffffffn) | 0;
    this.s1 = Number(a >> 32n) | 0;
    this.s2 = Number(b & 0xffffffffn) | 0;
    this.s3 = Number(b >> 32n) | 0;
    // xoshiro must not start from the all-zero state (splitmix64 practically never gives it).
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1;
  }

  /** The next 32-bit unsigned integer. */
  nextU32(): number {
    const s1 = this.s1;
    const r = Math.imul(rotl(Math.imul(s1, 5), 7), 9);
    const t = s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return r >>> 0;
  }

  /** A float in [0, 1) with 53 random bits. */
  next(): number {
    const hi = this.nextU32() >>> 5; // 27 bits
    const lo = this.nextU32() >>> 6; // 26 bits
    return (hi * 67108864 + lo) / 9007199254740992;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
