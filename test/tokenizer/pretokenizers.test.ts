/**
 * BPE pre-tokenizer variants without reference files: the gpt-2 vocabulary is copied with
 * `tokenizer.ggml.pre` rewritten, and each copy is tokenized by us and by llama.cpp.
 * Set SPINDLE_TEST_ALL_PRE=1 to check every `pre` name Spindle knows (about a minute).
 */
import { join } from "node:path";
import { afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { readGGUF } from "../../src/gguf/reader.js";
import { meta, withMetadata, writeGGUF } from "../../src/gguf/writer.js";
import { GGUFTokenizer, KNOWN_PRE_TOKENIZERS } from "../../src/tokenizer/index.js";
import { llamaTokenize, llamaVocabModel } from "../helpers/llamacpp.js";
import { testModel, VOCAB_GPT2 } from "../helpers/models.js";
import { tempDir } from "../helpers/tmp.js";

/** How each variant splits "12345" before merges. */
const DIGITS: Record<string, string[]> = {
  default: ["123", "45"],
  "llama-bpe": ["123", "45"],
  qwen2: ["1", "2", "3", "4", "5"],
  qwen35: ["1", "2", "3", "4", "5"],
  smollm: ["1", "2", "3", "4", "5"],
  falcon: ["123", "45"],
  "deepseek-llm": ["12345"],
  "deepseek-coder": ["1", "2", "3", "4", "5"],
  "deepseek-v3": ["123", "45"],
  "gpt-4o": ["123", "45"],
  tekken: ["1", "2", "3", "4", "5"],
};

const VARIANTS = process.env.SPINDLE_TEST_ALL_PRE ? [...KNOWN_PRE_TOKENIZERS] : Object.keys(DIGITS);

const TRICKY = [
  "12345",
  "1 22 333 4444 55555 666666 7777777",
  "3.14159 and 1,000,000 and 0x1F",
  "I'm don't you'll we've she's they'd",
  "I'M DON'T 'Re 'LL a's b'S",
  "Hello    world  \n\n\n  x\t\ty \r\n z   ",
  "   leading and trailing   ",
  "\n",
  " ",
  "",
  "Привет мир, как дела?",
  "日本語のテキストと中文字符 한국어",
  "ភាសាខ្មែរ हिन्दी भाषा مرحبا ١٢٣",
  "🦙🚀 😶‍🌫️ 👨‍👩‍👧 ✅",
  "e\u0301 a\u0308 café naïve",
  "½ Ⅻ ² ³ …——«»“”",
  "$100+200=300 <tag> a|b ^~`",
  "function f(x) {\n  return x * 2; // comment\n}\n\n\tif (a && b) { x++; }\n",
  "https://example.com/path?q=1&r=2#frag",
  "nbsp\u00a0here\u3000ideo\u2009thin \u0085nel \ufeffbom",
  "\u0378unassigned \ue000private \x01\x7f ctrl",
  "HTTPServer getHTTPResponseCode XMLHttpRequest ABCdefGHI",
];

const gpt2Path = testModel(VOCAB_GPT2);
const dir = tempDir("spindle-pre-");
const copies = new Map<string, string>();

function copyWithPre(pre: string | undefined): string {
  const path = join(dir, `${pre ?? "missing"}.gguf`);
  const source = readGGUF(gpt2Path);
  writeGGUF(
    path,
    withMetadata(source.metadata, { "tokenizer.ggml.pre": pre === undefined ? undefined : meta.str(pre) }),
    [],
  );
  return path;
}

beforeAll(async () => {
  // llama.cpp loads each copy while the next one is being written.
  const loads: Promise<unknown>[] = [];
  for (const pre of VARIANTS) {
    const path = copyWithPre(pre);
    copies.set(pre, path);
    loads.push(llamaVocabModel(path));
    await new Promise((r) => setImmediate(r));
  }
  await Promise.all(loads);
}, 300_000);

describe.each(VARIANTS)("pre = %s", (pre) => {
  it("tokenizes tricky strings exactly like llama.cpp", async () => {
    const path = copies.get(pre)!;
    const tok = new GGUFTokenizer(readGGUF(path));
    expect(tok.pre).toBe(pre);
    for (const s of TRICKY) {
      expect(tok.encode(s, { addSpecial: false, parseSpecial: false }), JSON.stringify(s)).toEqual(
        await llamaTokenize(path, s),
      );
    }
    const digits = DIGITS[pre];
    if (digits) expect(tok.preTokenize("12345")).toEqual(digits);
  });
});

describe("pre-tokenizer choice", () => {
  afterEach(() => {
    vi.restoreAllMocks();
  });

  it("gpt-2 keeps a run of digits together", () => {
    const tok = new GGUFTokenizer(readGGUF(gpt2Path));
    expect(tok.preTokenize("12345")).toEqual(["12345"]);
    expect(tok.preTokenize("I'm  here\n")).toEqual(["I", "'m", " ", " here", "\n"]);
  });

  it("sets addBos from the variant (llama3 adds BOS; gpt-2 does not)", () => {
    expect(new GGUFTokenizer(readGGUF(gpt2Path)).addBos).toBe(false);
    const llama3 = copies.get("llama-bpe");
    if (llama3) {
      const tok = new GGUFTokenizer(readGGUF(llama3));
      expect(tok.addBos).toBe(true);
      expect(tok.encode("hi")[0]).toBe(tok.bos);
    }
  });

  it("an unknown pre falls back to gpt-2's regexes with one warning", () => {
    const warn = vi.spyOn(console, "warn").mockImplementation(() => {});
    const path = copyWithPre("no-such-pre");
    const a = new GGUFTokenizer(readGGUF(path));
    new GGUFTokenizer(readGGUF(path));
    expect(warn).toHaveBeenCalledTimes(1);
    expect(String(warn.mock.calls[0]![0])).toContain("no-such-pre");
    const gpt2 = new GGUFTokenizer(readGGUF(gpt2Path));
    for (const s of TRICKY) expect(a.encode(s)).toEqual(gpt2.encode(s));
  });

  it("a missing pre means llama.cpp's default", () => {
    const tok = new GGUFTokenizer(readGGUF(copyWithPre(undefined)));
    expect(tok.pre).toBe("default");
    expect(tok.preTokenize("12345")).toEqual(["123", "45"]);
  });
});
