/**
 * The tokenizer built from a GGUF file's `tokenizer.ggml.*` metadata: SentencePiece
 * (`tokenizer.ggml.model = "llama"`) or byte-level BPE (`"gpt2"`), with llama.cpp's
 * handling of special tokens, BOS/EOS, the SentencePiece space prefix and decoding.
 */
import { ModelFileError } from "../errors.js";
import type { GGUFFile } from "../gguf/reader.js";
import { BpeEncoder } from "./bpe.js";
import { SpmEncoder } from "./spm.js";
import { CHAR_TO_BYTE, concatBytes, utf8, wellFormed } from "./unicode.js";
import {
  ATTR_BYTE,
  ATTR_CONTROL,
  ATTR_LSTRIP,
  ATTR_NORMAL,
  ATTR_RSTRIP,
  ATTR_UNKNOWN,
  ATTR_UNUSED,
  ATTR_USER_DEFINED,
  loadVocab,
  type Vocab,
} from "./vocab.js";

export interface EncodeOptions {
  /** Add BOS/EOS as the vocabulary asks (addBos/addEos). Default true. */
  addSpecial?: boolean;
  /**
   * Recognise the text of control tokens (like `<|im_start|>`) as those tokens. Default true,
   * which is what chat prompts rendered from a template need. User-defined tokens are always
   * recognised, as in llama.cpp.
   */
  parseSpecial?: boolean;
}

export interface DecodeOptions {
  /**
   * Leave control tokens out of the text and drop a leading BOS / trailing EOS
   * (llama.cpp's `remove_special` without `unparse_special`). Default false: control
   * tokens are rendered as their text.
   */
  skipSpecial?: boolean;
  /**
   * Apply llama.cpp's clean-up of tokenization spaces (" ," → ",", " 's" → "'s", ...)
   * when the vocabulary asks for it (`cleanSpaces`). Default false, as in streamed output.
   */
  cleanSpaces?: boolean;
}

export interface Tokenizer {
  readonly kind: "spm" | "bpe";
  readonly vocabSize: number;
  readonly bos: number | undefined;
  readonly eos: number | undefined;
  /** End-of-turn token (`tokenizer.ggml.eot_token_id`, or recognised by its text). */
  readonly eot: number | undefined;
  readonly unk: number | undefined;
  /** From tokenizer.ggml.add_bos_token; default per kind (spm: true; bpe: per pre-tokenizer, as llama.cpp). */
  readonly addBos: boolean;
  readonly addEos: boolean;
  /** SentencePiece's leading space (tokenizer.ggml.add_space_prefix, default true for spm). */
  readonly addSpacePrefix: boolean;
  /** Whether llama.cpp would clean up tokenization spaces when detokenizing with this vocabulary. */
  readonly cleanSpaces: boolean;
  /** BPE: the `tokenizer.ggml.pre` value (gpt-2's regexes are used when it is unknown). */
  readonly pre: string | undefined;
  /** End-of-generation ids: eos, eot, eom, and control tokens like <|im_end|>, <|eot_id|>, <|end|>, <|endoftext|>. */
  readonly eogTokens: ReadonlySet<number>;
  encode(text: string, opts?: EncodeOptions): number[];
  decode(ids: ArrayLike<number>, opts?: DecodeOptions): string;
  /**
   * The raw bytes a token contributes to the output text (spm: ▁ → space, <0xNN> → the byte;
   * bpe: byte characters → bytes). Control and unknown tokens give nothing unless renderSpecial.
   */
  tokenBytes(id: number, renderSpecial?: boolean): Uint8Array;
  /** The vocabulary string as stored. */
  tokenText(id: number): string;
  isControl(id: number): boolean;
  isEog(id: number): boolean;
  tokenId(text: string): number | undefined;
}

const EMPTY = new Uint8Array(0);

/** C isspace() on ASCII: what llama.cpp strips next to lstrip/rstrip special tokens. */
const isCSpace = (c: number) => c === 0x20 || (c >= 0x09 && c <= 0x0d);

export class GGUFTokenizer implements Tokenizer {
  readonly kind: "spm" | "bpe";
  readonly vocabSize: number;
  readonly bos: number | undefined;
  readonly eos: number | undefined;
  readonly eot: number | undefined;
  readonly unk: number | undefined;
  readonly addBos: boolean;
  readonly addEos: boolean;
  readonly addSpacePrefix: boolean;
  readonly cleanSpaces: boolean;
  readonly pre: string | undefined;
  readonly eogTokens: ReadonlySet<number>;

  private readonly vocab: Vocab;
  private readonly spm: SpmEncoder | undefined;
  private readonly bpe: BpeEncoder | undefined;
  private readonly pieces: (Uint8Array | undefined)[];

  constructor(file: GGUFFile) {
    const v = loadVocab(file);
    this.vocab = v;
    this.kind = v.kind;
    this.vocabSize = v.texts.length;
    this.bos = v.bos;
    this.eos = v.eos;
    this.eot = v.eot;
    this.unk = v.unk;
    this.addBos = v.addBos;
    this.addEos = v.addEos;
    this.addSpacePrefix = v.addSpacePrefix;
    this.cleanSpaces = v.cleanSpaces;
    this.pre = v.kind === "bpe" ? v.pre : undefined;
    this.eogTokens = v.eog;
    this.pieces = new Array(this.vocabSize);
    if (v.kind === "spm") this.spm = new SpmEncoder(v);
    else this.bpe = new BpeEncoder(v);
    if (v.addBos && v.bos === undefined) {
      throw new ModelFileError(file.path, "tokenizer.ggml.add_bos_token is true, but there is no BOS token");
    }
    if (v.addEos && v.eos === undefined) {
      throw new ModelFileError(file.path, "tokenizer.ggml.add_eos_token is true, but there is no EOS token");
    }
  }

  encode(text: string, opts: EncodeOptions = {}): number[] {
    const addSpecial = opts.addSpecial ?? true;
    const parseSpecial = opts.parseSpecial ?? true;
    const fragments = text.length > 0 ? this.partition(wellFormed(text), parseSpecial) : [];
    const out: number[] = [];
    if (addSpecial && this.addBos) out.push(this.bos!);
    if (this.spm) {
      // A space prefix goes before the first text and before text that follows a special token.
      let afterSpecial = true;
      for (const f of fragments) {
        if (typeof f === "number") {
          out.push(f);
          afterSpecial = true;
          continue;
        }
        const s = this.addSpacePrefix && afterSpecial ? ` ${f}` : f;
        this.spm.encode(s.replaceAll(" ", "\u2581"), out);
        afterSpecial = false;
      }
    } else {
      for (const f of fragments) {
        if (typeof f === "number") out.push(f);
        else this.bpe!.encode(f, out);
      }
    }
    if (addSpecial && this.addEos) out.push(this.eos!);
    return out;
  }

  /** BPE: the pre-tokenizer's words for a text (for tests and diagnostics); spm: the text itself. */
  preTokenize(text: string): string[] {
    return this.bpe ? this.bpe.words(text) : [text];
  }

  /**
   * Splits text on special-token texts: the longest tokens are taken out first, each
   * everywhere it occurs, then the next longest in what is left, and so on. Control and
   * unknown tokens only count when parseSpecial; user-defined ones always do.
   */
  private partition(text: string, parseSpecial: boolean): (string | number)[] {
    const { texts, attrs, specialTokens } = this.vocab;
    // Most special tokens cannot occur at all: check their first two characters against the
    // pairs present in the text before searching for them.
    const pairs = new Set<number>();
    for (let i = 0; i + 1 < text.length; i++) pairs.add((text.charCodeAt(i) << 16) | text.charCodeAt(i + 1));
    // Text pieces are [start, end) ranges of `text`; token pieces are ids.
    let frags: (number | [number, number])[] = [[0, text.length]];
    for (const id of specialTokens) {
      const attr = attrs[id]!;
      if (!parseSpecial && attr & (ATTR_CONTROL | ATTR_UNKNOWN)) continue;
      const t = texts[id]!;
      if (t.length > 1 && !pairs.has((t.charCodeAt(0) << 16) | t.charCodeAt(1))) continue;
      let found = text.indexOf(t);
      if (found < 0) continue;
      // First occurrence at or after `from`; pieces come in text order, so searches only move right.
      const occurrence = (from: number) => {
        if (found >= 0 && found < from) found = text.indexOf(t, from);
        return found;
      };
      const next: (number | [number, number])[] = [];
      for (const f of frags) {
        if (typeof f === "number") {
          next.push(f);
          continue;
        }
        let [pos, end] = f;
        for (;;) {
          const m = occurrence(pos);
          if (m < 0 || m + t.length > end) {
            if (pos < end) next.push([pos, end]);
            break;
          }
          let leftEnd = m;
          if (attr & ATTR_LSTRIP) while (leftEnd > pos && isCSpace(text.charCodeAt(leftEnd - 1))) leftEnd--;
          if (leftEnd > pos) next.push([pos, leftEnd]);
          next.push(id);
          pos = m + t.length;
          if (attr & ATTR_RSTRIP) while (pos < end && isCSpace(text.charCodeAt(pos))) pos++;
        }
      }
      frags = next;
    }
    return frags.map((f) => (typeof f === "number" ? f : text.slice(f[0], f[1])));
  }

  tokenBytes(id: number, renderSpecial = false): Uint8Array {
    if (!(id >= 0 && id < this.vocabSize)) return EMPTY;
    const attr = this.vocab.attrs[id]!;
    if (!renderSpecial && attr & (ATTR_UNKNOWN | ATTR_CONTROL)) return EMPTY;
    let p = this.pieces[id];
    if (p === undefined) {
      p = this.piece(id, attr);
      this.pieces[id] = p;
    }
    return p;
  }

  /** A token's text as rendered with special tokens shown (llama.cpp's token_to_piece with special = true). */
  private piece(id: number, attr: number): Uint8Array {
    const text = this.vocab.texts[id]!;
    if (attr & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED)) return utf8(text);
    if (attr & ATTR_NORMAL) {
      if (this.kind === "spm") return utf8(text.replaceAll("\u2581", " "));
      return decodeByteChars(text);
    }
    if (attr & ATTR_BYTE) return Uint8Array.of(Number.parseInt(text.slice(3, 5), 16) & 0xff);
    return EMPTY;
  }

  decode(ids: ArrayLike<number>, opts: DecodeOptions = {}): string {
    const skip = opts.skipSpecial ?? false;
    let start = 0;
    let end = ids.length;
    let removeSpace = this.addSpacePrefix;
    if (skip && this.addBos && end > 0 && ids[0] === this.bos) {
      removeSpace = false;
      start = 1;
    }
    if (skip && this.addEos && end > start && ids[end - 1] === this.eos) end--;
    const parts: Uint8Array[] = [];
    for (let i = start; i < end; i++) {
      let p = this.tokenBytes(ids[i]!, !skip);
      if (removeSpace && p.length > 0 && p[0] === 0x20) p = p.subarray(1);
      removeSpace = false;
      parts.push(p);
    }
    let bytes = concatBytes(parts);
    if (opts.cleanSpaces && this.cleanSpaces) bytes = cleanTokenizationSpaces(bytes);
    return new TextDecoder("utf-8", { ignoreBOM: true }).decode(bytes);
  }

  tokenText(id: number): string {
    const t = this.vocab.raw[id];
    if (t === undefined)
      throw new RangeError(`token id ${id} is outside the vocabulary (0..${this.vocabSize - 1})`);
    return t;
  }

  isControl(id: number): boolean {
    return ((this.vocab.attrs[id] ?? 0) & ATTR_CONTROL) !== 0;
  }

  isEog(id: number): boolean {
    return this.vocab.eog.has(id);
  }

  /** True for tokens that render as nothing in plain text: control, unknown and unused ones. */
  isSpecial(id: number): boolean {
    return ((this.vocab.attrs[id] ?? 0) & (ATTR_CONTROL | ATTR_UNKNOWN | ATTR_UNUSED)) !== 0;
  }

  tokenId(text: string): number | undefined {
    return this.vocab.tokenToId.get(text);
  }
}

/**
 * GPT-2 byte characters → bytes. A character outside the table (not produced by a
 * byte-level vocabulary) is written the way llama.cpp writes it, as `[UNK_BYTE_0x…]`.
 */
function decodeByteChars(text: string): Uint8Array {
  const out: number[] = [];
  for (const ch of text) {
    const c = ch.codePointAt(0)!;
    const b = c < CHAR_TO_BYTE.length ? CHAR_TO_BYTE[c]! : -1;
    if (b >= 0) {
      out.push(b);
      continue;
    }
    const hex = [...utf8(ch)].map((x) => x.toString(16).padStart(2, "0")).join("");
    out.push(...utf8(`[UNK_BYTE_0x${hex}${text}]`));
  }
  return Uint8Array.from(out);
}

/**
 * llama.cpp's clean-up of tokenization spaces, in three passes over the bytes:
 * drop a space before ? ! . , ; turn " ' " into "'"; drop the space before 's 'm 're 've.
 */
export function cleanTokenizationSpaces(input: Uint8Array): Uint8Array {
  const SP = 0x20;
  const Q = 0x27;
  let src = Array.from(input);
  if (src.length === 0) return input;
  // Pass 1.
  let out = [src[0]!];
  for (let i = 1; i < src.length; i++) {
    const x = src[i]!;
    if (src[i - 1] === SP && (x === 0x3f || x === 0x21 || x === 0x2e || x === 0x2c)) out.pop();
    out.push(x);
  }
  // Pass 2 (a space consumed after an apostrophe no longer counts as a space).
  src = out;
  out = [src[0]!];
  for (let i = 1; i < src.length; i++) {
    const x = src[i]!;
    if (x === Q && i + 1 < src.length && src[i - 1] === SP && src[i + 1] === SP) {
      out.pop();
      src[++i] = 0;
    }
    out.push(x);
  }
  // Pass 3.
  src = out;
  out = [src[0]!];
  for (let i = 1; i < src.length; i++) {
    const x = src[i]!;
    if (src[i - 1] === SP && x === Q && i + 1 < src.length) {
      const x1 = src[i + 1]!;
      if (x1 === 0x73 || x1 === 0x6d) out.pop();
      else if (i + 2 < src.length) {
        const x2 = src[i + 2]!;
        if ((x1 === 0x72 || x1 === 0x76) && x2 === 0x65) out.pop();
      }
    }
    out.push(x);
  }
  return Uint8Array.from(out);
}
