#!/usr/bin/env node
// Compiles the AssemblyScript kernels (src/kernels/wasm/kernels.ts) twice: dist-wasm/kernels.wasm
// (SIMD128) and dist-wasm/kernels-relaxed.wasm (SIMD128 plus relaxed SIMD, which the source tests
// through ASC_FEATURE_RELAXED_SIMD; the kernels pick it at start-up where Node runs it). Both: -O3,
// the stub runtime (no GC), no abort import, and the memory imported from the JS side
// (env.memory), which owns it: a shared memory (up to 4 GiB), so that views of it stay valid when
// it grows and worker threads can share it. Skips a build whose .wasm is newer than every source,
// this script and the installed compiler (--force compiles anyway). The .wasm files are build
// outputs, never committed (.gitignore).
import { spawn } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const srcDir = join(root, "src", "kernels", "wasm");
const entry = join(srcDir, "kernels.ts");
const builds = [
  { name: "simd", outFile: join(root, "dist-wasm", "kernels.wasm"), features: [] },
  {
    name: "relaxed",
    outFile: join(root, "dist-wasm", "kernels-relaxed.wasm"),
    features: ["--enable", "relaxed-simd"],
  },
];
// `--only NAME` compiles one build in this process; without it, each stale build compiles in a
// child process of its own, at the same time (Binaryen's -O3 takes minutes; CI has 2 cores).
const onlyAt = process.argv.indexOf("--only");
const only = onlyAt >= 0 ? process.argv[onlyAt + 1] : undefined;
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
const stale = builds.filter((b) =>
  only === undefined ? force || mtime(b.outFile) <= newest : b.name === only,
);
if (stale.length === 0) process.exit(0);
if (only === undefined && stale.length > 1) {
  const codes = await Promise.all(
    stale.map(
      (b) =>
        new Promise((resolve) =>
          spawn(process.execPath, [fileURLToPath(import.meta.url), "--only", b.name], {
            stdio: "inherit",
          }).on("exit", (code) => resolve(code ?? 1)),
        ),
    ),
  );
  process.exit(codes.every((c) => c === 0) ? 0 : 1);
}

mkdirSync(join(root, "dist-wasm"), { recursive: true });
const asc = await import("assemblyscript/asc");
const common = [
  relative(root, entry),
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
for (const { outFile, features } of stale) {
  const args = [...common, ...features, "--outFile", relative(root, outFile)];
  const { error, stderr } = await asc.main(args, {
    stdout: process.stdout,
    stderr: process.stderr,
    readFile,
  });
  if (error) {
    process.stderr.write(`build-kernels: asc failed: ${error.message}\n${stderr?.toString() ?? ""}`);
    process.exit(1);
  }
  process.stderr.write(`build-kernels: wrote ${relative(root, outFile)} (${statSync(outFile).size} bytes)\n`);
}
