/**
 * Conformance with llama.cpp: the reference tokenizations shipped with its vocab files
 * (`vocab/*.gguf.inp` / `.out`), and, for what those files do not cover, llama.cpp itself
 * through node-llama-cpp.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { readGGUF } from "../../src/gguf/reader.js";
import { type Tokenizer, tokenizerFromGGUF } from "../../src/tokenizer/index.js";
import { llamaDetokenize, llamaTokenize } from "../helpers/llamacpp.js";
import {
  STORIES_260K,
  TINY_RANDOM,
  testModel,
  VOCAB_GPT2,
  VOCAB_PHI3,
  VOCAB_SPM,
} from "../helpers/models.js";

/**
 * Reads a test pair the way llama.cpp's test-tokenizer-0 does: the .inp file is split on
 * "\n__ggml_vocab_test__\n" (so each string's own trailing newline belongs to the separator),
 * and line i of the .out file holds the ids of string i, space-separated, without BOS.
 */
function readCases(vocabPath: string): { text: string; ids: number[] }[] {
  const raw = readFileSync(`${vocabPath}.inp`, "utf8");
  const sep = "\n__ggml_vocab_test__\n";
  const inputs: string[] = [];
  for (let pos = 0; pos < raw.length; ) {
    const next = raw.indexOf(sep, pos);
    if (next < 0) {
      inputs.push(raw.slice(pos));
      break;
    }
    inputs.push(raw.slice(pos, next));
    pos = next + sep.length;
  }
  const lines = readFileSync(`${vocabPath}.out`, "utf8").split("\n");
  if (lines.at(-1) === "") lines.pop();
  expect(lines.length).toBe(inputs.length);
  return inputs.map((text, i) => {
    const line = lines[i]!.trim();
    return { text, ids: line === "" ? [] : line.split(" ").map(Number) };
  });
}

const tokenizers = new Map<string, Tokenizer>();
function tok(name: string): Tokenizer {
  let t = tokenizers.get(name);
  if (!t) {
    t = tokenizerFromGGUF(readGGUF(testModel(name)));
    tokenizers.set(name, t);
  }
  return t;
}

const VOCABS = [
  { name: VOCAB_SPM, kind: "spm", cases: 46 },
  { name: VOCAB_GPT2, kind: "bpe", cases: 46 },
  { name: VOCAB_PHI3, kind: "spm", cases: 46 },
] as const;

describe.each(VOCABS)("$name", ({ name, kind, cases }) => {
  const path = testModel(name);
  const all = readCases(path);

  it(`has ${cases} reference cases and is a ${kind} vocabulary`, () => {
    expect(all.length).toBe(cases);
    expect(tok(name).kind).toBe(kind);
  });

  it("tokenizes every reference string to llama.cpp's ids", () => {
    const t = tok(name);
    const failures = all
      .map(({ text, ids }) => ({
        text,
        want: ids,
        got: t.encode(text, { addSpecial: false, parseSpecial: false }),
      }))
      .filter(({ want, got }) => want.join(" ") !== got.join(" "));
    expect(failures).toEqual([]);
  });

  it("decodes each reference tokenization back to its string", () => {
    const t = tok(name);
    // llama.cpp round-trips the same way: tokenize without BOS, detokenize dropping the space prefix
    // of the first token (SentencePiece), no clean-up of spaces.
    const failures = all
      .map(({ text, ids }) => ({ text, back: t.decode(ids) }))
      .filter(({ text, back }) => text !== back);
    expect(failures).toEqual([]);
  });

  it("decodes like llama_detokenize (clean-up of spaces included where the vocab asks for it)", async () => {
    const t = tok(name);
    for (const { ids } of all) {
      expect(t.decode(ids, { cleanSpaces: true })).toBe(await llamaDetokenize(path, ids));
    }
    // With BOS first (SPM): the first word keeps its space, as in llama.cpp.
    if (t.bos !== undefined) {
      const ids = [t.bos, ...t.encode("Hello world", { addSpecial: false })];
      expect(t.decode(ids, { cleanSpaces: true })).toBe(await llamaDetokenize(path, ids, true));
      expect(t.decode(ids, { cleanSpaces: true, skipSpecial: true })).toBe(
        await llamaDetokenize(path, ids, false),
      );
      expect(t.decode(ids, { skipSpecial: true })).toBe(kind === "spm" ? " Hello world" : "Hello world");
    }
  });
});

describe("special tokens", () => {
  const phi3 = () => tok(VOCAB_PHI3);

  it("parses control-token text in chat prompts like llama.cpp (phi-3, with its rstrip rule)", async () => {
    const path = testModel(VOCAB_PHI3);
    const prompts = [
      "<|user|>\nHello, who are you?<|end|>\n<|assistant|>\n",
      "<|system|>\nYou are helpful.<|end|>\n<|user|>\n  two spaces<|end|>\n<|assistant|>",
      "text before <|user|>after</s> x <unk><s>y",
      "no special tokens at all",
      "<|endoftext|><|endoftext|>",
      "<|user|",
    ];
    for (const p of prompts) {
      expect(phi3().encode(p, { addSpecial: false, parseSpecial: true }), p).toEqual(
        await llamaTokenize(path, p, true),
      );
      expect(phi3().encode(p, { addSpecial: false, parseSpecial: false }), p).toEqual(
        await llamaTokenize(path, p, false),
      );
    }
  });

  it("adds BOS per add_bos_token and renders control tokens only when asked", () => {
    const t = phi3();
    const ids = t.encode("<|user|>\nHi<|end|>");
    expect(ids[0]).toBe(1);
    expect(ids).toContain(32010);
    expect(t.isControl(32010)).toBe(true);
    expect(t.decode(ids)).toBe("<s><|user|> Hi<|end|>");
    expect(t.decode(ids, { skipSpecial: true })).toBe(" Hi");
    expect(t.tokenText(32007)).toBe("<|end|>");
    expect(t.tokenId("<|end|>")).toBe(32007);
  });

  it("finds end-of-generation tokens as llama.cpp does", () => {
    expect([...phi3().eogTokens].sort((a, b) => a - b)).toEqual([2, 32000, 32007]);
    expect(phi3().eos).toBe(32000);
    expect([...tok(VOCAB_GPT2).eogTokens]).toEqual([50256]);
    expect([...tok(VOCAB_SPM).eogTokens]).toEqual([2]);
  });

  it("treats text that only looks like a control token as text when parseSpecial is off (gpt-2)", async () => {
    const path = testModel(VOCAB_GPT2);
    const s = "a<|endoftext|>b";
    expect(tok(VOCAB_GPT2).encode(s, { parseSpecial: false })).toEqual(await llamaTokenize(path, s, false));
    expect(tok(VOCAB_GPT2).encode(s)).toEqual(await llamaTokenize(path, s, true));
    expect(tok(VOCAB_GPT2).encode(s)).toContain(50256);
  });
});

describe("vocabularies inside model files", () => {
  it("stories260K (512-token SPM): Once upon a time", async () => {
    const path = testModel(STORIES_260K);
    const t = tokenizerFromGGUF(readGGUF(path));
    expect(t.vocabSize).toBe(512);
    expect(t.kind).toBe("spm");
    for (const s of [
      "Once upon a time",
      "Once upon a time, there was a little girl named Lily.",
      " x  y\n\nz é 🦙",
    ]) {
      const ids = t.encode(s, { addSpecial: false, parseSpecial: false });
      expect(ids, s).toEqual(await llamaTokenize(path, s));
      expect(t.decode(ids)).toBe(s);
    }
    expect(t.encode("Once upon a time")[0]).toBe(t.bos);
  });

  it("llama-2-tiny-random (32000-token SPM in a model file) matches the vocab file", () => {
    const t = tokenizerFromGGUF(readGGUF(testModel(TINY_RANDOM)));
    const s = "The quick brown fox jumps over the lazy dog. Ünïcödé 日本語 🦙\n\tend";
    expect(t.encode(s)).toEqual(tok(VOCAB_SPM).encode(s));
  });
});
