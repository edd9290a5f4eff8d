#!/usr/bin/env node
// Compiles the AssemblyScript kernels (src/kernels/wasm/kernels.ts) twice: dist-wasm/kernels.wasm
// (SIMD128) and dist-wasm/kernels-relaxed.wasm (SIMD128 plus relaxed SIMD, which the source tests
// through ASC_FEATURE_RELAXED_SIMD; the kernels pick it at start-up where Node runs it). Both: -O3,
// the stub runtime (no GC), no abort import, and the memory imported from the JS side
// (env.memory), which owns it: a shared memory (up to 4 GiB), so that views of it stay valid when
// it grows and worker threads can share it.
//
// The two .wasm files are committed, with dist-wasm/kernels.json: for each build, the SHA-256 of
// its inputs (compiler version, arguments, sources) and of the .wasm they gave. Binaryen's -O3
// takes minutes per build on CI's two cores (about 4.5 here) while V8 optimizes the module again
// anyway, and a fresh clone's `npm start` should answer within a minute: so a build runs only when
// its inputs' hash differs from the recorded one (or the .wasm's bytes differ from the recorded
// hash), and `--check` (CI: `npm run check:kernels`) compiles both afresh into a temporary folder
// and fails unless the bytes equal the committed files byte for byte. After changing a kernel
// source, `npm run build:kernels` rebuilds and records; commit dist-wasm/ with the source.
//
//
// A reproduction costs two -O3 builds (about 7 minutes of a core each; Binaryen's first
// simplify-globals-optimizing pass, which re-optimizes every function after inlining, is over 90%
// of it), and it proves something new only once per distinct set of inputs. So a successful
// `--check --record` writes `verified` into each build's manifest entry: the inputs and .wasm hashes
// it reproduced. `--check --if-unverified` (CI) checks the hashes in a second (sources against the
// recorded inputs, committed bytes against the recorded .wasm) and does the full rebuild only when
// an entry is not verified for exactly these inputs and bytes, i.e. when the kernels changed since
// the last reproduction. `npm run build:kernels` writes entries without `verified`, so the next CI run
// reproduces a new build unless someone ran `npm run check:kernels -- --record` on another checkout.
//
//   node scripts/build-kernels.mjs            # build what is out of date
//   node scripts/build-kernels.mjs --force    # build both anyway
//   node scripts/build-kernels.mjs --check    # rebuild both elsewhere; fail unless byte-identical
//   node scripts/build-kernels.mjs --check --record          # ... and record the reproduction
//   node scripts/build-kernels.mjs --check --if-unverified   # hashes only, when already reproduced
//   node scripts/build-kernels.mjs --only relaxed --out dist-wasm --quick   # -O0, unrecorded: results only
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const srcDir = join(root, "src", "kernels", "wasm");
const entry = join(srcDir, "kernels.ts");
const outDir = join(root, "dist-wasm");
const manifestPath = join(outDir, "kernels.json");
const builds = [
  { name: "simd", file: "kernels.wasm", features: [] },
  { name: "relaxed", file: "kernels-relaxed.wasm", features: ["--enable", "relaxed-simd"] },
];
const common = [
  relative(root, entry).replaceAll("\\", "/"),
  "--optimizeLevel",
  // --quick (with --only and --out, never recorded): AssemblyScript's own inlining, no Binaryen
  // passes: about 30 s instead of 7 minutes, for checking a kernel change's results; its speed
  // is not the product's (see docs/benchmarks.md).
  process.argv.includes("--quick") ? "0" : "3",
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
const INLINE_MARK = /^\/\/ @inline\n(export )?function/gm;
const INLINE_DECORATOR = "@inline $1function";

const args = process.argv.slice(2);
const flag = (name) => args.includes(name);
const argValue = (name) => {
  const at = args.indexOf(name);
  return at >= 0 ? args[at + 1] : undefined;
};

const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");
const fileHash = (path) => {
  try {
    return sha256(readFileSync(path));
  } catch {
    return null;
  }
};

/** What a build's bytes depend on: the compiler's version, its arguments, every kernel source. */
function inputsHash(build) {
  const h = createHash("sha256");
  const asc = JSON.parse(readFileSync(join(root, "node_modules", "assemblyscript", "package.json"), "utf8"));
  h.update(`assemblyscript ${asc.version}\n`);
  h.update(`${JSON.stringify([...common, ...build.features])}\n`);
  h.update(`${INLINE_MARK.source} -> ${INLINE_DECORATOR}\n`);
  for (const f of readdirSync(srcDir)
    .filter((f) => f.endsWith(".ts"))
    .sort()) {
    // Line endings normalized, so a checkout with CRLF hashes the same.
    const text = readFileSync(join(srcDir, f), "utf8").replaceAll("\r\n", "\n");
    h.update(`${f}\n${text.length}\n${text}`);
  }
  return h.digest("hex");
}

function readManifest() {
  try {
    return JSON.parse(readFileSync(manifestPath, "utf8"));
  } catch {
    return { builds: {} };
  }
}

/** Compiles one build into `dir` in this process. */
async function compile(build, dir) {
  mkdirSync(dir, { recursive: true });
  const asc = await import("assemblyscript/asc");
  const outFile = join(dir, build.file);
  const readFile = (name, baseDir) => {
    try {
      return readFileSync(join(baseDir, name), "utf8")
        .replaceAll("\r\n", "\n")
        .replace(INLINE_MARK, INLINE_DECORATOR);
    } catch {
      return null;
    }
  };
  const t0 = performance.now();
  const { error, stderr } = await asc.main([...common, ...build.features, "--outFile", outFile], {
    stdout: process.stdout,
    stderr: process.stderr,
    readFile,
  });
  if (error) {
    process.stderr.write(`build-kernels: asc failed: ${error.message}\n${stderr?.toString() ?? ""}`);
    process.exit(1);
  }
  const seconds = ((performance.now() - t0) / 1000).toFixed(0);
  process.stderr.write(
    `build-kernels: compiled ${build.name} (${statSync(outFile).size} bytes, ${seconds} s)\n`,
  );
}

/** Compiles these builds into `dir`, each in a child process of its own, at the same time. */
async function compileAll(list, dir) {
  if (list.length === 1) return compile(list[0], dir);
  const codes = await Promise.all(
    list.map(
      (b) =>
        new Promise((resolve) =>
          spawn(process.execPath, [fileURLToPath(import.meta.url), "--only", b.name, "--out", dir], {
            stdio: "inherit",
          }).on("exit", (code) => resolve(code ?? 1)),
        ),
    ),
  );
  if (!codes.every((c) => c === 0)) process.exit(1);
}

const only = argValue("--only");
if (flag("--quick") && (only === undefined || argValue("--out") === undefined)) {
  process.stderr.write(
    "build-kernels: --quick needs --only BUILD and --out DIR (a quick build is never recorded)\n",
  );
  process.exit(2);
}
if (only !== undefined) {
  // A child of compileAll.
  const build = builds.find((b) => b.name === only);
  if (build === undefined) throw new Error(`build-kernels: no build "${only}"`);
  await compile(build, argValue("--out") ?? outDir);
  process.exit(0);
}

if (flag("--check") && flag("--if-unverified")) {
  // The hashes, always: the sources are the ones recorded and the committed bytes the recorded ones.
  const manifest = readManifest();
  const problems = [];
  let verified = true;
  for (const b of builds) {
    const recorded = manifest.builds[b.name];
    const inputs = inputsHash(b);
    const wasm = fileHash(join(outDir, b.file));
    if (recorded?.inputs !== inputs)
      problems.push(
        `dist-wasm/kernels.json's entry for ${b.name} is not for these sources (run npm run build:kernels)`,
      );
    if (recorded?.wasm !== wasm)
      problems.push(`dist-wasm/${b.file} is not the file kernels.json records (run npm run build:kernels)`);
    if (recorded?.verified?.inputs !== inputs || recorded?.verified?.wasm !== wasm) verified = false;
  }
  if (problems.length > 0) {
    process.stderr.write(`build-kernels --check: FAILED\n  ${problems.join("\n  ")}\n`);
    process.exit(1);
  }
  if (verified) {
    process.stderr.write(
      "build-kernels --check: sources and dist-wasm/ are the recorded ones, and both builds were reproduced byte for byte from exactly these inputs before (kernels.json's verified); no rebuild\n",
    );
    process.exit(0);
  }
  process.stderr.write("build-kernels --check: these kernels were not reproduced yet: rebuilding both\n");
}

if (flag("--check")) {
  const dir = mkdtempSync(join(tmpdir(), "spindle-kernels-"));
  try {
    await compileAll(builds, dir);
    const manifest = readManifest();
    const problems = [];
    for (const b of builds) {
      const fresh = readFileSync(join(dir, b.file));
      const committed = fileHash(join(outDir, b.file));
      const recorded = manifest.builds[b.name];
      if (committed !== sha256(fresh))
        problems.push(
          `dist-wasm/${b.file} is not what its sources compile to (run npm run build:kernels, commit dist-wasm/)`,
        );
      if (recorded?.inputs !== inputsHash(b) || recorded?.wasm !== sha256(fresh))
        problems.push(
          `dist-wasm/kernels.json's entry for ${b.name} is out of date (run npm run build:kernels)`,
        );
    }
    if (problems.length > 0) {
      process.stderr.write(`build-kernels --check: FAILED\n  ${problems.join("\n  ")}\n`);
      process.exit(1);
    }
    process.stderr.write(
      "build-kernels --check: both builds reproduce the committed dist-wasm/ byte for byte\n",
    );
    if (flag("--record")) {
      for (const b of builds) {
        const entry = manifest.builds[b.name];
        entry.verified = { inputs: entry.inputs, wasm: entry.wasm };
      }
      writeFileSync(manifestPath, `${JSON.stringify(manifest, null, 2)}\n`);
      process.stderr.write("build-kernels --check: recorded in dist-wasm/kernels.json (verified)\n");
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  process.exit(0);
}

const manifest = readManifest();
// Without the compiler (an install with --omit=dev) nothing can be rebuilt: the committed .wasm
// files are used as they are when their bytes are the recorded ones.
const haveCompiler = fileHash(join(root, "node_modules", "assemblyscript", "package.json")) !== null;
const stale = builds.filter((b) => {
  if (flag("--force")) return true;
  const recorded = manifest.builds[b.name];
  if (recorded?.wasm !== fileHash(join(outDir, b.file))) return true;
  return haveCompiler && recorded?.inputs !== inputsHash(b);
});
if (stale.length === 0) process.exit(0);
process.stderr.write(
  `build-kernels: compiling ${stale.map((b) => b.name).join(" and ")} (Binaryen -O3: minutes; commit dist-wasm/ afterwards)\n`,
);
await compileAll(stale, outDir);
for (const b of stale)
  manifest.builds[b.name] = { inputs: inputsHash(b), wasm: fileHash(join(outDir, b.file)) };
writeFileSync(manifestPath, `${JSON.stringify(manifest, null, 2)}\n`);
