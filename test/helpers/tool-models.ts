import { join } from "node:path";
import { HERMES_TOOL_TEMPLATE } from "../../src/chat/hermes-template.js";
import { GGMLType } from "../../src/gguf/types.js";
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
