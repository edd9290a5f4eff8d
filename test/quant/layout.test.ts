import { describe, expect, it } from "vitest";
import { GGMLType } from "../../src/gguf/types.js";
import { dequantizeRow, dotRow, quantizeRow, rowBytes } from "../../src/quant/index.js";
import { dot, gaussian, rng } from "./data.js";

/**
 * Layout oracle: blocks assembled byte by byte from the ggml struct definitions
 * (ggml-common.h), with the values each element must decode to worked out here
 * from the format's formula, element by element. A wrong offset, nibble order,
 * bit position or scale packing in the codecs fails these tests.
 *
 * f16 constants are spelled as bit patterns so these tests do not lean on the
 * f16 encoder: 0x3c00 = 1, 0x3800 = 0.5, 0x3400 = 0.25, 0x3000 = 0.125,
 * 0x2c00 = 0.0625, 0xbc00 = -1, 0xb800 = -0.5, 0x4000 = 2, 0x3e00 = 1.5.
 */

const H = {
  one: 0x3c00,
  half: 0x3800,
  quarter: 0x3400,
  eighth: 0x3000,
  sixteenth: 0x2c00,
  m1: 0xbc00,
  mhalf: 0xb800,
};
const VAL: Record<number, number> = {
  [H.one]: 1,
  [H.half]: 0.5,
  [H.quarter]: 0.25,
  [H.eighth]: 0.125,
  [H.sixteenth]: 0.0625,
  [H.m1]: -1,
  [H.mhalf]: -0.5,
};

function putU16(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = v >>> 8;
}

function putU32(b: Uint8Array, o: number, v: number): void {
  for (let k = 0; k < 4; k++) b[o + k] = (v >>> (8 * k)) & 0xff;
}

interface Built {
  bytes: Uint8Array;
  expected: Float32Array;
}

/**
 * Checks one hand-built row: at a non-zero, odd byte offset in a larger buffer
 * and into a non-zero destination offset, through dequantizeRow, and through
 * dotRow against the expected values.
 */
function checkRow(type: GGMLType, built: Built): void {
  const n = built.expected.length;
  expect(built.bytes.length).toBe(rowBytes(type, n));
  const pad = 7;
  const buf = new Uint8Array(pad + built.bytes.length + 3).fill(0xee);
  buf.set(built.bytes, pad);
  const out = new Float32Array(n + 5).fill(Number.NaN);
  dequantizeRow(type, buf, pad, out, 2, n);
  expect(Array.from(out.subarray(2, 2 + n))).toEqual(Array.from(built.expected));
  expect(Number.isNaN(out[1]!) && Number.isNaN(out[2 + n]!)).toBe(true); // nothing written outside the row

  const x = gaussian(n + 3, 7);
  const want = dot(built.expected, x, 3);
  let scale = 0;
  for (let i = 0; i < n; i++) scale += Math.abs(built.expected[i]! * x[3 + i]!);
  expect(Math.abs(dotRow(type, buf, pad, x, 3, n) - want)).toBeLessThanOrEqual(1e-12 * scale);
}

describe("legacy 32-element blocks", () => {
  it("Q4_0: f16 d, then byte j = element j (low nibble) | element j+16 (high nibble); x = d*(q-8)", () => {
    const ds = [H.half, H.m1, H.sixteenth];
    const bytes = new Uint8Array(18 * ds.length);
    const expected = new Float32Array(32 * ds.length);
    ds.forEach((dh, b) => {
      const o = 18 * b;
      putU16(bytes, o, dh);
      for (let j = 0; j < 16; j++) {
        const lo = (j + b) & 15;
        const hi = (15 - j + 3 * b) & 15;
        bytes[o + 2 + j] = lo | (hi << 4);
        expected[32 * b + j] = (lo - 8) * VAL[dh]!;
        expected[32 * b + j + 16] = (hi - 8) * VAL[dh]!;
      }
    });
    // The headline case: scale 0.5, nibbles 0..15 in the low halves -> -4, -3.5, ..., 3.5.
    expect(Array.from(expected.subarray(0, 16))).toEqual(Array.from({ length: 16 }, (_, j) => (j - 8) * 0.5));
    checkRow(GGMLType.Q4_0, { bytes, expected });
  });

  it("Q4_1: f16 d, f16 m, then nibbles; x = d*q + m", () => {
    const bytes = new Uint8Array(40);
    const expected = new Float32Array(64);
    const params = [
      [H.quarter, H.m1],
      [H.half, H.eighth],
    ] as const;
    params.forEach(([dh, mh], b) => {
      const o = 20 * b;
      putU16(bytes, o, dh);
      putU16(bytes, o + 2, mh);
      for (let j = 0; j < 16; j++) {
        const lo = (j * 5 + b) & 15;
        const hi = (j * 3 + 7) & 15;
        bytes[o + 4 + j] = lo | (hi << 4);
        expected[32 * b + j] = lo * VAL[dh]! + VAL[mh]!;
        expected[32 * b + j + 16] = hi * VAL[dh]! + VAL[mh]!;
      }
    });
    checkRow(GGMLType.Q4_1, { bytes, expected });
  });

  it("Q5_0: f16 d, u32 fifth bits (bit j = element j), nibbles; x = d*(q-16)", () => {
    const qhs = [0xa5a50f0f, 0x80000001, 0xffffffff];
    const bytes = new Uint8Array(22 * qhs.length);
    const expected = new Float32Array(32 * qhs.length);
    qhs.forEach((qh, b) => {
      const o = 22 * b;
      putU16(bytes, o, b === 1 ? H.mhalf : H.half);
      putU32(bytes, o + 2, qh);
      const d = b === 1 ? -0.5 : 0.5;
      for (let j = 0; j < 16; j++) {
        const lo = (j * 3) & 15;
        const hi = (j * 5 + 1) & 15;
        bytes[o + 6 + j] = lo | (hi << 4);
        const q0 = lo | (((qh >>> j) & 1) << 4);
        const q1 = hi | (((qh >>> (j + 16)) & 1) << 4);
        expected[32 * b + j] = (q0 - 16) * d;
        expected[32 * b + j + 16] = (q1 - 16) * d;
      }
    });
    checkRow(GGMLType.Q5_0, { bytes, expected });
  });

  it("Q5_1: f16 d, f16 m, u32 fifth bits, nibbles; x = d*q + m", () => {
    const qhs = [0x0f0fa5a5, 0x7ffffffe];
    const bytes = new Uint8Array(24 * qhs.length);
    const expected = new Float32Array(32 * qhs.length);
    qhs.forEach((qh, b) => {
      const o = 24 * b;
      putU16(bytes, o, H.eighth);
      putU16(bytes, o + 2, b === 0 ? H.m1 : H.half);
      putU32(bytes, o + 4, qh);
      const m = b === 0 ? -1 : 0.5;
      for (let j = 0; j < 16; j++) {
        const lo = (j * 7) & 15;
        const hi = (15 - j) & 15;
        bytes[o + 8 + j] = lo | (hi << 4);
        const q0 = lo | (((qh >>> j) & 1) << 4);
        const q1 = hi | (((qh >>> (j + 16)) & 1) << 4);
        expected[32 * b + j] = q0 * 0.125 + m;
        expected[32 * b + j + 16] = q1 * 0.125 + m;
      }
    });
    checkRow(GGMLType.Q5_1, { bytes, expected });
  });

  it("Q8_0: f16 d, then 32 signed bytes; x = d*q", () => {
    const bytes = new Uint8Array(68);
    const expected = new Float32Array(64);
    for (let b = 0; b < 2; b++) {
      putU16(bytes, 34 * b, b === 0 ? H.eighth : H.m1);
      for (let j = 0; j < 32; j++) {
        const q = j === 0 ? -128 : j === 1 ? 127 : ((j * 37 + b * 11) % 256) - 128;
        bytes[34 * b + 2 + j] = q & 0xff;
        expected[32 * b + j] = q * (b === 0 ? 0.125 : -1);
      }
    }
    checkRow(GGMLType.Q8_0, { bytes, expected });
  });
});

describe("float rows", () => {
  it("F32 little-endian, aligned (fast path) and unaligned", () => {
    const values = new Float32Array([1, -2, 3.5, 1e-40, -1234.5, 65504.5, 0.1, -0]);
    const bytes = new Uint8Array(values.buffer.slice(0));
    checkRow(GGMLType.F32, { bytes, expected: values });
    // Aligned view: bytes at offset 8 of a buffer, read through the Float32Array fast path.
    const aligned = new Uint8Array(8 + bytes.length);
    aligned.set(bytes, 8);
    const out = new Float32Array(values.length);
    dequantizeRow(GGMLType.F32, aligned, 8, out, 0, values.length);
    expect(Array.from(out)).toEqual(Array.from(values));
    expect(Object.is(out[7], -0)).toBe(true);
  });

  it("F16 bit patterns decode as IEEE half precision", () => {
    const pats = [0x3c00, 0xc000, 0x7bff, 0x0001, 0x03ff, 0x8000, 0x3555, 0xfbff];
    const bytes = new Uint8Array(pats.length * 2);
    pats.forEach((p, i) => {
      putU16(bytes, 2 * i, p);
    });
    const expected = new Float32Array([1, -2, 65504, 2 ** -24, 1023 * 2 ** -24, -0, 0.333251953125, -65504]);
    checkRow(GGMLType.F16, { bytes, expected });
  });

  it("BF16 is the top half of an f32", () => {
    const pats = [0x3f80, 0xc000, 0x4049, 0x0001, 0x7f7f, 0xbe80];
    const bytes = new Uint8Array(pats.length * 2);
    pats.forEach((p, i) => {
      putU16(bytes, 2 * i, p);
    });
    const expected = new Float32Array([1, -2, 3.140625, 2 ** -133, 3.3895313892515355e38, -0.25]);
    const n = pats.length;
    const out = new Float32Array(n);
    dequantizeRow(GGMLType.BF16, bytes, 0, out, 0, n);
    expect(Array.from(out)).toEqual(Array.from(expected));
    // The huge value would swamp a dot product; check the rest through checkRow.
    const small = new Uint8Array(bytes.subarray(0, 8));
    checkRow(GGMLType.BF16, { bytes: small, expected: expected.subarray(0, 4) });
  });
});

// ---------------------------------------------------------------- K-quants

/**
 * The 12 scale bytes of Q4_K / Q5_K, from the ggml packing rule: for j < 4,
 * byte j holds scale j and byte j+4 holds min j in their low 6 bits; for j >= 4,
 * byte j+4 holds scale j's low 4 bits (low nibble) and min j's low 4 bits (high
 * nibble), and their top 2 bits go to bits 6-7 of byte j-4 (scale) and byte j (min).
 */
function packKScales(sc: number[], m: number[]): Uint8Array {
  const s = new Uint8Array(12);
  for (let j = 0; j < 8; j++) {
    if (j < 4) {
      s[j]! |= sc[j]!;
      s[j + 4]! |= m[j]!;
    } else {
      s[j + 4] = (sc[j]! & 15) | ((m[j]! & 15) << 4);
      s[j - 4]! |= (sc[j]! >> 4) << 6;
      s[j]! |= (m[j]! >> 4) << 6;
    }
  }
  return s;
}

// Every 6-bit edge: 0, 63, values whose top two bits are 01, 10, 11 in the j >= 4 half.
const SC = [
  [1, 17, 33, 63, 5, 40, 22, 63],
  [63, 0, 9, 2, 16, 47, 31, 48],
];
const MN = [
  [0, 9, 63, 20, 47, 1, 30, 16],
  [5, 63, 0, 31, 63, 32, 15, 0],
];
const D = [
  [H.half, H.quarter],
  [H.sixteenth, H.one],
];

describe("K-quants", () => {
  it("Q4_K scale packing round-trips by hand (spot check of the oracle itself)", () => {
    const s = packKScales(SC[0]!, MN[0]!);
    // sub-block 5: scale 40 = 0b10_1000 -> low nibble 8 in byte 9, top bits 10 in byte 1 bits 6-7
    expect(s[9]! & 15).toBe(8);
    expect(s[1]! >> 6).toBe(2);
    // min 5 = 1 = 0b00_0001 -> high nibble of byte 9 is 1, byte 5 bits 6-7 are 0
    expect(s[9]! >> 4).toBe(1);
    expect(s[5]! >> 6).toBe(0);
  });

  it("Q4_K: d, dmin, 12 scale bytes, 128 nibble bytes in 4 chunks of 64 elements; x = d*sc*q - dmin*m", () => {
    const nb = 2;
    const bytes = new Uint8Array(144 * nb);
    const expected = new Float32Array(256 * nb);
    for (let b = 0; b < nb; b++) {
      const o = 144 * b;
      putU16(bytes, o, D[b]![0]!);
      putU16(bytes, o + 2, D[b]![1]!);
      bytes.set(packKScales(SC[b]!, MN[b]!), o + 4);
      const d = VAL[D[b]![0]!]!;
      const dmin = VAL[D[b]![1]!]!;
      const level = rng(40 + b); // random levels: halves and chunks must not mirror each other
      for (let i = 0; i < 256; i++) {
        const q = Math.floor(level() * 16);
        const chunk = i >> 6;
        const r = i & 63;
        const at = o + 16 + 32 * chunk + (r & 31);
        bytes[at]! |= r < 32 ? q : q << 4;
        const sb = i >> 5;
        expected[256 * b + i] = d * SC[b]![sb]! * q - dmin * MN[b]![sb]!;
      }
    }
    checkRow(GGMLType.Q4_K, { bytes, expected });
  });

  it("Q5_K: d, dmin, scales, 32 high-bit bytes, 128 nibble bytes; x = d*sc*q - dmin*m", () => {
    const nb = 2;
    const bytes = new Uint8Array(176 * nb);
    const expected = new Float32Array(256 * nb);
    for (let b = 0; b < nb; b++) {
      const o = 176 * b;
      putU16(bytes, o, D[b]![0]!);
      putU16(bytes, o + 2, D[b]![1]!);
      bytes.set(packKScales(SC[b]!, MN[b]!), o + 4);
      const d = VAL[D[b]![0]!]!;
      const dmin = VAL[D[b]![1]!]!;
      const level = rng(50 + b);
      for (let i = 0; i < 256; i++) {
        const q = Math.floor(level() * 32);
        const chunk = i >> 6;
        const r = i & 63;
        const l = r & 31;
        const upper = r >= 32 ? 1 : 0;
        bytes[o + 48 + 32 * chunk + l]! |= upper ? (q & 15) << 4 : q & 15;
        // fifth bit of element 64c + l at bit 2c of high byte l, of 64c + 32 + l at bit 2c + 1
        bytes[o + 16 + l]! |= (q >> 4) << (2 * chunk + upper);
        const sb = i >> 5;
        expected[256 * b + i] = d * SC[b]![sb]! * q - dmin * MN[b]![sb]!;
      }
    }
    checkRow(GGMLType.Q5_K, { bytes, expected });
  });

  it("Q6_K: 128 ql bytes, 64 qh bytes, 16 i8 scales, then f16 d; x = d*sc*(q-32)", () => {
    const scales = [
      [-128, -77, -1, 0, 1, 5, 33, 127, -64, 12, -3, 100, 7, -9, 64, 2],
      [3, 127, -128, 45, -45, 1, -1, 88, 19, -100, 0, 6, 70, -7, 11, -2],
    ];
    const dh = [H.eighth, H.mhalf];
    const nb = 2;
    const bytes = new Uint8Array(210 * nb);
    const expected = new Float32Array(256 * nb);
    for (let b = 0; b < nb; b++) {
      const o = 210 * b;
      for (let s = 0; s < 16; s++) bytes[o + 192 + s] = scales[b]![s]! & 0xff;
      putU16(bytes, o + 208, dh[b]!);
      const d = VAL[dh[b]!]!;
      const level = rng(60 + b);
      for (let i = 0; i < 256; i++) {
        const q = Math.floor(level() * 64);
        const half = i >> 7; // each half of 128 uses 64 ql bytes and 32 qh bytes
        const r = i & 127;
        const l = r & 31;
        const group = r >> 5; // 0: ql[l] low, 1: ql[l+32] low, 2: ql[l] high, 3: ql[l+32] high
        const qlAt = o + 64 * half + l + (group & 1 ? 32 : 0);
        bytes[qlAt]! |= group >= 2 ? (q & 15) << 4 : q & 15;
        bytes[o + 128 + 32 * half + l]! |= (q >> 4) << (2 * group);
        expected[256 * b + i] = d * scales[b]![i >> 4]! * (q - 32);
      }
    }
    checkRow(GGMLType.Q6_K, { bytes, expected });
  });
});

describe("quantizers write the layout the decoders read", () => {
  // Values exactly on a format's grid must survive quantize -> dequantize unchanged.
  it("Q4_0 / Q8_0 / Q5_0 reproduce on-grid blocks exactly, bytes included", () => {
    const q40 = new Float32Array(32);
    for (let j = 0; j < 32; j++) q40[j] = (((j * 5) % 16) - 8) * 0.25;
    q40[3] = -2; // the largest magnitude, negative: d = -2 / -8 = 0.25
    const b40 = new Uint8Array(18);
    quantizeRow(GGMLType.Q4_0, q40, 0, 32, b40, 0);
    expect(b40[0] | (b40[1]! << 8)).toBe(H.quarter);
    const out = new Float32Array(32);
    dequantizeRow(GGMLType.Q4_0, b40, 0, out, 0, 32);
    expect(Array.from(out)).toEqual(Array.from(q40));

    const q80 = new Float32Array(32);
    for (let j = 0; j < 32; j++) q80[j] = ((j * 41) % 255) - 127;
    q80[0] = 127;
    const b80 = new Uint8Array(34);
    quantizeRow(GGMLType.Q8_0, q80, 0, 32, b80, 0);
    expect(b80[0] | (b80[1]! << 8)).toBe(H.one);
    for (let j = 0; j < 32; j++) expect((b80[2 + j]! << 24) >> 24).toBe(q80[j]);

    const q50 = new Float32Array(32);
    for (let j = 0; j < 32; j++) q50[j] = (((j * 7) % 32) - 16) * 0.5;
    q50[5] = -8; // d = -8 / -16 = 0.5
    const b50 = new Uint8Array(22);
    quantizeRow(GGMLType.Q5_0, q50, 0, 32, b50, 0);
    dequantizeRow(GGMLType.Q5_0, b50, 0, out, 0, 32);
    expect(Array.from(out)).toEqual(Array.from(q50));
  });
});
