import { type ChildProcess, spawn } from "node:child_process";
import { resolve } from "node:path";
import { vi } from "vitest";
import { main } from "../../src/cli/main.js";

/** Runs the `spindle` CLI in-process and captures what it writes to stdout and stderr. */
export async function runCli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = "";
  let stderr = "";
  const o = vi.spyOn(process.stdout, "write").mockImplementation((s) => {
    stdout += String(s);
    return true;
  });
  const e = vi.spyOn(process.stderr, "write").mockImplementation((s) => {
    stderr += String(s);
    return true;
  });
  try {
    const code = await main(args);
    return { code, stdout, stderr };
  } finally {
    o.mockRestore();
    e.mockRestore();
  }
}

const ROOT = resolve(import.meta.dirname, "../..");

/** Starts the `spindle` CLI from source as a real process (`node --import tsx src/cli/entry.ts …`), stdout and stderr piped. */
export function spawnCli(args: string[]): ChildProcess {
  return spawn(process.execPath, ["--import", "tsx", "src/cli/entry.ts", ...args], {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "pipe"],
  });
}
