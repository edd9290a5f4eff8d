import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import { GGMLType, TYPE_GEOMETRY } from "../../src/gguf/types.js";
import { dequantize, quantize } from "../../src/quant/index.js";
import { fromHex, hex, relRmsError } from "./data.js";

/**
 * Golden data produced by llama.cpp itself: the ggml library that ships with
 * node-llama-cpp (libggml-base.so) was called on the input below through its
 * exported quantize_row_*_ref, dequantize_row_*, ggml_fp32_to_fp16_row and
 * ggml_fp32_to_bf16_row_ref, and the outputs hashed (or, for the K-quants,
 * kept whole). The input is 512 values: one super-block of a smooth signal in
 * [-0.9, 0.9], and one scaled by 0.01 and shifted to mostly negative values.
 */
function goldenInput(): Float32Array {
  const x = new Float32Array(512);
  for (let i = 0; i < 512; i++) {
    const v = Math.sin(i * 0.37) * 0.8 + 0.1 * Math.cos(i * 1.3);
    x[i] = i < 256 ? v : 0.01 * v - 0.004;
  }
  return x;
}

const sha256 = (b: Uint8Array | Float32Array | Uint16Array) =>
  createHash("sha256")
    .update(new Uint8Array(b.buffer, b.byteOffset, b.byteLength))
    .digest("hex");

/** ggml's reference quantizer output for the legacy types (sha256 of all 512 values' blocks). */
const LEGACY: Record<string, { sha256: string; firstBlock: string; relError: number }> = {
  Q4_0: {
    sha256: "15444da17b069014aff7dce5cdea21a1d237416f4a64caea2dc523d4c4d8aa66",
    firstBlock: "f62e597bbceeffffeeebd9a7653220201214",
    relError: 0.060328,
  },
  Q4_1: {
    sha256: "8bf1e2bfb6f37e42254421da9873bdb6a9ff620a3e2077563542b44058949def",
    firstBlock: "692ff6ba587aabddefefdddac897653220201214",
    relError: 0.058728,
  },
  Q5_0: {
    sha256: "5210abdc678b9bae9d3d9139ed826b6cca10ae430f4e7ee09dd0964b7b5b2fcd",
    firstBlock: "f62aff01fc03a2e658ccefefccc6923eca7450412418",
    relError: 0.03082,
  },
  Q5_1: {
    sha256: "b20b99f5eb14f451557050127c4ce0dcffeb13e0bad1ee6ac867238a9e9791da",
    firstBlock: "2c2bf6baff01fc03a1e548bbefdfcbb5913eba6450412417",
    relError: 0.028487,
  },
  Q8_0: {
    sha256: "34db6f24471f0c2fc22d8880ae661042c521b679fbacecb3a1833211a5771686",
    firstBlock: "041f0f2e425e7b7f5e2f0df4cfa08186a3bdd1f2295d726c625d4b1bdfb5a69e908c",
    relError: 0.003608,
  },
};

/** ggml's reference quantizer output for the K-quants, the sha256 of ggml's dequantization of it, and its error. */
const KQUANT: Record<string, { bytes: string; dequantSha256: string; relError: number }> = {
  Q4_K: {
    bytes:
      "15183323fbf9fcfbfffafefbbbcfdffa285a8badbfdffdfad8a785624010020425374a6daedeededdcd9c693523221112111" +
      "0206286a8b9dbfdefceac8a784614011021324374a7daedddddddbd8b583a57342312010030638698b9dbfdeecdab8968361" +
      "3011021324374a7dadcdcdcdedeceae7b48352413011031648798badcefdfbe9c8a693613011122324375a8c3b01f70afcfd" +
      "fdfdfcfdfcfccccbfeef5c9dcedeefeefbe8b574534130110427487a8dafdffefcebc9b6936131121223122325396c9dcdde" +
      "dfedfad7a574524020020427587a8dafdffdfcdbc9b69251925121121223263a6cadcedfeffdfad7a574624020020537587b" +
      "8ebfeffdfcdbecdbc9b5835222222224274a7cadcecfeffdfac79674624021031537596b8ebf",
    dequantSha256: "ddaa0f138d0bee3e438595228dcba771bda925fe4bcea57fda55d5726ab2ef74",
    relError: 0.052549,
  },
  Q5_K: {
    bytes:
      "77133923fefefefefffefcfdcebdefeee1e1c3c387870f0f1f1e3e3c7c78f8f0f0e0e1c1c38387070f0f1e1e3c7c78f852b5" +
      "185b7fbffbf5a15e1ae4903105185a7ea5eb5ebddccbb9b38c27b56452325131151b51c4174b7fcef9e4914e18e280210427" +
      "597e95fb6cbccbcbc8b18a167a06a5635021061c61c4174c8fddf8d4814d17d270120426496f96fb7cbbcccbcccbd7c07a07" +
      "a5725022072d81d4184d9fecf8c5825d27d2612315365a60a71b9900c80afffdfdfdfffefefddcddedfee1c3c387870f0f1e" +
      "1e3c3c7878f0f0e0e1c1c38387070f0f1f1e3e3c7c78f8f0b82b8bbccddce6cf6af8b5825013093e91e41a5ebffcf8c5826d" +
      "26c26224254624364b63b93b8cadbedce5bf5be8b5814004094e91d50b5fbffce9b6826c25b215a2422334363c64c94a8cae" +
      "cfebe4ae4be8b48030040a5da1d60c6fcefbe9b6d9b7917a14a3533343373d74e85a8cafcffae39f3cf8c38031062a6da1d7" +
      "1d7f",
    dequantSha256: "1997c46399f03e8ecda46ce4d8cbf89b4992c7b9bf3b79d6f6b3cad374bf2843",
    relError: 0.026014,
  },
  Q6_K: {
    bytes:
      "d4db5077ce5ff77c031db458c132e9a0033cabf94fedca89b4a7978c284662e15a98d4db4068cf6ff66b032dc357c1331a53" +
      "0e43a3e530f2e495bbaaaa95293cba9205195efdb3561c46ffb530a33dd5055de054b0442acdd3905f39bbea0b9a90aeca91" +
      "f4095dfbb1450d470fc631a5d33b056cef54b1553acdd4916039badaf2f6fbebdf9f4f4e0e090914146060b14d0d0a0b1713" +
      "6373b3f2f1f4f8ecdc8cf6f7fbef9f8f4f0e0d0904146060b0b10e090914106070b0f1f2f6fbefdf9f4f7b717b9687798677" +
      "86768077798478856f0b6286f7a829577f95ae7be742f0b46c13075dd43b7dd862beb96127f1910375370f293266e7a82a67" +
      "7fa5bf7bd732d0946b12076dd53c7ce762ceb96026f091f335f172c33307101b126517ca2b568cc3af4bb54000b64d02278e" +
      "e72c7a0682bfa86d33f061b13216101b127528cb2c457cb4a03bb54001b74e02279fe72b890502060a1a2a6aa9a9a4a49090" +
      "40400001010506161a5a6a69a9a5a49490504000a49090404000010106061a1a6a6aa9a9a4a4949050404001010506161a6a" +
      "6aa98288828a83818e828a848f8190818f803580",
    dequantSha256: "576b873ce91a8fe50e9bb909d930ae3998f2deba55e5d2ead9dc604cb17e5fe2",
    relError: 0.011816,
  },
};

/**
 * The low-bit types (issue 21), produced the same way (quantize_row_q2_K_ref, quantize_row_q3_K_ref,
 * quantize_row_iq4_nl_ref, quantize_row_iq4_xs_ref and the matching dequantize_row_* of the
 * libggml-base.so in @node-llama-cpp/linux-x64, called through Python's ctypes on the input above).
 * randomSha256: ggml's dequantization of 1024 elements of arbitrary bytes (randomBlocks below), so
 * every scale and quant bit pattern is decoded, not only those a quantizer writes.
 */
const LOW_BIT: Record<
  string,
  { bytes: string; dequantSha256: string; relError: number; randomSha256: string }
> = {
  Q2_K: {
    bytes:
      "ffccdeabdeedcdddcddddedcddcdddcd02060a1b2b6fafbebef9e9e4e4909041410106171b6f6f7fbffefdf8f4e09090f9f8" +
      "e4e49090404102061a1b6b6fbebebef9e9e4a49080410105060b1f1f6fbff1286c2becddecdddceddceddcffdceddceddbfd" +
      "070b1f2f7fbffffef9f9e4d49050414106061b1b6f6fbebefaf9f8e4e0908040f8e4e0d080400102070b1f2f7fbffefdf9f5" +
      "e4d49090414106061b5b6f6fbefe4d0eed12",
    dequantSha256: "6c449d2f894c55dcfff701b84dbcdd6c1de24c21ca9b30328b61af7912e4c608",
    relError: 0.229324,
    randomSha256: "ee299ec5c5fc2af87cb344b2c6b5ef3703ff1b00aa300a34b34307882cbb0083",
  },
  Q3_K: {
    bytes:
      "ddfdffffbfbb3b33332322024444c4cc32332323014545cdcddddcfcfefebabaf8fdf2d78b7b2fdd884413318cc8e5368f48" +
      "19636b87e333b2f5f7fee5ddbd2df9f2e6cbbb2fee9d9857227d88d5227789542671b8d5e176b7f8fee3db8f6f1fa676b075" +
      "49a869a73cc03cc3a6a0c1c1838307070f0e1e1c3c387870e0e0c0c181830307070f0e1e1c3c387870f0181d217585d51457" +
      "525d49742490914247182d61b689d81453524d483420d1814c443010c0410207081d217586d51b665e5d7924e49182460b18" +
      "2d61b585d414520352045121542000000000ab86",
    dequantSha256: "9fa9494b8ada22b31f13f4302b8f7f8bed03c5d06315e71749ff99bd6ba835f6",
    relError: 0.120843,
    randomSha256: "870034ba4068cd68e5f3b0e54c3369850dc59cefe27eb11026dfc02f28592993",
  },
  IQ4_NL: {
    bytes:
      "1f1f497cbdeeffffeeecd9a75421201012032d1f2235497bbdeeffffeeebd9a7542120100c9fffffeedac694431110101214" +
      "3769bcdf189fcefeffffeddac6854311101012143679349f6b9ddefeffffeddac785431110111215369f33476b9ddeffffff" +
      "eddac78533211011509f011133486b9ddeffffefedd9b77533211d9f2101011133486baddeffffefedd9b7757006587a9aba" +
      "cbaa9875634211000011122487062346597aaabbcbaa9774633211001011650601112346597aaabbbbaa9774633211009506" +
      "110101112346597aaacbbbaa97846332840631201101011133465979aacbbbaa9784c006654331211101011234465989aabb" +
      "bba9c006b998654331211101011234475889babbd506abbab998654331211101012234475889",
    dequantSha256: "a605f7753374f77a13ccdc086dd0fe765e090e211b6146ac82c60661f9dd9fcb",
    relError: 0.066534,
    randomSha256: "ff23a5d1c0e23b56464bb26d6a8e7edf6ab077522d12a91427f643e010184c70",
  },
  IQ4_XS: {
    bytes:
      "878bf0ff00eeeeef497bbdeeffefeeebd9a75432202112132235497bbdeeffefeeebd9a754322021ffffeedac69443111010" +
      "12143769bcdfcefeffffeedac68543111010121436796b9ddeffffffeddac78533111010121423476b9ddeffffffeddac785" +
      "33111011011133486b9ddeffffefedd9b77533212101011133486baddeffffefedd9b7753880000033131101587a9abbcbaa" +
      "987463321100001012142345597aaacbcbaa977463321100001101112346597aaacbcbaa977463321100110101123346597a" +
      "aabbbbaa9784633231211101011233465979aabbbbaa9784654331211101011234465989aabbbba9b9986543312111010112" +
      "34475889aabbabbab998654331211101112234475889",
    dequantSha256: "4f1ede68e0383abfe6ef93e01a306d909c3d9343eaf1281897d2d4a24827edb5",
    relError: 0.063624,
    randomSha256: "6728b9ebc3eccb729ebb355985df5e12e4f86927d8c299429a77b00b6674a493",
  },
};

/** The f16 scales written into randomBlocks: normal, small, negative and subnormal values. */
const RANDOM_D = [0x3c00, 0x1234, 0xb555, 0x0003];
const RANDOM_DMIN = [0x2e66, 0x8123, 0x3000, 0x0200];

/**
 * 1024 elements of blocks of `type` filled with bytes from a 31-bit LCG (x = x·1103515245 + 12345,
 * byte = bits 16..23), then the f16 scales overwritten with RANDOM_D / RANDOM_DMIN (block b takes
 * entry b % 4) so no scale is infinite or NaN.
 */
function randomBlocks(type: GGMLType): Uint8Array {
  const { blockSize, typeSize } = TYPE_GEOMETRY[type]!;
  const nb = 1024 / blockSize;
  const b = new Uint8Array(nb * typeSize);
  let s = 12345;
  for (let i = 0; i < b.length; i++) {
    s = (Math.imul(s, 1103515245) + 12345) & 0x7fffffff;
    b[i] = (s >>> 16) & 255;
  }
  const put = (o: number, v: number) => {
    b[o] = v & 255;
    b[o + 1] = v >>> 8;
  };
  for (let k = 0; k < nb; k++) {
    const o = k * typeSize;
    if (type === GGMLType.Q2_K) {
      put(o + 80, RANDOM_D[k % 4]!);
      put(o + 82, RANDOM_DMIN[k % 4]!);
    } else if (type === GGMLType.Q3_K) put(o + 108, RANDOM_D[k % 4]!);
    else put(o, RANDOM_D[k % 4]!);
  }
  return b;
}

const F16_SHA256 = "394d4b39d6e76c3a4e673502a81d7e3e11d2ce591e1460f117141a2343b45826";
const BF16_SHA256 = "dab5f94a4ddbfa393b821a823e3b05e6a7daf1b3b34718a3d209b7d52376d756";

describe("agreement with llama.cpp (golden outputs of ggml)", () => {
  const x = goldenInput();

  it.each(Object.keys(LEGACY))("%s quantizes to the same bytes as ggml's reference quantizer", (name) => {
    const type = GGMLType[name as keyof typeof GGMLType];
    const q = quantize(type, x, 512);
    const g = LEGACY[name]!;
    expect(hex(q.subarray(0, g.firstBlock.length / 2))).toBe(g.firstBlock);
    expect(sha256(q)).toBe(g.sha256);
    expect(relRmsError(dequantize(type, q, 512, 512), x)).toBeCloseTo(g.relError, 5);
  });

  it.each(Object.keys(KQUANT))(
    "%s decodes ggml's blocks exactly as ggml does, and quantizes as well",
    (name) => {
      const type = GGMLType[name as keyof typeof GGMLType];
      const g = KQUANT[name]!;
      const theirs = dequantize(type, fromHex(g.bytes), 512, 256);
      expect(sha256(theirs)).toBe(g.dequantSha256);
      expect(relRmsError(theirs, x)).toBeCloseTo(g.relError, 5);
      // Our own search need not pick the same codes, but must be at least about as accurate.
      const ours = dequantize(type, quantize(type, x, 256), 512, 256);
      expect(relRmsError(ours, x)).toBeLessThan(g.relError * 1.05);
    },
  );

  it.each(Object.keys(LOW_BIT))(
    "%s decodes ggml's blocks and arbitrary bytes exactly as ggml does, and quantizes about as well",
    (name) => {
      const type = GGMLType[name as keyof typeof GGMLType];
      const g = LOW_BIT[name]!;
      const bs = TYPE_GEOMETRY[type]!.blockSize;
      const theirs = dequantize(type, fromHex(g.bytes), 512, bs);
      expect(sha256(theirs)).toBe(g.dequantSha256);
      expect(relRmsError(theirs, x)).toBeCloseTo(g.relError, 5);
      expect(sha256(dequantize(type, randomBlocks(type), 1024, 1024))).toBe(g.randomSha256);
      // Our own search need not pick the same codes, but must be at least about as accurate.
      const ours = dequantize(type, quantize(type, x, 256), 512, 256);
      expect(relRmsError(ours, x)).toBeLessThan(g.relError * 1.05);
    },
  );

  it("F16 and BF16 conversions match ggml's", () => {
    const h = new Uint16Array(512);
    const b = new Uint16Array(512);
    const qh = quantize(GGMLType.F16, x, 512);
    const qb = quantize(GGMLType.BF16, x, 512);
    for (let i = 0; i < 512; i++) {
      h[i] = qh[2 * i]! | (qh[2 * i + 1]! << 8);
      b[i] = qb[2 * i]! | (qb[2 * i + 1]! << 8);
    }
    expect(sha256(h)).toBe(F16_SHA256);
    expect(sha256(b)).toBe(BF16_SHA256);
  });
});
