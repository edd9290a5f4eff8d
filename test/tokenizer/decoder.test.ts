import { describe, expect, it } from "vitest";
import { readGGUF } from "../../src/gguf/reader.js";
import { IncrementalDecoder, type Tokenizer, tokenizerFromGGUF } from "../../src/tokenizer/index.js";
import { testModel, VOCAB_GPT2, VOCAB_PHI3, VOCAB_SPM } from "../helpers/models.js";
import { rng } from "../helpers/rng.js";

const spm = tokenizerFromGGUF(readGGUF(testModel(VOCAB_SPM)));
const gpt2 = tokenizerFromGGUF(readGGUF(testModel(VOCAB_GPT2)));
const phi3 = tokenizerFromGGUF(readGGUF(testModel(VOCAB_PHI3)));

function stream(
  tok: Tokenizer,
  ids: readonly number[],
  opts?: ConstructorParameters<typeof IncrementalDecoder>[1],
) {
  const d = new IncrementalDecoder(tok, opts);
  const pieces = ids.map((id) => d.push(id));
  pieces.push(d.flush());
  return pieces;
}

const TEXTS = [
  "Hello world",
  " Hello world",
  "🦙 llamas: 日本語, ёлка, Ελληνικά, ‍👨‍👩‍👧 and ½",
  "\n\n  code() {\n\treturn 1;\n}",
  "ied 4 ½ months",
  "",
];

describe("IncrementalDecoder", () => {
  it("holds the bytes of a character split across byte tokens until it is complete (spm byte fallback)", () => {
    const ids = spm.encode("a🦙b", { addSpecial: false });
    // The llama is not in the vocabulary: it comes as four <0xNN> tokens.
    const bytes = ids.filter((id) => /^<0x[0-9A-F]{2}>$/.test(spm.tokenText(id)));
    expect(bytes.map((id) => spm.tokenText(id))).toEqual(["<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]);
    const pieces = stream(spm, ids);
    expect(pieces.join("")).toBe("a🦙b");
    expect(pieces).toContain("🦙");
    expect(pieces.some((p) => p.includes("\uFFFD"))).toBe(false);
    // Nothing comes out for the first three bytes.
    const first = ids.indexOf(bytes[0]!);
    expect(pieces.slice(first, first + 3)).toEqual(["", "", ""]);
  });

  it("holds partial characters across byte-level BPE tokens too (gpt-2)", () => {
    const ids = gpt2.encode(" this is 🦙.cpp", { addSpecial: false });
    const pieces = stream(gpt2, ids);
    expect(pieces.join("")).toBe(" this is 🦙.cpp");
    expect(pieces.some((p) => p.includes("\uFFFD"))).toBe(false);
    expect(pieces.some((p) => p.includes("🦙"))).toBe(true);
  });

  it("replaces a lone invalid byte with U+FFFD once it is known to be invalid", () => {
    const e2 = spm.tokenId("<0xE2>")!;
    const hello = spm.tokenId("▁hello")!;
    const d = new IncrementalDecoder(spm, { continuation: true });
    expect(d.push(e2)).toBe("");
    // A space cannot continue a three-byte character: the held byte becomes U+FFFD.
    expect(d.push(hello)).toBe("\uFFFD hello");
    expect(d.push(e2)).toBe("");
    expect(d.push(spm.tokenId("<0x82>")!)).toBe("");
    expect(d.flush()).toBe("\uFFFD");
    // Two bytes that are never valid (a continuation byte first, then 0xFF).
    const d2 = new IncrementalDecoder(spm);
    expect(d2.push(spm.tokenId("<0x80>")!)).toBe("\uFFFD");
    expect(d2.push(spm.tokenId("<0xFF>")!)).toBe("\uFFFD");
    expect(d2.flush()).toBe("");
  });

  it.each([
    ["spm", spm],
    ["gpt-2", gpt2],
    ["phi-3", phi3],
  ] as const)("pushes + flush give decode's text for real token streams (%s)", (_, tok) => {
    for (const text of TEXTS) {
      for (const addSpecial of [false, true]) {
        const ids = tok.encode(text, { addSpecial });
        for (const skipSpecial of [false, true]) {
          expect(
            stream(tok, ids, { skipSpecial }).join(""),
            JSON.stringify({ text, addSpecial, skipSpecial }),
          ).toBe(tok.decode(ids, { skipSpecial }));
        }
      }
    }
    const chat = tok.encode("<|user|>\nHi there 🦙<|end|>\n<|assistant|>\nHello!<|end|>");
    for (const skipSpecial of [false, true]) {
      expect(stream(tok, chat, { skipSpecial }).join("")).toBe(tok.decode(chat, { skipSpecial }));
    }
  });

  it("never throws and matches decode on random token streams (random-weight model output)", () => {
    for (const tok of [spm, gpt2, phi3]) {
      const r = rng(1234);
      for (let n = 0; n < 200; n++) {
        const len = 1 + Math.floor(r() * 12);
        const ids = Array.from({ length: len }, () =>
          // Bias towards SPM byte tokens (ids 3..258) so broken sequences are common.
          r() < 0.5 ? 3 + Math.floor(r() * 256) : Math.floor(r() * tok.vocabSize),
        );
        for (const skipSpecial of [false, true]) {
          const pieces = stream(tok, ids, { skipSpecial });
          expect(pieces.join("")).toBe(tok.decode(ids, { skipSpecial }));
          // Every piece is well-formed text: no lone surrogates.
          for (const p of pieces) expect(p).toBe(Buffer.from(p, "utf8").toString("utf8"));
        }
      }
    }
  });

  it("follows llama.cpp's leading-space rule for SentencePiece", () => {
    const ids = spm.encode("Once upon a time", { addSpecial: false });
    expect(spm.tokenText(ids[0]!)).toBe("▁Once");
    // Decoding a sequence drops the space prefix of its first token...
    expect(spm.decode(ids)).toBe("Once upon a time");
    expect(stream(spm, ids).join("")).toBe("Once upon a time");
    // ...unless a BOS comes first (llama_detokenize keeps it then).
    const withBos = spm.encode("Once upon a time");
    expect(spm.decode(withBos, { skipSpecial: true })).toBe(" Once upon a time");
    expect(stream(spm, withBos, { skipSpecial: true }).join("")).toBe(" Once upon a time");
    // Tokens that continue a prompt keep their space, as llama.cpp's token_to_piece does.
    const more = spm.encode("upon a time", { addSpecial: false });
    expect(stream(spm, more, { continuation: true }).join("")).toBe(" upon a time");
    // BPE has no space prefix.
    const g = gpt2.encode(" upon a time", { addSpecial: false });
    expect(stream(gpt2, g).join("")).toBe(" upon a time");
  });

  it("renders control tokens unless skipSpecial", () => {
    const ids = phi3.encode("<|user|>\nHi<|end|>");
    expect(stream(phi3, ids).join("")).toBe("<s><|user|> Hi<|end|>");
    expect(stream(phi3, ids, { skipSpecial: true }).join("")).toBe(" Hi");
  });
});
