import { join } from "node:path";
import { HERMES_TOOL_TEMPLATE } from "../../src/chat/hermes-template.js";
import { readGGUF } from "../../src/gguf/reader.js";
import { GGMLType } from "../../src/gguf/types.js";
import { meta, withMetadata, writeGGUF } from "../../src/gguf/writer.js";
import { SHAPES, synthModel } from "../../src/model/synth.js";
import { testModel, VOCAB_SPM } from "./models.js";
import { tempDir } from "./tmp.js";

/**
 * A model that knows tools: the tiny shape with random weights, the llama SPM vocabulary and
 * Spindle's Hermes-style tool template (`synth-model --chat-template hermes`), written to a fresh
 * temporary folder. With random weights, every valid tool call it makes is the grammar's doing.
 */
export function hermesToolModel(contextLength?: number): string {
  const path = join(tempDir("spindle-hermes-"), "hermes-tiny.gguf");
  synthModel({
    arch: "llama",
    shape: contextLength === undefined ? SHAPES.tiny! : { ...SHAPES.tiny!, contextLength },
    type: GGMLType.F32,
    vocabPath: testModel(VOCAB_SPM),
    out: path,
    chatTemplate: HERMES_TOOL_TEMPLATE,
  });
  return path;
}

/** The ids the Qwen-style Hermes model gives `<tool_call>` and `</tool_call>` (last ids of the SPM vocabulary). */
export const CALL_TOKENS = { open: 31998, close: 31999 } as const;

/**
 * The Hermes tool model with `<tool_call>` and `</tool_call>` as single user-defined tokens, as
 * Qwen's vocabulary has them: the llama SPM vocabulary with its last two pieces replaced, written
 * to a fresh temporary folder. A logit bias on `CALL_TOKENS.open` makes the random model start calls.
 */
export function hermesCallTokenModel(): string {
  const dir = tempDir("spindle-hermes-tok-");
  const src = readGGUF(testModel(VOCAB_SPM));
  const tokens = [...(src.getArray("tokenizer.ggml.tokens") as string[])];
  const types = Int32Array.from(src.getArray("tokenizer.ggml.token_type") as ArrayLike<number>);
  tokens[CALL_TOKENS.open] = "<tool_call>";
  tokens[CALL_TOKENS.close] = "</tool_call>";
  types[CALL_TOKENS.open] = 4; // user-defined: matched whole in text, rendered as its text
  types[CALL_TOKENS.close] = 4;
  const vocabPath = join(dir, "vocab.gguf");
  writeGGUF(
    vocabPath,
    withMetadata(src.metadata, {
      "tokenizer.ggml.tokens": meta.strings(tokens),
      "tokenizer.ggml.token_type": meta.i32s(types),
    }),
    [],
  );
  const path = join(dir, "hermes-tok-tiny.gguf");
  synthModel({
    arch: "llama",
    shape: SHAPES.tiny!,
    type: GGMLType.F32,
    vocabPath,
    out: path,
    chatTemplate: HERMES_TOOL_TEMPLATE,
  });
  return path;
}
