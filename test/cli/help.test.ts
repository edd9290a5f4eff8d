import { describe, expect, it } from "vitest";
import { formatLogLine, resolveLogFormat } from "../../src/cli/log-format.js";
import { runCli } from "../helpers/cli.js";

const COMMANDS = [
  "run",
  "pull",
  "list",
  "show",
  "rm",
  "serve",
  "ps",
  "generate",
  "synth-model",
  "bench",
  "bench-engine",
  "calibrate",
];

describe("--help and --version on every command", () => {
  it.each(COMMANDS)("spindle %s --help describes its flags; --version prints the version", async (cmd) => {
    const help = await runCli([cmd, "--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(new RegExp(`^usage: spindle ${cmd}\\b`));
    // Every flag line carries a description, not only the flag.
    const flagLines = help.stdout.split("\n").filter((l) => /^ {2,6}(-\w, )?--[a-z]/.test(l));
    expect(flagLines.length).toBeGreaterThan(0);
    for (const l of flagLines)
      expect(l, `${cmd}: ${l}`).toMatch(/--[a-z-]+(?:[ =][^\s]+)?\s{2,}\S|\S\s{2,}\S/);
    const version = await runCli([cmd, "--version"]);
    expect(version).toMatchObject({
      code: 0,
      stdout: expect.stringMatching(/^spindle \d+\.\d+\.\d+ \(node v\d+/),
    });
  });

  it("spindle --version, and the command list names every command", async () => {
    expect((await runCli(["--version"])).stdout).toMatch(/^spindle \d+\.\d+\.\d+/);
    const top = await runCli(["--help"]);
    for (const cmd of COMMANDS) expect(top.stdout).toMatch(new RegExp(`\\n  ${cmd} +\\S`));
    const bad = await runCli(["calibrate", "--bogus"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("spindle calibrate: Unknown option '--bogus'");
  });
});

describe("log format", () => {
  it("auto is text on a terminal and JSON when piped; an unknown format is refused", () => {
    expect(resolveLogFormat("auto", { write: () => 0, isTTY: true })).toBe("text");
    expect(resolveLogFormat(undefined, { write: () => 0 })).toBe("json");
    expect(resolveLogFormat("json", { write: () => 0, isTTY: true })).toBe("json");
    expect(() => resolveLogFormat("xml", { write: () => 0 })).toThrow(/unknown --log-format "xml"/);
  });

  it("text is time, level, message and key=value fields, coloured only when asked", () => {
    const time = new Date(2026, 0, 2, 3, 4, 5, 6).getTime();
    const line = JSON.stringify({
      level: 40,
      time,
      pid: 1,
      hostname: "h",
      msg: "slow step",
      ms: 12.5,
      model: "a b",
    });
    expect(formatLogLine(line, false)).toBe('03:04:05.006 WARN  slow step ms=12.5 model="a b"\n');
    const colored = formatLogLine(line, true);
    expect(colored).toContain("\x1b[33mWARN");
    expect(colored.replace(new RegExp(`${String.fromCharCode(27)}\\[\\d+m`, "g"), "")).toBe(
      '03:04:05.006 WARN  slow step ms=12.5 model="a b"\n',
    );
    expect(formatLogLine("not json", false)).toBe("not json\n");
  });
});
