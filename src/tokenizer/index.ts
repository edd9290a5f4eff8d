/**
 * Tokenizers read from GGUF metadata (`tokenizer.ggml.*`): SentencePiece and
 * byte-level BPE, matching llama.cpp's token ids, plus UTF-8-safe incremental decoding.
 */
import type { GGUFFile } from "../gguf/reader.js";
import { GGUFTokenizer, type Tokenizer } from "./tokenizer.js";

export { IncrementalDecoder, type IncrementalDecoderOptions } from "./decoder.js";
export { KNOWN_PRE_TOKENIZERS } from "./pretokenize.js";
export type { DecodeOptions, EncodeOptions, Tokenizer } from "./tokenizer.js";
export { GGUFTokenizer } from "./tokenizer.js";

/** Builds the tokenizer a GGUF file describes. Throws ModelFileError for a vocabulary it cannot read. */
export function tokenizerFromGGUF(file: GGUFFile): Tokenizer {
  return new GGUFTokenizer(file);
}
