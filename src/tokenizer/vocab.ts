/**
 * The vocabulary part of `tokenizer.ggml.*`: token strings, scores, attributes,
 * special ids and flags, resolved the way llama.cpp resolves them (defaults per
 * tokenizer kind, end-of-generation tokens recognised by their text, and so on).
 */
import { ModelFileError } from "../errors.js";
import type { GGUFFile } from "../gguf/reader.js";
import { type PreTokenizerConfig, preTokenizerConfig } from "./pretokenize.js";

// Token attributes (bit flags, as llama.cpp's llama_token_attr).
export const ATTR_UNKNOWN = 1 << 0;
export const ATTR_UNUSED = 1 << 1;
export const ATTR_NORMAL = 1 << 2;
export const ATTR_CONTROL = 1 << 3;
export const ATTR_USER_DEFINED = 1 << 4;
export const ATTR_BYTE = 1 << 5;
export const ATTR_LSTRIP = 1 << 7;
export const ATTR_RSTRIP = 1 << 8;

/** `tokenizer.ggml.token_type` values (gguf-py's TokenType) → attributes. */
const TYPE_TO_ATTR = [0, ATTR_NORMAL, ATTR_UNKNOWN, ATTR_CONTROL, ATTR_USER_DEFINED, ATTR_UNUSED, ATTR_BYTE];

/** Texts that mark a token as end-of-turn when the file names no eot id. */
const EOT_TEXTS = [
  "<|eot_id|>",
  "<|im_end|>",
  "<|end|>",
  "<end_of_turn>",
  "<|endoftext|>",
  "<|end_of_text|>",
  "<EOT>",
  "_<EOT>",
  "[EOT]",
  "<｜end▁of▁sentence｜>",
  "<end_of_utterance>",
];
/** Texts of tokens that end generation. */
const EOG_TEXTS = new Set([
  "<|eot_id|>",
  "<|im_end|>",
  "<|end|>",
  "<|return|>",
  "<|call|>",
  "<|flush|>",
  "<|calls|>",
  "<end_of_turn>",
  "<|endoftext|>",
  "</s>",
  "<|eom_id|>",
  "<EOT>",
  "_<EOT>",
  "[EOT]",
  "[EOS]",
  "<|end_of_text|>",
  "<end_of_utterance>",
  "<eos>",
  "<turn|>",
  "<|tool_response>",
  "<｜end▁of▁sentence｜>",
  "[e~[",
]);
const FIM_PAD_TEXTS = ["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS = ["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"];
const FIM_SEP_TEXTS = ["<|file_sep|>"];
/** gpt-oss tokens that are always rendered. */
const ALWAYS_RENDERED = new Set(["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"]);

export interface Vocab {
  kind: "spm" | "bpe";
  /** Token strings as stored in the file. */
  raw: readonly string[];
  /** Token strings as matched (empty ones renamed `[EMPTY_<id>]`, as llama.cpp does). */
  texts: string[];
  scores: Float32Array;
  attrs: Uint16Array;
  /** Text → id; with duplicate texts the last id wins. */
  tokenToId: Map<string, number>;
  /** Longest token text, in UTF-16 code units. */
  maxTokenLength: number;
  bos: number | undefined;
  eos: number | undefined;
  eot: number | undefined;
  eom: number | undefined;
  unk: number | undefined;
  addBos: boolean;
  addEos: boolean;
  addSpacePrefix: boolean;
  cleanSpaces: boolean;
  /** `tokenizer.ggml.pre` as given, or "default". */
  pre: string;
  /** BPE only: the pre-tokenizer used (gpt-2's when `pre` is unknown). */
  preConfig: PreTokenizerConfig | undefined;
  /** BPE only: merge ranks keyed `left + " " + right`. */
  merges: Map<string, number> | undefined;
  eog: Set<number>;
  /** Control, user-defined and unknown tokens, longest text first: what special-token parsing looks for. */
  specialTokens: number[];
}

const warnedPre = new Set<string>();

function readIdKey(file: GGUFFile, key: string, fallback: number | undefined, n: number): number | undefined {
  let id = fallback !== undefined && fallback >= n ? undefined : fallback;
  if (file.has(key)) {
    const v = file.getNumber(key);
    if (Number.isInteger(v) && v >= 0 && v < n) id = v;
  }
  return id;
}

export function loadVocab(file: GGUFFile): Vocab {
  const model = file.getString("tokenizer.ggml.model");
  let kind: "spm" | "bpe";
  if (model === "llama") kind = "spm";
  else if (model === "gpt2") kind = "bpe";
  else {
    throw new ModelFileError(
      file.path,
      `tokenizer "${model}" is not supported (Spindle reads "llama" SentencePiece and "gpt2" byte-level BPE vocabularies)`,
    );
  }

  const tokensValue = file.getArray("tokenizer.ggml.tokens");
  if (!Array.isArray(tokensValue) || (tokensValue.length > 0 && typeof tokensValue[0] !== "string")) {
    throw new ModelFileError(file.path, "tokenizer.ggml.tokens is missing or not an array of strings");
  }
  const raw = tokensValue as string[];
  const n = raw.length;
  if (n === 0) throw new ModelFileError(file.path, "tokenizer.ggml.tokens is empty");

  const scoresValue = file.getArray("tokenizer.ggml.scores");
  const scores = new Float32Array(n);
  if (scoresValue !== undefined) {
    if (scoresValue.length < n) {
      throw new ModelFileError(
        file.path,
        `tokenizer.ggml.scores has ${scoresValue.length} entries for ${n} tokens`,
      );
    }
    for (let i = 0; i < n; i++) scores[i] = Number(scoresValue[i]);
  }

  const typesValue = file.getArray("tokenizer.ggml.token_type");
  if (typesValue !== undefined && typesValue.length < n) {
    throw new ModelFileError(
      file.path,
      `tokenizer.ggml.token_type has ${typesValue.length} entries for ${n} tokens`,
    );
  }
  const attrs = new Uint16Array(n);
  const texts: string[] = new Array(n);
  const tokenToId = new Map<string, number>();
  let maxTokenLength = 0;
  for (let i = 0; i < n; i++) {
    const t = raw[i]!.length === 0 ? `[EMPTY_${i}]` : raw[i]!;
    texts[i] = t;
    tokenToId.set(t, i);
    if (t.length > maxTokenLength) maxTokenLength = t.length;
    attrs[i] = typesValue === undefined ? ATTR_NORMAL : (TYPE_TO_ATTR[Number(typesValue[i])] ?? 0);
  }

  // Flags: defaults per kind and pre-tokenizer, then what the file says.
  let pre = "default";
  let preConfig: PreTokenizerConfig | undefined;
  let merges: Map<string, number> | undefined;
  let addBos: boolean;
  let addSpacePrefix: boolean;
  let cleanSpaces: boolean;
  let bosDefault: number | undefined;
  let eosDefault: number | undefined;
  let unkDefault: number | undefined;
  if (kind === "spm") {
    addBos = true;
    addSpacePrefix = true;
    cleanSpaces = false;
    bosDefault = 1;
    eosDefault = 2;
    unkDefault = 0;
  } else {
    pre = file.getString("tokenizer.ggml.pre", "") || "default";
    preConfig = preTokenizerConfig(pre);
    if (!preConfig) {
      if (!warnedPre.has(pre)) {
        warnedPre.add(pre);
        console.warn(
          `spindle: ${file.path}: unknown pre-tokenizer "${pre}" (tokenizer.ggml.pre); using gpt-2's, so tokens may differ from the model's own tokenizer`,
        );
      }
      preConfig = preTokenizerConfig("gpt-2")!;
    }
    addBos = preConfig.addBos;
    addSpacePrefix = false;
    cleanSpaces = preConfig.cleanSpaces;
    bosDefault = preConfig.noBos ? undefined : 11;
    eosDefault = 11;
    unkDefault = undefined;
    const mergesValue = file.getArray("tokenizer.ggml.merges");
    if (!Array.isArray(mergesValue) || (mergesValue.length > 0 && typeof mergesValue[0] !== "string")) {
      throw new ModelFileError(file.path, "tokenizer.ggml.merges is missing or not an array of strings");
    }
    merges = new Map();
    const lines = mergesValue as string[];
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i]!;
      // "left right": the first space after the first character separates the two halves.
      if (line.indexOf(" ", 1) < 0) continue;
      if (!merges.has(line)) merges.set(line, i);
    }
  }
  addSpacePrefix = file.getBool("tokenizer.ggml.add_space_prefix", addSpacePrefix);

  const bos = readIdKey(file, "tokenizer.ggml.bos_token_id", bosDefault, n);
  const eos = readIdKey(file, "tokenizer.ggml.eos_token_id", eosDefault, n);
  let eot = readIdKey(file, "tokenizer.ggml.eot_token_id", undefined, n);
  let eom = readIdKey(file, "tokenizer.ggml.eom_token_id", undefined, n);
  const unk = readIdKey(file, "tokenizer.ggml.unknown_token_id", unkDefault, n);
  let fimPad = readIdKey(file, "tokenizer.ggml.fim_pad_token_id", undefined, n);
  let fimRep = readIdKey(file, "tokenizer.ggml.fim_rep_token_id", undefined, n);
  let fimSep = readIdKey(file, "tokenizer.ggml.fim_sep_token_id", undefined, n);
  addBos = file.getBool("tokenizer.ggml.add_bos_token", addBos);
  const addEos = file.getBool("tokenizer.ggml.add_eos_token", false);

  // Tokens recognised by their text. Recognised ones become control tokens.
  const byText = (list: readonly string[]): number | undefined => {
    let best: number | undefined;
    for (const t of list) {
      const id = tokenToId.get(t);
      if (id !== undefined && (best === undefined || id < best)) best = id;
    }
    if (best !== undefined) attrs[best]! |= ATTR_CONTROL;
    return best;
  };
  eot ??= byText(EOT_TEXTS);
  eom ??= byText(["<|eom_id|>"]);
  fimPad ??= byText(FIM_PAD_TEXTS);
  fimRep ??= byText(FIM_REP_TEXTS);
  fimSep ??= byText(FIM_SEP_TEXTS);

  // Control tokens named "unused" are unused.
  for (let i = 0; i < n; i++) {
    if (attrs[i]! & ATTR_CONTROL && texts[i]!.includes("unused")) attrs[i]! |= ATTR_UNUSED;
  }

  const eog = new Set<number>();
  for (const id of [fimPad, fimRep, fimSep]) if (id !== undefined) eog.add(id);
  for (const [t, id] of tokenToId) {
    if (EOG_TEXTS.has(t)) {
      eog.add(id);
      attrs[id]! |= ATTR_CONTROL;
    }
  }
  for (const [t, id] of tokenToId) if (ALWAYS_RENDERED.has(t)) attrs[id] = ATTR_USER_DEFINED;
  for (const id of [eos, eot, eom]) if (id !== undefined) eog.add(id);
  // Harmony (gpt-oss) and solar-open use <|end|> mid-turn; gemma4 uses </s> as text.
  const eogText = (t: string) => [...eog].some((id) => texts[id] === t);
  if (
    eogText("<|end|>") &&
    ((eogText("<|return|>") && eogText("<|call|>")) || (eogText("<|calls|>") && eogText("<|flush|>")))
  ) {
    for (const id of [...eog]) {
      if (texts[id] === "<|end|>") {
        eog.delete(id);
        attrs[id] = ATTR_USER_DEFINED;
      }
    }
  }
  if (eogText("<|tool_response>") && eogText("</s>")) {
    for (const id of [...eog]) {
      if (texts[id] === "</s>") {
        eog.delete(id);
        attrs[id] = ATTR_NORMAL;
      }
    }
  }

  const specialTokens: number[] = [];
  for (let i = 0; i < n; i++) {
    if (attrs[i]! & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)) specialTokens.push(i);
  }
  specialTokens.sort((a, b) => texts[b]!.length - texts[a]!.length || a - b);

  // Phi-3 strips whitespace after its special tokens (llama.cpp sets this by model name).
  const name = file.getString("general.name", "").toLowerCase();
  if (name.includes("phi-3") || name.includes("phi3")) {
    for (const id of specialTokens) attrs[id]! |= ATTR_RSTRIP;
    const set = (t: string, on: boolean) => {
      const id = tokenToId.get(t);
      if (id !== undefined) attrs[id] = on ? attrs[id]! | ATTR_RSTRIP : attrs[id]! & ~ATTR_RSTRIP;
    };
    set("</s>", true);
    for (const t of ["<unk>", "<s>", "<|endoftext|>"]) set(t, false);
  }

  return {
    kind,
    raw,
    texts,
    scores,
    attrs,
    tokenToId,
    maxTokenLength,
    bos,
    eos,
    eot,
    eom,
    unk,
    addBos,
    addEos,
    addSpacePrefix,
    cleanSpaces,
    pre,
    preConfig,
    merges,
    eog,
    specialTokens,
  };
}
