import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join, posix, relative, resolve } from "node:path";
import ts from "typescript";
import { describe, expect, it } from "vitest";

/**
 * The layers of the code, top to bottom: the one place this order is written down (docs/architecture.md
 * states it too, and the last test below checks that it says the same). A file may import files of its
 * own layer and of any layer below it, never of a layer above. Folders on one line are one layer.
 * `src` stands for the files directly in src/ (errors.ts, net.ts, worker-entry.ts): the base that every
 * layer may use. `bench` is the top-level folder of development benchmarks, outside the product.
 */
const LAYERS: readonly (readonly string[])[] = [
  ["bench"],
  ["src/cli"],
  ["src/bench"],
  ["src/server"],
  ["src/backends"],
  ["src/engine"],
  ["src/model"],
  ["src/protocol"],
  ["src/grammar"],
  ["src/chat", "src/sampling", "src/tokenizer"],
  ["src/kernels"],
  ["src/quant"],
  ["src/gguf"],
  ["src"],
];

const ROOT = resolve(import.meta.dirname, "..");
/** Source that is not TypeScript for Node: the AssemblyScript kernels, compiled on their own. */
const SKIP = ["src/kernels/wasm"];

/** The unit (a LAYERS entry) a repository-relative path belongs to: its top folder under src/, or src, or bench. */
function unitOf(path: string): string {
  const parts = path.split("/");
  if (parts[0] === "bench") return "bench";
  if (parts[0] === "src") return parts.length > 2 ? `src/${parts[1]}` : "src";
  return parts[0]!;
}

function layerOf(unit: string): number {
  return LAYERS.findIndex((layer) => layer.includes(unit));
}

/**
 * Every relative module specifier a file names: import and export-from declarations (type-only
 * ones included: a type is a dependency too), `import x = require()`, dynamic `import()` calls and
 * `import("…").T` types. Package specifiers ("node:fs", "fastify") are not edges between layers.
 */
function relativeImports(fileName: string, text: string): { specifier: string; line: number }[] {
  const sf = ts.createSourceFile(fileName, text, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
  const out: { specifier: string; line: number }[] = [];
  const add = (node: ts.Node | undefined) => {
    if (node && ts.isStringLiteralLike(node) && node.text.startsWith(".")) {
      out.push({ specifier: node.text, line: sf.getLineAndCharacterOfPosition(node.getStart()).line + 1 });
    }
  };
  const visit = (node: ts.Node): void => {
    if (ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) add(node.moduleSpecifier);
    else if (ts.isImportEqualsDeclaration(node) && ts.isExternalModuleReference(node.moduleReference)) {
      add(node.moduleReference.expression);
    } else if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword) {
      add(node.arguments[0]);
    } else if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument)) add(node.argument.literal);
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return out;
}

/**
 * The imports among `files` (repository-relative path → text) that break the layering: an import of
 * a higher layer, or a file or target in no layer (a new folder must be given its place in LAYERS).
 */
function layerViolations(files: ReadonlyMap<string, string>): string[] {
  const problems: string[] = [];
  for (const [from, text] of files) {
    const fromLayer = layerOf(unitOf(from));
    if (fromLayer < 0) problems.push(`${from}: ${unitOf(from)} is in no layer (add it to LAYERS)`);
    for (const { specifier, line } of relativeImports(from, text)) {
      const to = posix.normalize(posix.join(posix.dirname(from), specifier)).replace(/\.js$/, ".ts");
      const toLayer = layerOf(unitOf(to));
      if (toLayer < 0) problems.push(`${from}:${line} imports ${to}, which is in no layer`);
      else if (fromLayer >= 0 && toLayer < fromLayer) {
        problems.push(`${from}:${line} (${unitOf(from)}) imports ${to} (${unitOf(to)}), a higher layer`);
      }
    }
  }
  return problems;
}

function sourceFiles(dir: string, out = new Map<string, string>()): Map<string, string> {
  if (!existsSync(dir)) return out;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const abs = join(dir, entry.name);
    const rel = relative(ROOT, abs).split("\\").join("/");
    if (SKIP.includes(rel)) continue;
    if (entry.isDirectory()) sourceFiles(abs, out);
    else if (/\.(ts|mts|js|mjs)$/.test(entry.name)) out.set(rel, readFileSync(abs, "utf8"));
  }
  return out;
}

/** The layer order as one line, the way docs/architecture.md writes it. */
function layersLine(): string {
  return LAYERS.map((layer) => layer.join(", ")).join(" → ");
}

describe("layers", () => {
  it("no file in src/ or bench/ imports a higher layer", () => {
    const files = sourceFiles(join(ROOT, "src"));
    for (const [k, v] of sourceFiles(join(ROOT, "bench"))) files.set(k, v);
    expect(files.size).toBeGreaterThan(100);
    expect(layerViolations(files)).toEqual([]);
  });

  it("the check reports an upward import with its file, line and target, and accepts a downward one", () => {
    const files = new Map([
      [
        "src/kernels/kernels.ts",
        'import { x } from "../gguf/types.js";\nimport type { RopeParams } from "../model/config.js";\n',
      ],
      [
        "src/model/config.ts",
        'export type { A } from "../kernels/kernels.js";\nconst m = await import("../cli/main.js");\n',
      ],
      ["src/errors.ts", 'type T = import("./server/app.js").App;\nimport "node:fs";\n'],
      ["src/server/app.ts", 'import { run } from "../../bench/vs-llamacpp.js";\n'],
      ["bench/vs-llamacpp.ts", 'import { generate } from "../src/model/generate.js";\n'],
      ["src/newfolder/x.ts", "export {};\n"],
    ]);
    expect(layerViolations(files)).toEqual([
      "src/kernels/kernels.ts:2 (src/kernels) imports src/model/config.ts (src/model), a higher layer",
      "src/model/config.ts:2 (src/model) imports src/cli/main.ts (src/cli), a higher layer",
      "src/errors.ts:1 (src) imports src/server/app.ts (src/server), a higher layer",
      "src/server/app.ts:1 (src/server) imports bench/vs-llamacpp.ts (bench), a higher layer",
      "src/newfolder/x.ts: src/newfolder is in no layer (add it to LAYERS)",
    ]);
  });

  it("docs/architecture.md states the same order", () => {
    const doc = readFileSync(join(ROOT, "docs/architecture.md"), "utf8");
    const line = layersLine();
    expect(doc.includes(line), `docs/architecture.md should contain the line:\n${line}`).toBe(true);
  });
});
