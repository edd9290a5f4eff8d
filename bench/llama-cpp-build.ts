import { execFile, spawn } from "node:child_process";
import { createWriteStream, existsSync, mkdirSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

/**
 * llama.cpp's own programs (llama-server, llama-bench, llama-batched-bench) for the development
 * benchmarks that compare Spindle with native llama.cpp on the same file: found in a folder given
 * on the command line, or built once from the llama.cpp sources that node-llama-cpp's npm package
 * carries as a git bundle (node_modules/node-llama-cpp/llama/gitRelease.bundle: no network) and
 * cached per commit outside the repository, in ~/.cache/spindle/llama.cpp/<commit>/
 * ($SPINDLE_LLAMA_CPP_CACHE), so later runs find them at once:
 *
 *   git clone <bundle> <cache>/src
 *   cmake -S <cache>/src -B <cache>/build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
 *     -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
 *   cmake --build <cache>/build --target <tools> -j2
 *
 * A CPU build for this machine (GGML_NATIVE: its AVX-512 / VNNI), without AMX: where the compiler's
 * native target has AMX tiles, ggml's AMX matmul at this commit died of SIGILL (tilezero in a worker
 * thread) on the first prompt on the Sapphire Rapids VMs here, although a one-thread probe that asks
 * Linux for the tile state (arch_prctl) runs AMX fine; that build adds -mno-amx-* and lives in
 * <cache>/build-no-amx. The first build takes minutes on two cores (llama-server the longest); its output goes to <cache>/build.log. Used by
 * `bench:vs-llamacpp --native auto` and `bench:vs-llama-server`.
 */

const run = promisify(execFile);

export type LlamaTool = "llama-server" | "llama-bench" | "llama-batched-bench";

/** The git bundle of llama.cpp's sources inside node-llama-cpp's package. */
export const LLAMA_BUNDLE = fileURLToPath(
  new URL("../node_modules/node-llama-cpp/llama/gitRelease.bundle", import.meta.url),
);

export const CMAKE_FLAGS = [
  "-DGGML_NATIVE=ON",
  "-DLLAMA_CURL=OFF",
  "-DLLAMA_OPENSSL=OFF",
  "-DCMAKE_BUILD_TYPE=Release",
  "-DLLAMA_BUILD_TESTS=OFF",
  "-DLLAMA_BUILD_EXAMPLES=OFF",
];

/** Compiler flags that keep AMX out of a native build whose target has it (empty otherwise). */
async function amxOff(): Promise<string[]> {
  if (process.platform === "win32") return [];
  try {
    const { stdout } = await run("sh", ["-c", "cc -march=native -dM -E - < /dev/null"]);
    if (!stdout.includes("__AMX_TILE__")) return [];
  } catch {
    return [];
  }
  const flags = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16";
  return [`-DCMAKE_C_FLAGS=${flags}`, `-DCMAKE_CXX_FLAGS=${flags}`];
}

/** The commit the bundle holds (its HEAD), first 12 hex digits. */
export async function bundleCommit(bundle = LLAMA_BUNDLE): Promise<string> {
  if (!existsSync(bundle))
    throw new Error(`no llama.cpp sources at ${bundle} (node-llama-cpp is an optional dependency: npm ci)`);
  const { stdout } = await run("git", ["bundle", "list-heads", bundle]);
  const head = stdout.split("\n").find((l) => l.endsWith(" HEAD")) ?? stdout.split("\n")[0] ?? "";
  const sha = head.split(" ")[0] ?? "";
  if (!/^[0-9a-f]{40}$/.test(sha)) throw new Error(`cannot read the commit of ${bundle}`);
  return sha.slice(0, 12);
}

/** Where a commit's sources and build are cached. */
export function llamaCacheDir(commit: string): string {
  const root = process.env.SPINDLE_LLAMA_CPP_CACHE ?? join(homedir(), ".cache", "spindle", "llama.cpp");
  return join(root, commit);
}

/** The tools' paths in `dir`, or an error naming what is missing. */
export function toolsIn<T extends LlamaTool>(dir: string, tools: readonly T[]): Record<T, string> {
  const paths = Object.fromEntries(tools.map((t) => [t, join(dir, t)])) as Record<T, string>;
  const missing = tools.filter((t) => !existsSync(paths[t]));
  if (missing.length > 0) throw new Error(`${dir}: no ${missing.join(" or ")} there`);
  return paths;
}

/** Runs a command with its output appended to `log`; rejects naming the log on failure. */
function logged(cmd: string, args: string[], log: string, cwd?: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const out = createWriteStream(log, { flags: "a" });
    out.write(`\n$ ${cmd} ${args.join(" ")}\n`);
    const child = spawn(cmd, args, { cwd, stdio: ["ignore", "pipe", "pipe"] });
    child.stdout.pipe(out, { end: false });
    child.stderr.pipe(out, { end: false });
    child.on("error", (err) => {
      out.end();
      reject(err);
    });
    child.on("close", (code) => {
      out.end();
      if (code === 0) resolve();
      else reject(new Error(`${cmd} ${args[0]} failed (exit ${code}); see ${log}`));
    });
  });
}

export interface FindOptions {
  /** A folder that already holds the tools (e.g. a llama.cpp build/bin): used as it is, never built. */
  dir?: string;
  /** Parallel compile jobs (default 2). */
  jobs?: number;
  /** Progress lines (default: stderr). */
  log?: (line: string) => void;
}

/**
 * The paths of `tools`: from `o.dir` when given, else from the cache, building what is missing
 * from node-llama-cpp's bundle first (minutes the first time).
 */
export async function llamaCppTools<T extends LlamaTool>(
  tools: readonly T[],
  o: FindOptions = {},
): Promise<Record<T, string>> {
  if (o.dir !== undefined) return toolsIn(o.dir, tools);
  const say = o.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const commit = await bundleCommit();
  const cache = llamaCacheDir(commit);
  const src = join(cache, "src");
  const noAmx = await amxOff();
  const build = join(cache, noAmx.length > 0 ? "build-no-amx" : "build");
  const bin = join(build, "bin");
  const missing = tools.filter((t) => !existsSync(join(bin, t)));
  if (missing.length === 0) return toolsIn(bin, tools);

  mkdirSync(cache, { recursive: true });
  const log = join(cache, "build.log");
  say(`llama.cpp ${commit}: building ${missing.join(", ")} in ${build} (minutes; log: ${log})`);
  if (!existsSync(join(src, "CMakeLists.txt"))) await logged("git", ["clone", "-q", LLAMA_BUNDLE, src], log);
  if (!existsSync(join(build, "CMakeCache.txt")))
    await logged("cmake", ["-S", src, "-B", build, ...CMAKE_FLAGS, ...noAmx], log);
  const t0 = performance.now();
  await logged("cmake", ["--build", build, "--target", ...missing, "-j", String(o.jobs ?? 2)], log);
  say(`llama.cpp ${commit}: built in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  return toolsIn(bin, tools);
}
