import { describe, expect, it } from "vitest";
import { SpindleError } from "../../src/errors.js";
import { Rng } from "../../src/sampling/rng.js";
import { nucleusCut, Sampler, selectTopK } from "../../src/sampling/sampler.js";

/** Logits whose softmax is exactly `probs`. */
function fromProbs(probs: number[]): Float32Array {
  return Float32Array.from(probs, (p) => Math.log(p));
}

function randomLogits(n: number, seed: number, scale = 3): Float32Array {
  const r = new Rng(seed);
  return Float32Array.from({ length: n }, () => (r.next() - 0.5) * 2 * scale);
}

function argmax(a: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i]! > a[best]!) best = i;
  return best;
}

function counts(s: Sampler, logits: Float32Array, n: number, history: number[] = []): Map<number, number> {
  const c = new Map<number, number>();
  for (let i = 0; i < n; i++) {
    const t = s.sample(logits, history).token;
    c.set(t, (c.get(t) ?? 0) + 1);
  }
  return c;
}

/** Pearson chi-square statistic of observed counts against expected probabilities. */
function chiSquare(obs: Map<number, number>, expected: Map<number, number>, n: number): number {
  let x2 = 0;
  for (const [t, p] of expected) {
    const e = p * n;
    const o = obs.get(t) ?? 0;
    x2 += ((o - e) * (o - e)) / e;
  }
  return x2;
}

/** Brute force: log-softmax with a full sort. */
function logSoftmax(logits: ArrayLike<number>): number[] {
  const a = Array.from(logits);
  const m = Math.max(...a);
  const lse = m + Math.log(a.reduce((s, v) => s + Math.exp(v - m), 0));
  return a.map((v) => v - lse);
}

describe("greedy", () => {
  it("temperature 0 picks the argmax", () => {
    for (let seed = 1; seed <= 20; seed++) {
      const logits = randomLogits(500, seed);
      const s = new Sampler({ temperature: 0 }, 500);
      expect(s.sample(logits, []).token).toBe(argmax(logits));
    }
  });

  it("the plain-greedy fast path (no copy) picks what the full path picks, NaN and ±Infinity included", () => {
    const FLT_MAX = 3.4028234663852886e38;
    const cases = [
      [1, Number.NaN, 3, 2],
      [Number.NaN, Number.NaN, -Infinity, 0.5],
      [-1, FLT_MAX, 2, Infinity, 5],
      [Infinity, 1, Infinity],
      [-5, -Infinity, -3, -3],
      [0.25, Number.NaN, Infinity, FLT_MAX],
    ];
    for (const c of cases) {
      const logits = Float32Array.from(c);
      const fast = new Sampler({ temperature: 0 }, c.length).sample(logits, []).token;
      // A bias of 0 on a token forces the full path (working copy, then greedy over the copy).
      const full = new Sampler({ temperature: 0, logitBias: new Map([[0, 0]]) }, c.length).sample(
        logits,
        [],
      ).token;
      const fromArray = new Sampler({ temperature: 0 }, c.length).sample(c, []).token;
      expect([fast, fromArray]).toEqual([full, full]);
    }
    // Random lengths (all four lanes of the fast path and its tail) over values that tie and are special.
    const pool = [Number.NaN, -Infinity, Infinity, FLT_MAX, -0, 0, 1, 1, -2, 7, 7];
    let seed = 12345;
    const next = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed;
    };
    for (let trial = 0; trial < 400; trial++) {
      const c = Array.from({ length: 1 + (next() % 23) }, () => pool[next() % pool.length]!);
      const logits = Float32Array.from(c);
      const full = () =>
        new Sampler({ temperature: 0, logitBias: new Map([[0, 0]]) }, c.length).sample(logits, []).token;
      const fast = () => new Sampler({ temperature: 0 }, c.length).sample(logits, []).token;
      if (c.every((v) => Number.isNaN(v) || v === -Infinity)) {
        expect(fast).toThrow(SpindleError);
        expect(full).toThrow(SpindleError);
      } else expect(fast(), c.join(",")).toBe(full());
    }
    // Every logit NaN or -Infinity: nothing can be chosen, on both paths.
    const none = Float32Array.from([Number.NaN, -Infinity]);
    expect(() => new Sampler({ temperature: 0 }, 2).sample(none, [])).toThrow(SpindleError);
  });

  it("ties go to the lowest id", () => {
    const logits = Float32Array.from([1, 5, 2, 5, 5]);
    expect(new Sampler({ temperature: 0 }, 5).sample(logits, []).token).toBe(1);
  });

  it("ignores top-k / top-p / min-p and does not depend on the seed", () => {
    const logits = randomLogits(100, 7);
    const a = new Sampler({ temperature: 0, topK: 5, topP: 0.3, minP: 0.2, seed: 1 }, 100);
    const b = new Sampler({ temperature: 0, seed: 2 }, 100);
    for (let i = 0; i < 10; i++) expect(a.sample(logits, []).token).toBe(b.sample(logits, []).token);
  });

  it("never writes the caller's logits", () => {
    const logits = randomLogits(300, 3);
    const copy = logits.slice();
    const s = new Sampler(
      {
        temperature: 0.8,
        topK: 10,
        topP: 0.9,
        minP: 0.05,
        repetitionPenalty: 1.3,
        presencePenalty: 0.5,
        frequencyPenalty: 0.5,
        logitBias: new Map([[3, -100]]),
        logprobs: 5,
      },
      300,
    );
    for (let i = 0; i < 5; i++) s.sample(logits, [1, 2, 3, 4, 5]);
    new Sampler({ temperature: 1 }, 300).sample(logits, [1, 2, 3]);
    expect(logits).toEqual(copy);
  });
});

describe("seeds", () => {
  const logits = randomLogits(50, 11, 0.5);
  const draw = (seed: number | undefined) => {
    const s = new Sampler({ seed }, 50);
    return Array.from({ length: 200 }, () => s.sample(logits, []).token);
  };

  it("same seed → same 200 tokens", () => {
    expect(draw(1234)).toEqual(draw(1234));
    expect(draw(-5)).toEqual(draw(-5));
  });

  it("different seeds → different sequences", () => {
    const a = draw(1234);
    expect(draw(1235)).not.toEqual(a);
    expect(draw(0)).not.toEqual(a);
  });

  it("no seed → a random one", () => {
    expect(draw(undefined)).not.toEqual(draw(undefined));
  });

  it("the RNG gives uniform floats in [0, 1)", () => {
    const r = new Rng(42);
    const bins = new Array(10).fill(0);
    const n = 100_000;
    let lo = 1;
    let hi = 0;
    for (let i = 0; i < n; i++) {
      const x = r.next();
      lo = Math.min(lo, x);
      hi = Math.max(hi, x);
      bins[Math.floor(x * 10)]++;
    }
    expect(lo).toBeGreaterThanOrEqual(0);
    expect(hi).toBeLessThan(1);
    const x2 = bins.reduce((s, o) => s + (o - n / 10) ** 2 / (n / 10), 0);
    expect(x2).toBeLessThan(27.9); // 9 dof, p = 0.001
    const u = new Rng(7n);
    const v = new Rng(7);
    for (let i = 0; i < 10; i++) expect(u.nextU32()).toBe(v.nextU32());
  });
});

describe("temperature", () => {
  it("→ 0 approaches greedy", () => {
    for (let seed = 1; seed <= 5; seed++) {
      const logits = randomLogits(200, seed);
      const top = argmax(logits);
      logits[top] = logits[top]! + 0.05; // a clear winner: the runner-up has odds e^(-0.05/T)
      for (const temperature of [2e-3, 1e-4]) {
        const s = new Sampler({ temperature, seed }, 200);
        for (let i = 0; i < 100; i++) expect(s.sample(logits, []).token).toBe(top);
      }
      // while at T = 1 the same logits give many different tokens
      expect(counts(new Sampler({ seed }, 200), logits, 100).size).toBeGreaterThan(10);
    }
  });

  it("→ 0 splits evenly between exactly tied maxima", () => {
    const logits = Float32Array.from([0, 3, 1, 3]);
    const c = counts(new Sampler({ temperature: 1e-3, seed: 5 }, 4), logits, 2000);
    expect([...c.keys()].sort()).toEqual([1, 3]);
    expect(Math.abs(c.get(1)! - 1000)).toBeLessThan(150);
  });

  it("scales the logits before the softmax", () => {
    // probs ∝ exp(l / T): logits [0, ln 2] at T = 0.5 → [1, 4] / 5.
    const logits = Float32Array.from([0, Math.log(2)]);
    const n = 20_000;
    const c = counts(new Sampler({ temperature: 0.5, seed: 3 }, 2), logits, n);
    const expected = new Map([
      [0, 0.2],
      [1, 0.8],
    ]);
    expect(chiSquare(c, expected, n)).toBeLessThan(10.83); // 1 dof, p = 0.001
  });

  it("T = 1 with no truncation samples the full softmax", () => {
    const probs = [0.4, 0.3, 0.2, 0.1];
    const n = 20_000;
    const c = counts(new Sampler({ seed: 9 }, 4), fromProbs(probs), n);
    expect(chiSquare(c, new Map(probs.map((p, i) => [i, p])), n)).toBeLessThan(16.27); // 3 dof
  });
});

describe("top-k", () => {
  it("top-k = 1 equals greedy", () => {
    for (let seed = 1; seed <= 20; seed++) {
      const logits = randomLogits(1000, seed);
      const s = new Sampler({ topK: 1, temperature: 1.5, seed }, 1000);
      expect(s.sample(logits, []).token).toBe(argmax(logits));
    }
  });

  it("temperature applies to the k survivors", () => {
    // top-3 of [0.1, 0.4, 0.05, 0.3, 0.15] at T = 0.5: ∝ p² → 0.16, 0.09, 0.0225 (sum 0.2725)
    const n = 20_000;
    const logits = fromProbs([0.1, 0.4, 0.05, 0.3, 0.15]);
    const c = counts(new Sampler({ topK: 3, temperature: 0.5, seed: 6 }, 5), logits, n);
    const expected = new Map([
      [1, 0.16 / 0.2725],
      [3, 0.09 / 0.2725],
      [4, 0.0225 / 0.2725],
    ]);
    expect(chiSquare(c, expected, n)).toBeLessThan(13.82); // 2 dof
  });

  it("keeps only the k most likely, renormalised", () => {
    const probs = [0.1, 0.4, 0.05, 0.3, 0.15];
    const n = 20_000;
    const c = counts(new Sampler({ topK: 3, seed: 5 }, 5), fromProbs(probs), n);
    expect(c.has(0)).toBe(false);
    expect(c.has(2)).toBe(false);
    const expected = new Map([
      [1, 0.4 / 0.85],
      [3, 0.3 / 0.85],
      [4, 0.15 / 0.85],
    ]);
    expect(chiSquare(c, expected, n)).toBeLessThan(13.82); // 2 dof
  });

  it("selectTopK matches a full sort, ties by lower id, skipping -Infinity and NaN", () => {
    for (let seed = 1; seed <= 30; seed++) {
      const r = new Rng(seed);
      const vals = Float32Array.from({ length: 300 }, () => Math.floor(r.next() * 20)); // many ties
      vals[5] = -Infinity;
      vals[6] = Number.NaN;
      const k = 1 + Math.floor(r.next() * 60);
      const heap = new Int32Array(k);
      const n = selectTopK(vals, 300, k, heap);
      const ref = Array.from({ length: 300 }, (_, i) => i)
        .filter((i) => i !== 5 && i !== 6)
        .sort((a, b) => vals[b]! - vals[a]! || a - b)
        .slice(0, k);
      expect(n).toBe(k);
      expect(Array.from(heap.subarray(0, n))).toEqual(ref);
    }
    // ties at the boundary: lower ids are kept, whatever the arrival order
    const tie = new Int32Array(2);
    selectTopK(Float32Array.from([1, 1, 1, 5]), 4, 2, tie);
    expect(Array.from(tie)).toEqual([3, 0]);
    const tie3 = new Int32Array(3);
    selectTopK(Float32Array.from([1, 1, 1, 1, 1, 7, 6]), 7, 3, tie3);
    expect(Array.from(tie3)).toEqual([5, 6, 0]);
    const few = Float32Array.from([-Infinity, 2, -Infinity, 1]);
    const heap = new Int32Array(4);
    expect(selectTopK(few, 4, 4, heap)).toBe(2);
    expect(Array.from(heap.subarray(0, 2))).toEqual([1, 3]);
  });
});

describe("top-p", () => {
  const probs = [0.1, 0.5, 0.15, 0.25];
  const support = (topP: number) => {
    const c = counts(new Sampler({ topP, seed: 21 }, 4), fromProbs(probs), 3000);
    return [...c.keys()].sort();
  };

  it("keeps the smallest set whose mass reaches p", () => {
    expect(support(0.4)).toEqual([1]); // 0.5 ≥ 0.4
    expect(support(0.5)).toEqual([1]); // exactly reaches
    expect(support(0.6)).toEqual([1, 3]); // 0.75
    expect(support(0.75)).toEqual([1, 3]); // exactly reaches
    expect(support(0.8)).toEqual([1, 2, 3]); // 0.9
    expect(support(0.95)).toEqual([0, 1, 2, 3]);
    expect(support(0)).toEqual([1]); // always keeps one token
  });

  it("samples the renormalised nucleus (empirical, chi-square)", () => {
    const n = 30_000;
    const c = counts(new Sampler({ topP: 0.8, seed: 77 }, 4), fromProbs(probs), n);
    const expected = new Map([
      [1, 0.5 / 0.9],
      [3, 0.25 / 0.9],
      [2, 0.15 / 0.9],
    ]);
    expect(c.has(0)).toBe(false);
    expect(chiSquare(c, expected, n)).toBeLessThan(13.82); // 2 dof, p = 0.001
  });

  it("is measured after temperature", () => {
    // At T = 0.5, probs ∝ p²: [0.01, 0.25, 0.0225, 0.0625] / 0.345 → token 1 alone holds 72%.
    const c = counts(new Sampler({ topP: 0.7, temperature: 0.5, seed: 4 }, 4), fromProbs(probs), 2000);
    expect([...c.keys()]).toEqual([1]);
  });

  it("is measured on the top-k renormalised distribution", () => {
    // top-k 2 keeps {1: 0.5, 3: 0.25} → {2/3, 1/3}; top-p 0.6 then keeps only token 1.
    const c = counts(new Sampler({ topK: 2, topP: 0.6, seed: 4 }, 4), fromProbs(probs), 2000);
    expect([...c.keys()]).toEqual([1]);
    const d = counts(new Sampler({ topK: 2, topP: 0.7, seed: 4 }, 4), fromProbs(probs), 2000);
    expect([...d.keys()].sort()).toEqual([1, 3]);
  });

  it("ties at the boundary: lower ids first", () => {
    const tied = fromProbs([0.2, 0.4, 0.2, 0.2]);
    const support = (extra: object) =>
      [...counts(new Sampler({ seed: 3, ...extra }, 4), tied, 3000).keys()].sort();
    expect(support({ topP: 0.5 })).toEqual([0, 1]); // 0.4 + 0.2 reaches 0.5: one of the three tied
    expect(support({ topP: 0.7 })).toEqual([0, 1, 2]);
    expect(support({ topK: 2 })).toEqual([0, 1]);
    expect(support({ topK: 3, topP: 0.6 })).toEqual([0, 1]); // top-k {0.5, 0.25, 0.25}
    expect(support({ topP: 0.01 })).toEqual([1]);
    expect(support({ topP: 0, temperature: 2 })).toEqual([1]);
  });

  it("flat distribution: matches a full sort (lower collection threshold)", () => {
    const V = 1000;
    const logits = randomLogits(V, 99, 0.7); // every token < 0.4% probability
    const lp = logSoftmax(logits);
    const order = lp.map((_, i) => i).sort((a, b) => lp[b]! - lp[a]! || a - b);
    const nucleus = new Map<number, number>();
    let cum = 0;
    for (const t of order) {
      nucleus.set(t, Math.exp(lp[t]!));
      cum += Math.exp(lp[t]!);
      if (cum >= 0.5) break;
    }
    expect(nucleus.size).toBeGreaterThan(300);
    const n = 40_000;
    const c = counts(new Sampler({ topP: 0.5, seed: 8 }, V), logits, n);
    for (const t of c.keys()) expect(nucleus.has(t)).toBe(true);
    for (const [t, p] of nucleus) nucleus.set(t, p / cum);
    // dof = size - 1 ≈ 300..1000; allow mean + 6 sd.
    const dof = nucleus.size - 1;
    expect(chiSquare(c, nucleus, n)).toBeLessThan(dof + 6 * Math.sqrt(2 * dof));
  });
});

describe("nucleusCut", () => {
  it("finds the weight where the sorted prefix reaches the target, with ties", () => {
    for (let seed = 1; seed <= 200; seed++) {
      const r = new Rng(seed);
      const n = 1 + Math.floor(r.next() * 300);
      const levels = 1 + Math.floor(r.next() * 40); // few levels → many ties
      const vals = Float64Array.from({ length: n }, () => Math.floor(r.next() * levels + 1) / levels);
      const sorted = Array.from(vals).sort((a, b) => b - a);
      const total = sorted.reduce((a, b) => a + b, 0);
      const target = r.next() * total * 1.02; // sometimes beyond the total
      let m = 0;
      let cum = 0;
      while (m < n && cum < target) cum += sorted[m++]!;
      const { q, above } = nucleusCut(vals, n, target);
      if (cum < target) {
        expect(q).toBe(0);
        continue;
      }
      const expectQ = sorted[Math.max(m, 1) - 1]!;
      expect(q).toBe(expectQ);
      expect(above).toBeCloseTo(
        sorted.filter((v) => v > expectQ).reduce((a, b) => a + b, 0),
        9,
      );
    }
  });

  it("a very flat 20k vocabulary (every token below 2^-14) samples only nucleus tokens", () => {
    const V = 20_000;
    const logits = randomLogits(V, 3, 0.3);
    const lp = logSoftmax(logits);
    const order = lp.map((_, i) => i).sort((a, b) => lp[b]! - lp[a]! || a - b);
    const nucleus = new Set<number>();
    let cum = 0;
    for (const t of order) {
      nucleus.add(t);
      cum += Math.exp(lp[t]!);
      if (cum >= 0.3) break;
    }
    const s = new Sampler({ topP: 0.3, seed: 2 }, V);
    const seen = new Set<number>();
    for (let i = 0; i < 1000; i++) seen.add(s.sample(logits, []).token);
    expect([...seen].filter((t) => !nucleus.has(t))).toEqual([]);
    expect(seen.size).toBeGreaterThan(500);
  });
});

describe("min-p", () => {
  const probs = [0.5, 0.3, 0.15, 0.05];

  it("drops tokens below min_p × the top probability", () => {
    const support = (minP: number, extra: object = {}) =>
      [...counts(new Sampler({ minP, seed: 13, ...extra }, 4), fromProbs(probs), 3000).keys()].sort();
    expect(support(0.2)).toEqual([0, 1, 2]); // threshold 0.1
    expect(support(0.5)).toEqual([0, 1]); // threshold 0.25
    expect(support(0.7)).toEqual([0]); // threshold 0.35
    expect(support(0.05)).toEqual([0, 1, 2, 3]);
    expect(support(0.2, { topK: 3 })).toEqual([0, 1, 2]);
    expect(support(0.5, { topP: 0.99 })).toEqual([0, 1]);
    expect(support(0.2, { topP: 0.7 })).toEqual([0, 1]); // top-p is the tighter cut
  });

  it("samples the kept tokens in proportion (chi-square)", () => {
    const n = 30_000;
    const c = counts(new Sampler({ minP: 0.2, seed: 31 }, 4), fromProbs(probs), n);
    const expected = new Map([
      [0, 0.5 / 0.95],
      [1, 0.3 / 0.95],
      [2, 0.15 / 0.95],
    ]);
    expect(chiSquare(c, expected, n)).toBeLessThan(13.82);
  });
});

describe("penalties through the sampler", () => {
  it("repetition penalty divides a positive logit and flips the greedy choice", () => {
    const logits = Float32Array.from([2.0, 1.9]);
    expect(new Sampler({ temperature: 0 }, 2).sample(logits, [0]).token).toBe(0);
    expect(new Sampler({ temperature: 0, repetitionPenalty: 1.1 }, 2).sample(logits, [0]).token).toBe(1); // 1.818
    expect(new Sampler({ temperature: 0, repetitionPenalty: 1.04 }, 2).sample(logits, [0]).token).toBe(0); // 1.923
  });

  it("repetition penalty multiplies a negative logit", () => {
    const logits = Float32Array.from([-1.0, -1.05]);
    expect(new Sampler({ temperature: 0, repetitionPenalty: 1.1 }, 2).sample(logits, [0]).token).toBe(1); // -1.1
  });

  it("only the last penaltyLastN tokens count", () => {
    const logits = Float32Array.from([2.0, 1.9, 0]);
    const s = (n: number) => new Sampler({ temperature: 0, presencePenalty: 0.5, penaltyLastN: n }, 3);
    expect(s(2).sample(logits, [0, 2, 2]).token).toBe(0); // token 0 is outside the window
    expect(s(3).sample(logits, [0, 2, 2]).token).toBe(1);
    expect(s(-1).sample(logits, [0, 2, 2]).token).toBe(1);
    expect(s(0).sample(logits, [0, 0, 0]).token).toBe(0);
  });
});

describe("logit bias", () => {
  it("-100 and -Infinity ban a token", () => {
    const logits = Float32Array.from([5, 1, 0.5, 4]);
    for (const ban of [-100, -Infinity]) {
      const bias = new Map([[0, ban]]);
      expect(new Sampler({ temperature: 0, logitBias: bias }, 4).sample(logits, []).token).toBe(3);
      const c = counts(new Sampler({ temperature: 2, logitBias: bias, seed: 1 }, 4), logits, 3000);
      expect(c.has(0)).toBe(false);
      expect(c.size).toBe(3);
    }
  });

  it("a positive bias is added to the logit", () => {
    const logits = Float32Array.from([1, 0]);
    const n = 20_000;
    const c = counts(new Sampler({ logitBias: new Map([[1, 1 + Math.log(3)]]), seed: 2 }, 2), logits, n);
    const expected = new Map([
      [0, 0.25],
      [1, 0.75],
    ]);
    expect(chiSquare(c, expected, n)).toBeLessThan(10.83);
  });

  it("banning every token is an error; an id past the vocabulary is an error", () => {
    const all = new Map([
      [0, -100],
      [1, -100],
    ]);
    const logits = Float32Array.from([1, 2]);
    expect(() => new Sampler({ logitBias: all }, 2).sample(logits, [])).toThrow(/bans every token/);
    expect(() => new Sampler({ logitBias: all, temperature: 0 }, 2).sample(logits, [])).toThrow(SpindleError);
    expect(() => new Sampler({ logitBias: all, topK: 1 }, 2).sample(logits, [])).toThrow(SpindleError);
    expect(() => new Sampler({ logitBias: new Map([[5, 1]]) }, 2)).toThrow(/token id 5 is out of range/);
  });
});

describe("logprobs", () => {
  it("are the raw log-softmax: all of them exp-sum to 1, top list sorted and exact", () => {
    const V = 20;
    const logits = randomLogits(V, 5);
    const ref = logSoftmax(logits);
    const s = new Sampler({ logprobs: 20, seed: 1 }, V);
    const r = s.sample(logits, []);
    expect(r.topLogprobs).toHaveLength(20);
    const sum = r.topLogprobs.reduce((a, x) => a + Math.exp(x.logprob), 0);
    expect(sum).toBeCloseTo(1, 6);
    for (let i = 1; i < r.topLogprobs.length; i++) {
      expect(r.topLogprobs[i]!.logprob).toBeLessThanOrEqual(r.topLogprobs[i - 1]!.logprob);
    }
    for (const { token, logprob } of r.topLogprobs) expect(logprob).toBeCloseTo(ref[token]!, 5);
    expect(r.logprob).toBeCloseTo(ref[r.token]!, 5);
  });

  it("top n over a larger vocabulary matches a full sort", () => {
    const V = 5000;
    const logits = randomLogits(V, 6);
    const ref = logSoftmax(logits);
    const order = ref.map((_, i) => i).sort((a, b) => ref[b]! - ref[a]! || a - b);
    const r = new Sampler({ logprobs: 5, temperature: 0 }, V).sample(logits, []);
    expect(r.topLogprobs.map((x) => x.token)).toEqual(order.slice(0, 5));
    expect(r.token).toBe(order[0]);
    expect(r.logprob).toBeCloseTo(ref[order[0]!]!, 5);
  });

  it("do not change with temperature, penalties or bias (raw model distribution)", () => {
    const logits = randomLogits(10, 8);
    const plain = new Sampler({ logprobs: 3, temperature: 0 }, 10).sample(logits, [1, 2]);
    const tuned = new Sampler(
      { logprobs: 3, temperature: 0, repetitionPenalty: 2, logitBias: new Map([[plain.token, -100]]) },
      10,
    ).sample(logits, [1, 2]);
    expect(tuned.topLogprobs).toEqual(plain.topLogprobs);
    expect(tuned.token).not.toBe(plain.token);
  });

  it("logprobs 0: nothing computed (empty list, NaN); logprobs 1: the chosen token and the top one", () => {
    const logits = fromProbs([0.1, 0.2, 0.3, 0.4]);
    const r = new Sampler({ temperature: 0 }, 4).sample(logits, []);
    expect(r.token).toBe(3);
    expect(r.topLogprobs).toEqual([]);
    expect(r.logprob).toBeNaN();
    const s = new Sampler({ temperature: 0, logprobs: 1, logitBias: new Map([[3, -100]]) }, 4).sample(
      logits,
      [],
    );
    expect(s.token).toBe(2);
    expect(s.logprob).toBeCloseTo(Math.log(0.3), 6);
    expect(s.topLogprobs).toHaveLength(1);
    expect(s.topLogprobs[0]!.token).toBe(3);
    expect(s.topLogprobs[0]!.logprob).toBeCloseTo(Math.log(0.4), 6);
  });
});

describe("large vocabulary", () => {
  it("samples a 150k vocabulary with every combination of truncation", () => {
    const V = 150_000;
    const logits = randomLogits(V, 1, 8);
    const top = argmax(logits);
    const combos = [{}, { topK: 40 }, { topP: 0.9 }, { minP: 0.05 }, { topK: 40, topP: 0.9, minP: 0.05 }];
    for (const c of combos) {
      const s = new Sampler({ ...c, seed: 1, temperature: 0.7 }, V);
      for (let i = 0; i < 5; i++) {
        const t = s.sample(logits, [top]).token;
        expect(t >= 0 && t < V).toBe(true);
      }
    }
  });
});

describe("grammar mask", () => {
  /** A mask allowing exactly `allowed`. */
  function maskOf(V: number, allowed: number[]): Uint32Array {
    const m = new Uint32Array((V + 31) >>> 5);
    for (const t of allowed) m[t >>> 5]! |= 1 << (t & 31);
    return m;
  }
  const V = 300;
  const allowed = [3, 40, 41, 77, 128, 255, 299];
  const mask = maskOf(V, allowed);
  const modes: Record<string, ConstructorParameters<typeof Sampler>[0]> = {
    greedy: { temperature: 0 },
    temperature: { temperature: 1.3, seed: 1 },
    topK: { temperature: 1, topK: 2, seed: 2 },
    topP: { temperature: 1, topP: 0.3, seed: 3 },
    minP: { temperature: 1, minP: 0.5, seed: 4 },
    penalties: { temperature: 0.8, repetitionPenalty: 1.4, presencePenalty: 1, frequencyPenalty: 1, seed: 5 },
    logitBias: { temperature: 0, logitBias: new Map([[allowed[0]!, 100]]) },
    logprobs: { temperature: 1, logprobs: 5, seed: 6 },
  };

  it("every mode samples only allowed tokens, and the caller's logits stay as they were", () => {
    for (const [name, params] of Object.entries(modes)) {
      const s = new Sampler(params, V);
      for (let seed = 1; seed <= 40; seed++) {
        const logits = randomLogits(V, seed, 6);
        const copy = logits.slice();
        const t = s.sample(logits, [40, 40, 77], mask).token;
        expect(allowed, `${name} seed ${seed}`).toContain(t);
        expect(logits).toEqual(copy);
      }
    }
    // logit_bias +100 on an allowed token wins; on a disallowed one it cannot.
    const biased = new Sampler({ temperature: 0, logitBias: new Map([[5, 100]]) }, V);
    expect(allowed).toContain(biased.sample(randomLogits(V, 9), [], mask).token);
  });

  it("greedy under a mask is the argmax over the allowed tokens", () => {
    for (let seed = 1; seed <= 20; seed++) {
      const logits = randomLogits(V, seed);
      const best = allowed.reduce((b, t) => (logits[t]! > logits[b]! ? t : b), allowed[0]!);
      expect(new Sampler({ temperature: 0 }, V).sample(logits, [], mask).token).toBe(best);
    }
  });

  it("temperature sampling draws from the distribution renormalised over the allowed tokens", () => {
    const logits = randomLogits(V, 17, 1);
    const s = new Sampler({ temperature: 1, seed: 123 }, V);
    const n = 20_000;
    const c = new Map<number, number>();
    for (let i = 0; i < n; i++) {
      const t = s.sample(logits, [], mask).token;
      c.set(t, (c.get(t) ?? 0) + 1);
    }
    const z = allowed.reduce((a, t) => a + Math.exp(logits[t]!), 0);
    const expected = new Map(allowed.map((t) => [t, Math.exp(logits[t]!) / z]));
    expect(chiSquare(c, expected, n)).toBeLessThan(22.46); // 6 dof, p = 0.001
  });

  it("logprobs are the raw logits' log-softmax over the allowed tokens (vLLM: the mask comes first)", () => {
    const logits = randomLogits(V, 23);
    const r = new Sampler({ temperature: 0, logprobs: 10 }, V).sample(logits, [], mask);
    const lse = Math.log(allowed.reduce((a, t) => a + Math.exp(logits[t]!), 0));
    expect(r.logprob).toBeCloseTo(logits[r.token]! - lse, 5);
    expect(r.topLogprobs).toHaveLength(allowed.length);
    for (const t of r.topLogprobs) {
      expect(allowed).toContain(t.token);
      expect(t.logprob).toBeCloseTo(logits[t.token]! - lse, 5);
    }
    const mass = r.topLogprobs.reduce((a, t) => a + Math.exp(t.logprob), 0);
    expect(mass).toBeCloseTo(1, 5);
    // One allowed token: certain.
    const one = new Sampler({ temperature: 1, logprobs: 3, seed: 1 }, V).sample(logits, [], maskOf(V, [41]));
    expect(one).toEqual({ token: 41, logprob: 0, topLogprobs: [{ token: 41, logprob: 0 }] });
  });

  it("a logit_bias that bans every allowed token is an error naming logit_bias and the grammar", () => {
    const ban = new Map(allowed.map((t) => [t, -100]));
    for (const temperature of [0, 1]) {
      const s = new Sampler({ temperature, logitBias: ban }, V);
      expect(() => s.sample(randomLogits(V, 1), [], mask)).toThrow(/grammar and logit_bias/);
    }
  });
});
