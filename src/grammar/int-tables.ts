/**
 * Hash tables over integers kept in typed arrays, for the grammar's hot paths: a lookup allocates
 * nothing (no string keys, no boxed numbers), so computing masks does not feed the garbage
 * collector. Open addressing with linear probing; the tables only grow (entries are never removed
 * one by one).
 */

function hash2(a: number, b: number): number {
  let h = Math.imul(a ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(b + 0x7f4a7c15, 0xc2b2ae35);
  h ^= h >>> 15;
  return Math.imul(h, 0x2c1b3c6d) ^ (h >>> 13);
}

/** (int32, int32) → non-negative int32. */
export class PairMap {
  private ka: Int32Array;
  private kb: Int32Array;
  private vals: Int32Array;
  private size = 0;

  constructor(capacity = 1024) {
    this.ka = new Int32Array(capacity);
    this.kb = new Int32Array(capacity);
    this.vals = new Int32Array(capacity).fill(-1);
  }

  /** The value of (a, b), or -1. */
  get(a: number, b: number): number {
    const m = this.vals.length - 1;
    for (let i = hash2(a, b) & m; ; i = (i + 1) & m) {
      const v = this.vals[i]!;
      if (v < 0) return -1;
      if (this.ka[i] === a && this.kb[i] === b) return v;
    }
  }

  /** Sets (a, b) → v (v ≥ 0); (a, b) must not be in the map yet. */
  set(a: number, b: number, v: number): void {
    if ((this.size + 1) * 2 > this.vals.length) this.grow();
    this.put(a, b, v);
    this.size++;
  }

  private put(a: number, b: number, v: number): void {
    const m = this.vals.length - 1;
    let i = hash2(a, b) & m;
    while (this.vals[i]! >= 0) i = (i + 1) & m;
    this.ka[i] = a;
    this.kb[i] = b;
    this.vals[i] = v;
  }

  private grow(): void {
    const { ka, kb, vals } = this;
    const cap = vals.length * 2;
    this.ka = new Int32Array(cap);
    this.kb = new Int32Array(cap);
    this.vals = new Int32Array(cap).fill(-1);
    for (let i = 0; i < vals.length; i++) if (vals[i]! >= 0) this.put(ka[i]!, kb[i]!, vals[i]!);
  }
}

/** Hash of the first `n` ints of `xs`. */
export function hashInts(xs: Int32Array, n: number): number {
  let h = n | 0;
  for (let i = 0; i < n; i++) h = hash2(h, xs[i]!);
  return h;
}

/**
 * Sequences of int32 → non-negative int32. A key is looked up from the first `n` ints of a scratch
 * buffer and stored as an exact-length array the caller hands over (and may keep using).
 */
export class SeqMap {
  private keys: Int32Array[] = [];
  private hashes: number[] = [];
  private values: number[] = [];
  /** Slots hold entry index + 1 (0: empty). */
  private slots = new Int32Array(1024);

  get(buf: Int32Array, n: number): number {
    const h = hashInts(buf, n);
    const m = this.slots.length - 1;
    for (let i = h & m; ; i = (i + 1) & m) {
      const e = this.slots[i]! - 1;
      if (e < 0) return -1;
      if (this.hashes[e] === h && sameInts(this.keys[e]!, buf, n)) return this.values[e]!;
    }
  }

  /** Adds `key` → v; `key` (its whole length) must not be in the map yet. */
  set(key: Int32Array, v: number): void {
    if ((this.keys.length + 1) * 2 > this.slots.length) this.grow();
    const h = hashInts(key, key.length);
    this.keys.push(key);
    this.hashes.push(h);
    this.values.push(v);
    this.place(h, this.keys.length);
  }

  private place(h: number, entry: number): void {
    const m = this.slots.length - 1;
    let i = h & m;
    while (this.slots[i] !== 0) i = (i + 1) & m;
    this.slots[i] = entry;
  }

  private grow(): void {
    this.slots = new Int32Array(this.slots.length * 2);
    for (let e = 0; e < this.keys.length; e++) this.place(this.hashes[e]!, e + 1);
  }
}

function sameInts(key: Int32Array, buf: Int32Array, n: number): boolean {
  if (key.length !== n) return false;
  for (let i = 0; i < n; i++) if (key[i] !== buf[i]) return false;
  return true;
}

/** A growable scratch buffer of int32 (reused across calls; `n` is its current length). */
export class IntStack {
  buf: Int32Array;
  n = 0;
  constructor(capacity = 64) {
    this.buf = new Int32Array(capacity);
  }
  push(x: number): void {
    if (this.n === this.buf.length) {
      const b = new Int32Array(this.buf.length * 2);
      b.set(this.buf);
      this.buf = b;
    }
    this.buf[this.n++] = x;
  }
  pop(): number {
    return this.buf[--this.n]!;
  }
  /** Sorts the first n entries in place (insertion sort while short). */
  sort(): void {
    const b = this.buf;
    if (this.n > 32) {
      b.subarray(0, this.n).sort();
      return;
    }
    for (let i = 1; i < this.n; i++) {
      const x = b[i]!;
      let j = i - 1;
      while (j >= 0 && b[j]! > x) {
        b[j + 1] = b[j]!;
        j--;
      }
      b[j + 1] = x;
    }
  }
}

/** Grows a typed array to at least `n` entries (doubling), new entries set to `fill`. */
export function growInt32(a: Int32Array<ArrayBuffer>, n: number, fill: number): Int32Array<ArrayBuffer> {
  if (n <= a.length) return a;
  let cap = a.length * 2;
  while (cap < n) cap *= 2;
  const b = new Int32Array(cap);
  b.set(a);
  if (fill !== 0) b.fill(fill, a.length);
  return b;
}
