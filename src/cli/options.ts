import { type ParseArgsConfig, parseArgs } from "node:util";
import { spindleVersion } from "../server/routes/ops.js";

/**
 * One place for a subcommand's options and its help: each option is declared once, with the
 * sentence that describes it, and both `node:util` parseArgs' configuration and the `--help` text
 * are made from that declaration. `--help`/`-h` and `--version` are added to every command.
 *
 *   const SPEC = command({ name: "ps", usage: "spindle ps [--host H] [--port P]", summary: "…",
 *     options: { port: { type: "string", arg: "PORT", description: "the server's port (default 8000)" } } });
 *   const parsed = SPEC.parse(args);          // undefined: --help or --version was answered
 *
 * Commands whose usage is a hand-written page (serve, bench) keep it, and still answer
 * --version through main.ts.
 */

export interface OptionSpec {
  type: "string" | "boolean";
  short?: string;
  multiple?: boolean;
  default?: string | boolean;
  /** The value's placeholder in the help, e.g. "N" or "URL" (string options). */
  arg?: string;
  /** One sentence: what the option does and its default. */
  description: string;
}

export interface CommandSpec<O extends Record<string, OptionSpec>> {
  name: string;
  /** The synopsis line(s) after "usage: ". */
  usage: string;
  /** What the command does, a few sentences. */
  summary: string;
  options: O;
  /** Lines after the options (examples, environment). */
  footer?: string;
  allowPositionals?: boolean;
}

type Values<O extends Record<string, OptionSpec>> = {
  [K in keyof O]: O[K]["type"] extends "boolean"
    ? boolean | undefined
    : O[K] extends { multiple: true }
      ? string[] | undefined
      : O[K] extends { default: string }
        ? string
        : string | undefined;
};

export interface Command<O extends Record<string, OptionSpec>> {
  readonly spec: CommandSpec<O>;
  /** The --help text. */
  help(): string;
  /**
   * Parses `args`; answers --help and --version on stdout and returns undefined for them.
   * An unknown option or a missing value throws parseArgs' ERR_PARSE_ARGS_* (main.ts: exit 2).
   */
  parse(
    args: string[],
    out?: { write(s: string): unknown },
  ): { values: Values<O>; positionals: string[] } | undefined;
}

const COMMON: Record<string, OptionSpec> = {
  help: { type: "boolean", short: "h", description: "show this help and exit" },
  version: { type: "boolean", description: "print Spindle's version and exit" },
};

/** `spindle 0.1.0 (node v24.x)`: what --version prints. */
export function versionLine(): string {
  return `spindle ${spindleVersion()} (node ${process.version})`;
}

/** Two columns: flags, then the description wrapped under its own column. */
export function formatOptions(options: Record<string, OptionSpec>): string {
  const rows = Object.entries(options).map(([name, o]) => {
    const flag = `${o.short ? `-${o.short}, ` : "    "}--${name}${o.type === "string" ? ` ${o.arg ?? "VALUE"}` : ""}`;
    const def = o.default !== undefined && o.default !== false ? ` (default ${String(o.default)})` : "";
    return [flag, `${o.description}${def}`] as const;
  });
  const width = Math.min(32, Math.max(...rows.map(([f]) => f.length)) + 2);
  const wrapAt = 100 - width - 2;
  return rows
    .map(([flag, desc]) => {
      const lines = wrap(desc, wrapAt);
      const first =
        flag.length + 2 > width ? `  ${flag}\n${" ".repeat(width + 2)}` : `  ${flag.padEnd(width)}`;
      return first + lines.join(`\n${" ".repeat(width + 2)}`);
    })
    .join("\n");
}

/** Lines longer than the terminal's usual 100 columns are wrapped; shorter ones are kept as written. */
function paragraph(text: string): string {
  return text
    .split("\n")
    .flatMap((l) => (l.length > 100 ? wrap(l, 100) : [l]))
    .join("\n");
}

function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(/\s+/)) {
    if (line.length > 0 && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else {
      line = line.length > 0 ? `${line} ${word}` : word;
    }
  }
  if (line.length > 0) lines.push(line);
  return lines;
}

export function command<O extends Record<string, OptionSpec>>(spec: CommandSpec<O>): Command<O> {
  const all = { ...spec.options, ...COMMON };
  const help = () =>
    `usage: ${spec.usage}\n\n${paragraph(spec.summary)}\n\n${formatOptions(all)}${spec.footer ? `\n\n${spec.footer}` : ""}`;
  return {
    spec,
    help,
    parse(args, out = process.stdout) {
      const options = Object.fromEntries(
        Object.entries(all).map(([k, o]) => [
          k,
          {
            type: o.type,
            ...(o.short ? { short: o.short } : {}),
            ...(o.multiple ? { multiple: true } : {}),
            ...(o.default !== undefined ? { default: o.default } : {}),
          },
        ]),
      );
      const { values, positionals } = parseArgs<ParseArgsConfig>({
        args,
        options: options as ParseArgsConfig["options"],
        allowPositionals: spec.allowPositionals ?? false,
        strict: true,
      });
      if (values.help) {
        out.write(`${help()}\n`);
        return undefined;
      }
      if (values.version) {
        out.write(`${versionLine()}\n`);
        return undefined;
      }
      return { values: values as unknown as Values<O>, positionals };
    },
  };
}
