/**
 * BPE pre-tokenization: splitting text into words before merges, chosen by
 * `tokenizer.ggml.pre`. Each variant is a list of regexes applied in turn; every
 * regex splits each piece left by the previous one into its matches and the gaps
 * between them (gaps are kept as pieces of their own).
 *
 * The regexes are written in the dialect of the tokenizers' own definitions
 * (\p{L}, \s, ...). They are run the way llama.cpp runs them, so that the words,
 * and hence the token ids, agree with it:
 *  - a regex that names a Unicode category runs over a "class string" with one
 *    character per code point: ASCII stays itself, other whitespace becomes \v and
 *    every other code point becomes a stand-in character for its category, which
 *    the category escapes in the regex are rewritten to match;
 *  - a regex with no category runs over the code points themselves, with
 *    non-ASCII whitespace replaced by \v;
 *  - \s means ASCII whitespace only (so, with the replacement above, exactly the
 *    whitespace of `isWhitespace`).
 */
import { cpClass, isWhitespace } from "./unicode.js";

export interface PreTokenizerConfig {
  /** The family name this variant belongs to (for messages and tests). */
  family: string;
  regexes: readonly string[];
  /** A word that is itself a token skips the merges (llama3, tekken, minicpm5). */
  ignoreMerges: boolean;
  /** Default for add_bos when the file does not say. */
  addBos: boolean;
  /** llama.cpp's clean_spaces (clean_up_tokenization_spaces) for this variant. */
  cleanSpaces: boolean;
  /** The variant drops its BOS token (chatglm). */
  noBos?: boolean;
}

const CONTRACTIONS = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])";
const GPT2 = String.raw`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`;
const LLAMA3 = String.raw`${CONTRACTIONS}|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`;
const QWEN2 = String.raw`${CONTRACTIONS}|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`;
const QWEN35 = String.raw`${CONTRACTIONS}|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`;
const UPPER_THEN_LOWER = String.raw`((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+`;
const UPPER_RUN = String.raw`((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*`;
const GPT4O = String.raw`[^\r\n\p{L}\p{N}]?${UPPER_THEN_LOWER}${CONTRACTIONS}?|[^\r\n\p{L}\p{N}]?${UPPER_RUN}${CONTRACTIONS}?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+`;
const TEKKEN = String.raw`[^\r\n\p{L}\p{N}]?${UPPER_THEN_LOWER}|[^\r\n\p{L}\p{N}]?${UPPER_RUN}|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+`;
const BLOOM = String.raw` ?[^(\s|.,!?\u{2026}\u{3002}\u{FF0C}\u{3001}\u{964}\u{6D4}\u{60C})]+`;
const DEEPSEEK_LATIN = String.raw`\s?[A-Za-z\u{B5}\u{C0}-\u{D6}\u{D8}-\u{F6}\u{F8}-\u{1BA}\u{1BC}-\u{1BF}\u{1C4}-\u{293}\u{295}-\u{2AF}\u{370}-\u{373}\u{376}\u{377}\u{37B}-\u{37D}\u{37F}\u{386}\u{388}-\u{38A}\u{38C}\u{38E}-\u{3A1}\u{3A3}-\u{3F5}\u{3F7}-\u{481}\u{48A}-\u{52F}\u{531}-\u{556}\u{10A0}-\u{10C5}\u{13A0}-\u{13F5}\u{13F8}-\u{13FD}\u{1C90}-\u{1CBA}\u{1CBD}-\u{1CBF}\u{1D00}-\u{1D2B}\u{1D6B}-\u{1D77}\u{1D79}-\u{1D9A}\u{1E00}-\u{1F15}\u{1F18}-\u{1F1D}\u{1F20}-\u{1F45}\u{1F48}-\u{1F4D}\u{1F50}-\u{1F57}\u{1F59}\u{1F5B}\u{1F5D}\u{1F5F}-\u{1F7D}\u{1F80}-\u{1FB4}\u{1FB6}-\u{1FBC}\u{1FBE}\u{1FC2}-\u{1FC4}\u{1FC6}-\u{1FCC}\u{1FD0}-\u{1FD3}\u{1FD6}-\u{1FDB}\u{1FE0}-\u{1FEC}\u{1FF2}-\u{1FF4}\u{1FF6}-\u{1FFC}\u{2102}\u{2107}\u{210A}-\u{2113}\u{2115}\u{2119}-\u{211D}\u{2124}\u{2126}\u{2128}\u{212A}-\u{212D}\u{212F}-\u{2134}\u{2139}\u{213C}-\u{213F}\u{2145}-\u{2149}\u{214E}\u{2183}\u{2184}\u{2C00}-\u{2C7B}\u{2C7E}-\u{2CE4}\u{2CEB}-\u{2CEE}\u{2CF2}\u{2CF3}\u{A640}-\u{A66D}\u{A680}-\u{A69B}\u{A722}-\u{A76F}\u{A771}-\u{A787}\u{A78B}-\u{A78E}\u{AB70}-\u{ABBF}\u{FB00}-\u{FB06}\u{FB13}-\u{FB17}\u{FF21}-\u{FF3A}\u{FF41}-\u{FF5A}\u{10400}-\u{1044F}\u{104B0}-\u{104D3}\u{104D8}-\u{104FB}\u{10C80}-\u{10CB2}\u{10CC0}-\u{10CF2}\u{118A0}-\u{118DF}\u{1E900}-\u{1E943}]+`;
const DEEPSEEK_PUNCT = String.raw`\s?[!-/:-~\u{FF01}-\u{FF0F}\u{FF1A}-\u{FF5E}\u{2018}-\u{201F}\u{3000}-\u{3002}]+`;
const CJK_HANGUL = String.raw`[\u{4E00}-\u{9FA5}\u{800}-\u{4E00}\u{AC00}-\u{D7FF}]+`;
const DEEPSEEK3_MAIN = String.raw`[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_${"`"}{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`;

type Family = Omit<PreTokenizerConfig, "family">;
const fam = (regexes: string[], o: Partial<Family> = {}): Family => ({
  regexes,
  ignoreMerges: o.ignoreMerges ?? false,
  addBos: o.addBos ?? false,
  cleanSpaces: o.cleanSpaces ?? true,
  noBos: o.noBos,
});

const FAMILIES: Record<string, Family> = {
  default: fam([String.raw`[\p{P}\$\+<=>\^~\|]+`, GPT2, String.raw`\p{N}+`, "[0-9][0-9][0-9]"]),
  "gpt-2": fam([GPT2]),
  "gpt-2/no-clean": fam([GPT2], { cleanSpaces: false }),
  llama3: fam([LLAMA3], { ignoreMerges: true, addBos: true }),
  "llama3-regex": fam([LLAMA3]),
  chatglm4: fam([LLAMA3], { noBos: true }),
  qwen2: fam([QWEN2], { cleanSpaces: false }),
  "qwen2/clean": fam([QWEN2]),
  qwen35: fam([QWEN35], { cleanSpaces: false }),
  starcoder: fam([String.raw`\p{N}`, GPT2]),
  "starcoder/no-clean": fam([String.raw`\p{N}`, GPT2], { cleanSpaces: false }),
  falcon: fam([String.raw`[\p{P}\$\+<=>\^~\|${"`"}]+`, GPT2, "[0-9][0-9][0-9]"]),
  "deepseek-llm": fam(
    ["[\r\n]", DEEPSEEK_LATIN, DEEPSEEK_PUNCT, String.raw`\s+$`, CJK_HANGUL, String.raw`\p{N}+`],
    {
      cleanSpaces: false,
    },
  ),
  "deepseek-coder": fam(
    ["[\r\n]", String.raw`\s?\p{L}+`, String.raw`\s?\p{P}+`, CJK_HANGUL, String.raw`\p{N}`],
    {
      cleanSpaces: false,
    },
  ),
  "deepseek-v3": fam(
    [
      String.raw`\p{N}{1,3}`,
      String.raw`[\u{4E00}-\u{9FA5}\u{3040}-\u{309F}\u{30A0}-\u{30FF}]+`,
      DEEPSEEK3_MAIN,
    ],
    { cleanSpaces: false },
  ),
  "gpt-4o": fam([GPT4O], { cleanSpaces: false }),
  tekken: fam([TEKKEN], { cleanSpaces: false, ignoreMerges: true, addBos: true }),
  bloom: fam([BLOOM]),
  "bloom/no-clean": fam([BLOOM], { cleanSpaces: false }),
  viking: fam([BLOOM, String.raw`\p{N}`], { cleanSpaces: false }),
  "seed-coder": fam(
    [
      String.raw`${CONTRACTIONS}|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+`,
    ],
    { cleanSpaces: false },
  ),
  bailingmoe: fam(
    [
      String.raw`'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+`,
    ],
    { cleanSpaces: false },
  ),
  ufakzeka: fam(
    [String.raw`[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`],
    { cleanSpaces: false },
  ),
  minicpm5: fam(
    [
      String.raw`\p{N}{1,3}`,
      String.raw`${CONTRACTIONS}|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`,
    ],
    { ignoreMerges: true },
  ),
  laguna: fam(["[^\n]+|[\n]+", QWEN2], { cleanSpaces: false }),
};

/** `tokenizer.ggml.pre` values → family, following llama.cpp's table. */
const PRE_NAMES: Record<string, string> = {
  default: "default",
  "gpt-2": "gpt-2",
  "phi-2": "gpt-2",
  "jina-es": "gpt-2",
  "jina-de": "gpt-2",
  gigachat: "gpt-2",
  "jina-v2-es": "gpt-2",
  "jina-v2-de": "gpt-2",
  "a.x-4.0": "gpt-2",
  mellum: "gpt-2",
  "modern-bert": "gpt-2",
  "jina-v1-en": "gpt-2",
  "jina-v2-code": "gpt-2",
  "roberta-bpe": "gpt-2",
  mpt: "gpt-2",
  olmo: "gpt-2",
  jais: "gpt-2",
  exaone4: "gpt-2",
  trillion: "gpt-2/no-clean",
  "granite-docling": "gpt-2/no-clean",
  llama3: "llama3",
  "llama-v3": "llama3",
  "llama-bpe": "llama3",
  falcon3: "llama3",
  "falcon-h1": "llama3",
  pixtral: "llama3",
  "midm-2.0": "llama3",
  lfm2: "llama3",
  "jina-v5-nano": "llama3",
  dbrx: "llama3-regex",
  "smaug-bpe": "llama3-regex",
  glm4: "chatglm4",
  "chatglm-bpe": "chatglm4",
  qwen2: "qwen2",
  "deepseek-r1-qwen": "qwen2",
  kormo: "qwen2",
  f2llmv2: "qwen2",
  hunyuan: "qwen2",
  "solar-open": "qwen2",
  "grok-2": "qwen2",
  stablelm2: "qwen2/clean",
  megrez: "qwen2/clean",
  qwen35: "qwen35",
  starcoder: "starcoder",
  refact: "starcoder",
  codeshell: "starcoder",
  exaone: "starcoder",
  "minerva-7b": "starcoder",
  mellum2: "starcoder",
  "command-r": "starcoder/no-clean",
  smollm: "starcoder/no-clean",
  falcon: "falcon",
  "deepseek-llm": "deepseek-llm",
  "deepseek-coder": "deepseek-coder",
  "deepseek-v3": "deepseek-v3",
  "hunyuan-dense": "deepseek-v3",
  hy_v4: "deepseek-v3",
  "joyai-llm": "deepseek-v3",
  "gpt-4o": "gpt-4o",
  llama4: "gpt-4o",
  kanana2: "gpt-4o",
  talkie: "gpt-4o",
  "minimax-m2": "gpt-4o",
  tekken: "tekken",
  bloom: "bloom",
  "gpt3-finnish": "bloom",
  "poro-chat": "bloom/no-clean",
  viking: "viking",
  "seed-coder": "seed-coder",
  bailingmoe: "bailingmoe",
  bailingmoe2: "bailingmoe",
  "llada-moe": "bailingmoe",
  ufakzeka: "ufakzeka",
  minicpm5: "minicpm5",
  laguna: "laguna",
};

/** The names `preTokenizerConfig` knows. */
export const KNOWN_PRE_TOKENIZERS: readonly string[] = Object.keys(PRE_NAMES);

/** The configuration for a `tokenizer.ggml.pre` value; undefined when the name is unknown. */
export function preTokenizerConfig(pre: string): PreTokenizerConfig | undefined {
  const family = PRE_NAMES[pre];
  if (family === undefined) return undefined;
  return { family, ...FAMILIES[family]! };
}

// ---------------------------------------------------------------------------
// Running the regexes.

const WS_CLASS = String.raw`\t\n\v\f\r `;
/** Category escapes → the characters of the class string they stand for (stand-in + ASCII members). */
const CATEGORY_CHARS: Record<string, string> = {
  N: String.raw`\xD10-9`,
  L: String.raw`\xD2A-Za-z`,
  Lu: String.raw`\xD2A-Za-z`,
  Ll: String.raw`\xD2A-Za-z`,
  Lt: String.raw`\xD2A-Za-z`,
  Lm: String.raw`\xD2A-Za-z`,
  Lo: String.raw`\xD2A-Za-z`,
  P: String.raw`\xD3!-#%-*,\-./:;?@\[\\\]_{}`,
  M: String.raw`\xD4`,
  S: String.raw`\xD5$+<=>\^${"`"}|~`,
};
/** Stand-in characters in the class string, by cpClass (CP_OTHER → \xD0). */
const STAND_IN = [0xd0, 0xd1, 0xd2, 0xd3, 0xd4, 0xd5];

interface CompiledRegex {
  re: RegExp;
  /** Runs over the class string (true) or over the code points (false). */
  classes: boolean;
}

/** Rewrites one regex of the tokenizer dialect into a JavaScript RegExp (see the file comment). */
export function compileRegex(src: string): CompiledRegex {
  const classes = src.includes("\\p{");
  let out = "";
  let inClass = false;
  for (let i = 0; i < src.length; ) {
    const c = src[i]!;
    if (c === "\\") {
      const nx = src[i + 1];
      if (nx === "p" && src[i + 2] === "{") {
        const close = src.indexOf("}", i);
        const name = src.slice(i + 3, close);
        const chars = CATEGORY_CHARS[name];
        if (chars === undefined)
          throw new Error(`pre-tokenizer regex uses unsupported category \\p{${name}}`);
        out += inClass ? chars : `[${chars}]`;
        i = close + 1;
        continue;
      }
      if (nx === "s") {
        out += inClass ? WS_CLASS : `[${WS_CLASS}]`;
        i += 2;
        continue;
      }
      if (nx === "S" && !inClass) {
        out += `[^${WS_CLASS}]`;
        i += 2;
        continue;
      }
      out += c + (nx ?? "");
      i += 2;
      continue;
    }
    if (c === "[" && !inClass) {
      inClass = true;
      out += c;
      i++;
      if (src[i] === "^") {
        out += "^";
        i++;
      }
      continue;
    }
    if (c === "]" && inClass) inClass = false;
    if (classes && c.charCodeAt(0) > 0x7f)
      throw new Error("pre-tokenizer regex mixes categories and non-ASCII text");
    out += c;
    i++;
  }
  return { re: new RegExp(out, classes ? "g" : "gu"), classes };
}

/** Splits text into pre-tokenizer words with a list of compiled regexes. */
export class RegexSplitter {
  private readonly compiled: CompiledRegex[];

  constructor(readonly regexes: readonly string[]) {
    this.compiled = regexes.map(compileRegex);
  }

  split(text: string): string[] {
    if (text.length === 0) return [];
    // Code point boundaries: u16[i] is where code point i starts in the UTF-16 string.
    let ascii = true;
    for (let i = 0; i < text.length; i++) {
      if (text.charCodeAt(i) > 0x7f) {
        ascii = false;
        break;
      }
    }
    let n: number;
    let u16: Int32Array | undefined;
    let cps: number[] | undefined;
    if (ascii) {
      n = text.length;
    } else {
      cps = [];
      for (const ch of text) cps.push(ch.codePointAt(0)!);
      n = cps.length;
      u16 = new Int32Array(n + 1);
      let o = 0;
      for (let i = 0; i < n; i++) {
        u16[i] = o;
        o += cps[i]! > 0xffff ? 2 : 1;
      }
      u16[n] = o;
    }
    const at = (i: number) => (u16 ? u16[i]! : i);

    let classString: string | undefined;
    let wsText: string | undefined;
    let cpOfUnit: Int32Array | undefined;

    // Piece boundaries as code point indices: pieces are [bounds[k], bounds[k+1]).
    let bounds: number[] = [0, n];
    for (const { re, classes } of this.compiled) {
      const next: number[] = [0];
      for (let k = 0; k + 1 < bounds.length; k++) {
        const a = bounds[k]!;
        const b = bounds[k + 1]!;
        let piece: string;
        // Maps a match index within the piece to a code point offset within it.
        let toCp: (i: number) => number;
        if (classes || ascii) {
          if (classes && !ascii) {
            classString ??= buildClassString(cps!);
            piece = classString.slice(a, b);
          } else {
            piece = text.slice(a, b);
          }
          toCp = (i) => i;
        } else {
          wsText ??= text.replace(/[\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]/g, "\v");
          if (!cpOfUnit) {
            cpOfUnit = new Int32Array(u16![n]! + 1);
            for (let i = 0; i < n; i++) {
              cpOfUnit[u16![i]!] = i;
              if (cps![i]! > 0xffff) cpOfUnit[u16![i]! + 1] = i;
            }
            cpOfUnit[u16![n]!] = n;
          }
          const base = u16![a]!;
          piece = wsText.slice(base, u16![b]!);
          const map = cpOfUnit;
          toCp = (i) => map[base + i]! - a;
        }
        re.lastIndex = 0;
        let done = 0; // code points of this piece already emitted
        for (let m = re.exec(piece); m !== null; m = re.exec(piece)) {
          if (m[0].length === 0) {
            re.lastIndex++;
            continue;
          }
          const s = toCp(m.index);
          const e = toCp(m.index + m[0].length);
          if (s > done) next.push(a + s);
          next.push(a + e);
          done = e;
        }
        if (a + done < b) next.push(b);
      }
      bounds = next;
    }
    const words: string[] = new Array(bounds.length - 1);
    for (let k = 0; k + 1 < bounds.length; k++) words[k] = text.slice(at(bounds[k]!), at(bounds[k + 1]!));
    return words;
  }
}

function buildClassString(cps: readonly number[]): string {
  const bytes = new Uint8Array(cps.length);
  for (let i = 0; i < cps.length; i++) {
    const cp = cps[i]!;
    if (cp < 0x80) bytes[i] = cp;
    else if (isWhitespace(cp)) bytes[i] = 0x0b;
    else bytes[i] = STAND_IN[cpClass(cp)]!;
  }
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString("latin1");
}
