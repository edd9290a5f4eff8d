import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ModelFileError } from "../../src/errors.js";
import { readGGUF } from "../../src/gguf/reader.js";
import { meta, withMetadata, writeGGUF } from "../../src/gguf/writer.js";
import { tokenizerFromGGUF } from "../../src/tokenizer/index.js";
import { cleanTokenizationSpaces } from "../../src/tokenizer/tokenizer.js";
import { llamaDetokenize, llamaTokenize } from "../helpers/llamacpp.js";
import { testModel, VOCAB_GPT2, VOCAB_PHI3, VOCAB_SPM } from "../helpers/models.js";
import { tempDir } from "../helpers/tmp.js";

const spm = tokenizerFromGGUF(readGGUF(testModel(VOCAB_SPM)));
const gpt2 = tokenizerFromGGUF(readGGUF(testModel(VOCAB_GPT2)));
const text = (b: Uint8Array) => Buffer.from(b).toString("latin1");

describe("tokenizer metadata", () => {
  it("reads kind, size, special ids and flags", () => {
    expect(spm).toMatchObject({
      kind: "spm",
      vocabSize: 32000,
      bos: 1,
      eos: 2,
      unk: 0,
      addBos: true,
      addEos: false,
    });
    expect(spm.addSpacePrefix).toBe(true);
    expect(spm.cleanSpaces).toBe(false);
    expect(gpt2).toMatchObject({
      kind: "bpe",
      vocabSize: 50257,
      bos: 50256,
      eos: 50256,
      addBos: false,
      addEos: false,
    });
    expect(gpt2.pre).toBe("gpt-2");
    expect(gpt2.addSpacePrefix).toBe(false);
    expect(gpt2.cleanSpaces).toBe(true);
    expect(spm.isEog(2)).toBe(true);
    expect(spm.isEog(1)).toBe(false);
  });

  it("reports an unsupported tokenizer model as a ModelFileError", () => {
    const dir = tempDir();
    const path = join(dir, "t5.gguf");
    writeGGUF(
      path,
      withMetadata(readGGUF(testModel(VOCAB_SPM)).metadata, { "tokenizer.ggml.model": meta.str("t5") }),
      [],
    );
    expect(() => tokenizerFromGGUF(readGGUF(path))).toThrow(ModelFileError);
    expect(() => tokenizerFromGGUF(readGGUF(path))).toThrow(/tokenizer "t5" is not supported/);
  });

  it("honours add_space_prefix = false and add_eos_token = true like llama.cpp", async () => {
    const dir = tempDir();
    const path = join(dir, "spm-flags.gguf");
    const source = readGGUF(testModel(VOCAB_SPM));
    writeGGUF(
      path,
      withMetadata(source.metadata, {
        "tokenizer.ggml.add_space_prefix": meta.bool(false),
        "tokenizer.ggml.add_eos_token": meta.bool(true),
      }),
      [],
    );
    const tok = tokenizerFromGGUF(readGGUF(path));
    expect(tok.addSpacePrefix).toBe(false);
    expect(tok.addEos).toBe(true);
    for (const s of ["Hello world", " Hello", "a\nb"]) {
      expect(tok.encode(s, { addSpecial: false })).toEqual(await llamaTokenize(path, s));
      expect(tok.decode(tok.encode(s, { addSpecial: false }))).toBe(s);
    }
    const ids = tok.encode("Hello");
    expect(ids[0]).toBe(1);
    expect(ids.at(-1)).toBe(2);
    expect(tok.decode(ids, { skipSpecial: true })).toBe("Hello");
  });
});

describe("tokenBytes / tokenText", () => {
  it("spm: ▁ becomes a space, <0xNN> its byte, control tokens nothing unless rendered", () => {
    const hello = spm.tokenId("▁Hello")!;
    expect(spm.tokenText(hello)).toBe("▁Hello");
    expect(text(spm.tokenBytes(hello))).toBe(" Hello");
    expect([...spm.tokenBytes(spm.tokenId("<0x0A>")!)]).toEqual([10]);
    expect([...spm.tokenBytes(spm.tokenId("<0xE2>")!)]).toEqual([0xe2]);
    expect(spm.tokenBytes(1).length).toBe(0);
    expect(text(spm.tokenBytes(1, true))).toBe("<s>");
    expect(spm.isControl(1)).toBe(true);
    expect(spm.isControl(hello)).toBe(false);
    expect(spm.tokenBytes(-1).length).toBe(0);
    expect(spm.tokenBytes(1e9).length).toBe(0);
  });

  it("bpe: byte characters become their bytes", () => {
    expect(text(gpt2.tokenBytes(gpt2.tokenId("Ġworld")!))).toBe(" world");
    expect(text(gpt2.tokenBytes(gpt2.tokenId("Ċ")!))).toBe("\n");
    // 12520 is " " followed by the first two bytes of a four-byte character.
    expect([...gpt2.tokenBytes(12520)]).toEqual([0x20, 0xf0, 0x9f]);
    expect(gpt2.tokenBytes(50256).length).toBe(0);
    expect(text(gpt2.tokenBytes(50256, true))).toBe("<|endoftext|>");
  });
});

describe("encode", () => {
  it("adds BOS only with addSpecial, and parses special text by default", () => {
    expect(spm.encode("Hi")[0]).toBe(1);
    expect(spm.encode("Hi", { addSpecial: false })[0]).not.toBe(1);
    expect(spm.encode("<s>Hi", { addSpecial: false })).toEqual([
      1,
      ...spm.encode("Hi", { addSpecial: false }),
    ]);
    expect(spm.encode("<s>Hi", { addSpecial: false, parseSpecial: false })).not.toContain(1);
    expect(spm.encode("")).toEqual([1]);
    expect(spm.encode("", { addSpecial: false })).toEqual([]);
  });

  it("handles lone surrogates as U+FFFD, as UTF-8 encoding would", async () => {
    const s = "a\ud800b";
    expect(spm.encode(s, { addSpecial: false })).toEqual(spm.encode("a\ufffdb", { addSpecial: false }));
    expect(gpt2.encode(s)).toEqual(await llamaTokenize(testModel(VOCAB_GPT2), "a\ufffdb"));
  });

  it("tokenizes a long prompt quickly (priority queue, no quadratic rescans)", () => {
    const base = "Once upon a time, there was a little girl named Lily. Привет 你好 🦙 I'm 12345\n";
    const long = base.repeat(Math.ceil(10_000 / base.length));
    const phi3 = tokenizerFromGGUF(readGGUF(testModel(VOCAB_PHI3)));
    for (const tok of [spm, gpt2, phi3]) {
      const ids = tok.encode(long, { addSpecial: false });
      expect(tok.decode(ids)).toBe(long);
    }
  });
});

describe("clean-up of tokenization spaces (decode with cleanSpaces)", () => {
  it("matches llama_detokenize on gpt-2", async () => {
    const path = testModel(VOCAB_GPT2);
    for (const s of [
      "Hello , world ! Is it ? Yes .",
      "it 's a ' quote ' and I 'm sure they 're here , we 've seen it 'll be 'd",
      " ' ' ' x",
      "a ''b' ' c",
    ]) {
      const ids = gpt2.encode(s);
      expect(gpt2.decode(ids, { cleanSpaces: true }), s).toBe(await llamaDetokenize(path, ids));
      expect(gpt2.decode(ids)).toBe(s);
    }
  });

  it("does nothing for vocabularies that do not ask for it", () => {
    const ids = spm.encode("Hello , world", { addSpecial: false });
    expect(spm.decode(ids, { cleanSpaces: true })).toBe("Hello , world");
  });

  it("runs llama.cpp's three passes", () => {
    const clean = (s: string) => Buffer.from(cleanTokenizationSpaces(Buffer.from(s))).toString();
    expect(clean("a , b . c ? d !")).toBe("a, b. c? d!");
    expect(clean("x ' y")).toBe("x'y");
    expect(clean("it 's I 'm we 're you 've he 'll she 'd don 't")).toBe(
      "it's I'm we're you've he 'll she 'd don 't",
    );
    expect(clean("")).toBe("");
  });
});
