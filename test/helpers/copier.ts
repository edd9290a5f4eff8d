import { join } from "node:path";
import { WordStream } from "../../src/bench/prompts.js";
import { GGMLType } from "../../src/gguf/types.js";
import { SHAPES, synthModel } from "../../src/model/synth.js";
import { testModel, VOCAB_SPM } from "./models.js";
import { tempDir } from "./tmp.js";

/**
 * A model that copies its prompt (`synth-model --copier`): the 135M shape in Q8_0 with three
 * layers, the two of its induction circuit and one that computes but writes nothing, written to a
 * fresh temporary folder.
 */
export function copierModel(): string {
  const path = join(tempDir("spindle-copier-"), "copier.gguf");
  const shape = { ...SHAPES["smollm2-135m"]!, nLayers: 3 };
  synthModel({
    arch: "llama",
    shape,
    type: GGMLType.Q8_0,
    vocabPath: testModel(VOCAB_SPM),
    out: path,
    copier: true,
  });
  return path;
}

/**
 * The benchmark's copy workload: a passage of 30 random common words (some repeat), written out
 * three times, each copy ending in a newline.
 */
export function copyPrompt(seed = 5): { passage: string; prompt: string } {
  const passage = new WordStream(seed).text(30);
  return { passage, prompt: `${passage}\n${passage}\n${passage}\n` };
}
