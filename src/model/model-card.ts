import { readGGUF } from "../gguf/reader.js";
import { type Tokenizer, tokenizerFromGGUF } from "../tokenizer/index.js";
import { configFromGGUF } from "./config.js";

/**
 * What serving needs to know about a model without its weights: the tokenizer,
 * the chat template and the context length, read from the GGUF's metadata.
 * Backends that compute elsewhere (llamacpp, openai) or not at all (sim) use it.
 */
export interface ModelCard {
  path: string;
  name: string;
  tokenizer: Tokenizer;
  contextLength: number;
  vocabSize: number;
  chatTemplate: string | undefined;
}

export function readModelCard(path: string): ModelCard {
  const g = readGGUF(path);
  try {
    const config = configFromGGUF(g);
    const tokenizer = tokenizerFromGGUF(g);
    return {
      path,
      name: config.name,
      tokenizer,
      contextLength: config.contextLength,
      vocabSize: config.vocabSize,
      chatTemplate: g.has("tokenizer.chat_template") ? g.getString("tokenizer.chat_template") : undefined,
    };
  } finally {
    g.close();
  }
}
