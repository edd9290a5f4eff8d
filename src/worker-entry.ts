import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";

/**
 * The URL to start a worker thread's entry module `name` that sits next to the module at `here`
 * (an import.meta.url). From compiled code: `name.js`. From source (Vitest, tsx): `name.ts`, through
 * a small bootstrap module that registers tsx's loader in the worker first (`--import tsx` in
 * execArgv does not: tsx registers its hooks on the main thread only).
 */
export function workerEntry(here: string, name: string): URL {
  if (!new URL(here).pathname.endsWith(".ts")) return new URL(`./${name}.js`, here);
  const entry = new URL(`./${name}.ts`, here).href;
  const bootstrap = `import { register } from ${JSON.stringify(tsxApi(here))};\nregister();\nawait import(${JSON.stringify(entry)});\n`;
  return new URL(`data:text/javascript,${encodeURIComponent(bootstrap)}`);
}

/** The file URL of tsx's ESM API (`tsx/esm/api`, import condition), resolved from `from`. */
function tsxApi(from: string): string {
  const pkgPath = createRequire(from).resolve("tsx/package.json");
  const pkg = JSON.parse(readFileSync(pkgPath, "utf8")) as {
    exports?: Record<string, { import?: { default?: string } } | string>;
  };
  const api = pkg.exports?.["./esm/api"];
  const rel = (typeof api === "object" ? api.import?.default : undefined) ?? "./dist/esm/api/index.mjs";
  return new URL(rel, pathToFileURL(pkgPath)).href;
}
