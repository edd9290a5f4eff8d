#!/usr/bin/env node
// Compiles the AssemblyScript kernels (src/kernels/wasm/kernels.ts) into dist-wasm/kernels.wasm:
// SIMD128, -O3, the stub runtime (no GC), no abort import, and the memory imported from the JS
// side (env.memory), which owns it: a shared memory (up to 4 GiB), so that views of it stay valid
// when it grows and worker threads can share it. Skips the compile when the .wasm is newer than every source,
// this script and the installed compiler (--force compiles anyway). The .wasm is a build output,
// never committed (.gitignore).
import { mkdirSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const srcDir = join(root, "src", "kernels", "wasm");
const entry = join(srcDir, "kernels.ts");
const outFile = join(root, "dist-wasm", "kernels.wasm");
const force = process.argv.includes("--force");

function mtime(p) {
  try {
    return statSync(p).mtimeMs;
  } catch {
    return -1;
  }
}

const inputs = [
  fileURLToPath(import.meta.url),
  join(root, "node_modules", "assemblyscript", "package.json"),
  ...readdirSync(srcDir)
    .filter((f) => f.endsWith(".ts"))
    .map((f) => join(srcDir, f)),
];
const newest = Math.max(...inputs.map(mtime));
if (!force && mtime(outFile) > newest) process.exit(0);

mkdirSync(dirname(outFile), { recursive: true });
const asc = await import("assemblyscript/asc");
const args = [
  relative(root, entry),
  "--outFile",
  relative(root, outFile),
  "--optimizeLevel",
  "3",
  "--shrinkLevel",
  "0",
  "--noAssert",
  "--runtime",
  "stub",
  "--use",
  "abort=",
  "--enable",
  "simd",
  "--enable",
  "threads",
  "--importMemory",
  "--sharedMemory",
  "--initialMemory",
  "1",
  "--maximumMemory",
  "65536",
];
// AssemblyScript's @inline is a decorator on a function, which is not TypeScript (Biome cannot parse
// it), so the source marks such functions with a `// @inline` line instead, turned into the
// decorator here as asc reads the file.
const readFile = (name, baseDir) => {
  try {
    const text = readFileSync(join(baseDir, name), "utf8");
    return text.replace(/^\/\/ @inline\n(export )?function/gm, "@inline $1function");
  } catch {
    return null;
  }
};
const { error, stderr } = await asc.main(args, { stdout: process.stdout, stderr: process.stderr, readFile });
if (error) {
  process.stderr.write(`build-kernels: asc failed: ${error.message}\n${stderr?.toString() ?? ""}`);
  process.exit(1);
}
process.stderr.write(`build-kernels: wrote ${relative(root, outFile)} (${statSync(outFile).size} bytes)\n`);
