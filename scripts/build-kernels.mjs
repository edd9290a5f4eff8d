#!/usr/bin/env node
// Compiles the AssemblyScript kernels (src/kernels/wasm/kernels.ts) into dist-wasm/kernels.wasm:
// SIMD128, -O3, the stub runtime (no GC), no abort import, and the memory imported from the JS
// side (env.memory), which owns it. Skips the compile when the .wasm is newer than every source,
// this script and the installed compiler (--force compiles anyway). The .wasm is a build output,
// never committed (.gitignore).
import { mkdirSync, readdirSync, statSync } from "node:fs";
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
  "--importMemory",
  "--initialMemory",
  "1",
];
const { error, stderr } = await asc.main(args, { stdout: process.stdout, stderr: process.stderr });
if (error) {
  process.stderr.write(`build-kernels: asc failed: ${error.message}\n${stderr?.toString() ?? ""}`);
  process.exit(1);
}
process.stderr.write(`build-kernels: wrote ${relative(root, outFile)} (${statSync(outFile).size} bytes)\n`);
