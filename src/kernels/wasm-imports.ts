/**
 * What an instance of the kernels module imports: its memory, and what the host's relaxed 8-bit dot
 * does with an unsigned byte of 128 or more, which decides whether Q8_0's tiled matmul may use it
 * (src/kernels/wasm/kernels.ts, packedRows). Every instance of the module (the main thread's and
 * each kernel thread's) is made with these imports.
 */

/** The project's `lib` setting does not declare the WebAssembly JS API. */
const WA = (
  globalThis as unknown as {
    WebAssembly: {
      Module: new (b: Uint8Array) => object;
      Instance: new (m: object) => { exports: { p(): number } };
    };
  }
).WebAssembly;

/** How this machine's `i32x4.relaxed_dot_i8x16_i7x16_add_s` multiplies bytes (see relaxedDot). */
export type RelaxedDot = "u8×i8" | "saturating" | "i8×i8" | "unknown" | "unavailable";

let probed: { value: number | undefined; kind: RelaxedDot } | undefined;

/**
 * The relaxed dot of 127 (first operand) and 0xFF (second) in every byte, computed by a tiny
 * hand-assembled module: 4 · 127 · 255 = 129,540 per lane means u8 × i8 with no intermediate
 * saturation (x64 with VNNI: vpdpbusd), 2 · 32,767 = 65,534 that pairs saturate to i16 (pmaddubsw +
 * pmaddwd: x64 without VNNI), −508 that both bytes are signed (arm64's sdot). Computed once.
 */
export function relaxedDot(): { value: number | undefined; kind: RelaxedDot } {
  if (probed !== undefined) return probed;
  const v128Const = (byte: number) => [0xfd, 0x0c, ...new Array<number>(16).fill(byte)];
  const body = [
    0x00, // no locals
    ...v128Const(127),
    ...v128Const(0xff),
    ...v128Const(0),
    ...[0xfd, 0x93, 0x02], // i32x4.relaxed_dot_i8x16_i7x16_add_s
    ...[0xfd, 0x1b, 0x00], // i32x4.extract_lane 0
    0x0b,
  ];
  const section = (id: number, contents: number[]) => [id, contents.length, ...contents];
  const bytes = new Uint8Array([
    ...[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00],
    ...section(1, [0x01, 0x60, 0x00, 0x01, 0x7f]), // type () -> i32
    ...section(3, [0x01, 0x00]),
    ...section(7, [0x01, 0x01, 0x70, 0x00, 0x00]), // export "p"
    ...section(10, [0x01, body.length, ...body]),
  ]);
  try {
    const p = new WA.Instance(new WA.Module(bytes)).exports.p();
    const kind: RelaxedDot =
      p === 129_540 ? "u8×i8" : p === 65_534 ? "saturating" : p === -508 ? "i8×i8" : "unknown";
    probed = { value: p, kind };
  } catch {
    probed = { value: undefined, kind: "unavailable" };
  }
  return probed;
}

/** The imports of an instance of the kernels module on `memory`. */
export function kernelImports(memory: unknown): Record<string, Record<string, unknown>> {
  // dotU8: Q8_0's tiled matmul adds 128 to its weights (to make them unsigned), exact only where
  // the dot reads bytes ≥ 128 as unsigned and never saturates; elsewhere it keeps the i16 path.
  return { env: { memory }, kernels: { dotU8: relaxedDot().kind === "u8×i8" ? 1 : 0 } };
}
