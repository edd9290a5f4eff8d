import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { MessageReader } from "../../src/cli/run.js";
import { runCli } from "../helpers/cli.js";
import { STORIES_260K } from "../helpers/models.js";

/**
 * `spindle run`: one-shot answers in process, and the interactive chat as a user gets it, through a
 * real pseudo-terminal: util-linux `script` runs `spindle run` (from source) on a pty, and the
 * test types into it (`\r` is Enter, `\x03` Ctrl-C, `\x04` Ctrl-D) and reads what the terminal
 * shows. stories260K has no chat template, so turns are rendered in ChatML, as every chat route does.
 */

const ROOT = resolve(import.meta.dirname, "../..");
const hasScript = (() => {
  try {
    execFileSync("script", ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
})();

const ANSI = new RegExp(`${String.fromCharCode(27)}\\[[0-9;?]*[A-Za-z]`, "g");

/** Terminal output without escape sequences and carriage returns. */
const plain = (s: string) => s.replace(ANSI, "").replace(/\r+\n/g, "\n").replace(/\r/g, "");

interface Pty {
  proc: ChildProcess;
  /** Everything the terminal showed so far, escape sequences removed. */
  screen(): string;
  type(s: string): void;
  /** Waits until the screen after `from` matches `re`; returns the screen's length then. */
  waitFor(re: RegExp, from?: number): Promise<number>;
  exit: Promise<number | null>;
}

function runOnPty(args: string[]): Pty {
  const cmd = [process.execPath, "--import", "tsx", "src/cli/entry.ts", "run", ...args]
    .map((a) => `'${a.replace(/'/g, "'\\''")}'`)
    .join(" ");
  const proc = spawn("script", ["-qfec", cmd, "/dev/null"], { cwd: ROOT, stdio: ["pipe", "pipe", "pipe"] });
  let raw = "";
  proc.stdout!.on("data", (d) => (raw += d));
  proc.stderr!.on("data", (d) => (raw += d));
  const exit = new Promise<number | null>((r) => proc.once("exit", (code) => r(code)));
  return {
    proc,
    screen: () => plain(raw),
    type: (s) => proc.stdin!.write(s),
    exit,
    async waitFor(re, from = 0) {
      for (let waited = 0; waited < 45_000; waited += 25) {
        const s = plain(raw);
        if (re.test(s.slice(from))) return s.length;
        await new Promise((r) => setTimeout(r, 25));
      }
      throw new Error(`the terminal never showed ${re}; it shows:\n${plain(raw).slice(from)}`);
    },
  };
}

/** The `(prompt N tokens, C cached; answer M tokens, … tok/s; reason)` line --verbose prints. */
function stats(s: string): { prompt: number; cached: number; answer: number; reason: string }[] {
  return [
    ...s.matchAll(/\(prompt (\d+) tokens, (\d+) cached; answer (\d+) tokens, \S+ tok\/s; (\w+)\)/g),
  ].map((m) => ({ prompt: Number(m[1]), cached: Number(m[2]), answer: Number(m[3]), reason: m[4]! }));
}

describe("spindle run, one-shot", () => {
  it("prints the answer to the prompt, rendered with the chat template: what generate --chat prints", async () => {
    const run = await runCli(["run", STORIES_260K, "Once upon a time", "--temperature", "0", "-n", "40"]);
    expect(run.code).toBe(0);
    const gen = await runCli([
      "generate",
      "-m",
      STORIES_260K,
      "--chat",
      "Once upon a time",
      "--max-tokens",
      "40",
    ]);
    expect(gen.code).toBe(0);
    expect(run.stdout.length).toBeGreaterThan(40);
    expect(run.stdout).toBe(gen.stdout);
  });

  it("takes the prompt from stdin when it is piped, as `echo … | ollama run` does", async () => {
    const args = ["run", STORIES_260K, "--temperature", "0", "-n", "24"];
    const piped = execFileSync(process.execPath, ["--import", "tsx", "src/cli/entry.ts", ...args], {
      cwd: ROOT,
      input: "Once upon a time\n",
      encoding: "utf8",
    });
    const inline = await runCli([...args, "Once upon a time"]);
    expect(inline.stdout.length).toBeGreaterThan(24);
    expect(piped).toBe(inline.stdout);
  });

  it("a model that is nowhere is one line, exit 1", async () => {
    const r = await runCli(["run", "no-such-model.gguf", "hi"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^spindle: model "no-such-model\.gguf" not found/);
  });
});

describe("spindle run, the chat's input", () => {
  it('joins a """ block into one message and passes other lines through', () => {
    const r = new MessageReader();
    expect(r.push("  hello  ")).toBe("hello");
    expect(r.push('"""one line"""')).toBe("one line");
    expect(r.push('"""first')).toBeUndefined();
    expect(r.inBlock).toBe(true);
    expect(r.push("  second")).toBeUndefined();
    expect(r.push('third"""')).toBe("first\n  second\nthird");
    expect(r.inBlock).toBe(false);
    expect(r.push('"""')).toBeUndefined();
    r.reset();
    expect(r.push("/bye")).toBe("/bye");
  });
});

describe.skipIf(!hasScript)("spindle run, interactive on a pseudo-terminal", () => {
  it("streams answers and keeps the conversation; a multi-line message; commands; Ctrl-C at the prompt; Ctrl-D exits", async () => {
    const t = runOnPty([STORIES_260K, "--temperature", "0", "--verbose", "--max-tokens", "24"]);
    try {
      let at = await t.waitFor(/>>> $/);
      t.type("Once upon a time\r");
      at = await t.waitFor(/tok\/s; \w+\)\n\n>>> $/, at);
      // A multi-line message: the continuation prompt, then one answer for the whole block.
      t.type('"""Lily and\r');
      at = await t.waitFor(/\.\.\. $/, at);
      t.type('Tom went"""\r');
      at = await t.waitFor(/tok\/s; \w+\)\n\n>>> $/, at);
      t.type("/nope\r");
      at = await t.waitFor(/Unknown command '\/nope'\. Type \/\? for help\n>>> $/, at);
      // Ctrl-C at an empty prompt only says how to leave.
      t.type("\x03");
      at = await t.waitFor(/Use Ctrl \+ d or \/bye to exit\.\n>>> $/, at);
      t.type("\x04");
      expect(await t.exit).toBe(0);

      // The weights were read behind a progress bar on the terminal.
      expect(t.screen()).toMatch(/loading stories260K\.gguf\s+100% \[#+\]/);
      // run's default context (4096, at most the model's 2048) is no --ctx-size to warn about.
      expect(t.screen()).not.toContain("--ctx-size");
      const s = stats(t.screen());
      expect(s).toHaveLength(2);
      expect(s.map((x) => x.answer)).toEqual([24, 24]);
      // The second turn's prompt holds the first turn, question and answer (the history is kept),
      // and the engine's prefix cache reuses their KV.
      expect(s[1]!.prompt).toBeGreaterThan(s[0]!.prompt + 24);
      expect(s[1]!.cached).toBeGreaterThanOrEqual(16);
    } finally {
      t.proc.kill();
    }
  }, 120_000);

  it("Ctrl-C stops the answer being written, not the program; /bye exits", async () => {
    const t = runOnPty([STORIES_260K, "--temperature", "0", "--verbose"]);
    try {
      let at = await t.waitFor(/>>> $/);
      t.type("Tell me a story\r");
      at = await t.waitFor(/Tell me a story\n(.*\n)*\S/, at);
      t.type("\x03");
      at = await t.waitFor(/; abort\)\n\n>>> $/, at);
      t.type("/bye\r");
      expect(await t.exit).toBe(0);
      const [s] = stats(t.screen());
      expect(s!.reason).toBe("abort");
      expect(s!.answer).toBeLessThan(2048 - s!.prompt);
    } finally {
      t.proc.kill();
    }
  }, 120_000);
});
