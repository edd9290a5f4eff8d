/**
 * A target and a draft model that agree, for benchmarking `--draft-model` on synthesized models
 * (random weights: two independently synthesized models never agree, so a draft of another shape
 * measures only the cost of being wrong). From a synthesized model of N layers it writes:
 *
 * - the target: the same file with the outputs of layers L..N−1 zeroed (attn_output and ffn_down),
 *   so those layers add nothing to the residual stream but cost exactly what they did;
 * - the draft: its first L layers, with the same embeddings, output norm and LM head.
 *
 * The two compute the same logits (a zero matmul output adds exactly 0), so every greedy draft is
 * accepted: what this measures is what a draft that always agrees buys at the draft's real cost,
 * the upper bound for a draft model of that size.
 *
 *   tsx bench/layer-skip-pair.ts SOURCE.gguf L TARGET_OUT.gguf DRAFT_OUT.gguf
 */
import { readGGUF } from "../src/gguf/reader.js";
import { meta, type TensorToWrite, withMetadata, writeGGUF } from "../src/gguf/writer.js";

const [source, layersArg, targetOut, draftOut] = process.argv.slice(2);
if (!source || !layersArg || !targetOut || !draftOut) {
  process.stderr.write("usage: tsx bench/layer-skip-pair.ts SOURCE.gguf L TARGET_OUT.gguf DRAFT_OUT.gguf\n");
  process.exit(2);
}
const keep = Number(layersArg);
const g = readGGUF(source);
const arch = g.getString("general.architecture");
const blockCount = `${arch}.block_count`;
const n = Number(g.get(blockCount));
if (!(keep >= 1 && keep < n)) throw new Error(`L must be from 1 to ${n - 1}`);
const layerOf = (name: string) => {
  const m = /^blk\.(\d+)\./.exec(name);
  return m ? Number(m[1]) : undefined;
};
const target: TensorToWrite[] = [];
const draft: TensorToWrite[] = [];
for (const t of g.tensors.values()) {
  const data = g.readTensor(t.name);
  const l = layerOf(t.name);
  const silent = l !== undefined && l >= keep && /\.(attn_output|ffn_down)\.weight$/.test(t.name);
  const tensor = { name: t.name, dims: t.dims, type: t.type, data };
  // Zero bytes are a zero matrix in every ggml type (scales 0).
  target.push(silent ? { ...tensor, data: new Uint8Array(data.length) } : tensor);
  if (l === undefined || l < keep) draft.push(tensor);
}
writeGGUF(targetOut, g.metadata, target);
writeGGUF(
  draftOut,
  withMetadata(g.metadata, {
    [blockCount]: meta.u32(keep),
    "general.name": meta.str(`${g.getString("general.name") ?? "draft"} first ${keep} layers`),
  }),
  draft,
);
g.close();
process.stdout.write(`${targetOut}\n${draftOut}\n`);
