import pino, { type Logger } from "pino";
import { SpindleError } from "../errors.js";

/**
 * The server's log lines: pino's JSON lines (one object a line, for log shippers) when the output
 * is piped or `--log-format json`, or, on a terminal or with `--log-format text`, one readable line
 * per entry, coloured on a terminal unless NO_COLOR is set:
 *
 *   14:03:07.412 INFO  ready model=stories260K kernels="wasm kernels (relaxed build), 2 threads"
 *
 * The text form is pino's JSON turned back into `time LEVEL message key=value…` by a small
 * destination stream (no pino-pretty: two dozen lines do it, without its dependency tree).
 */

export type LogFormat = "json" | "text";

export const LOG_FORMATS = ["auto", "json", "text"] as const;

interface Sink {
  write(s: string): unknown;
  isTTY?: boolean;
}

const LEVELS: Record<number, [string, string]> = {
  10: ["TRACE", "\x1b[90m"],
  20: ["DEBUG", "\x1b[36m"],
  30: ["INFO ", "\x1b[32m"],
  40: ["WARN ", "\x1b[33m"],
  50: ["ERROR", "\x1b[31m"],
  60: ["FATAL", "\x1b[35m"],
};
const DIM = "\x1b[2m";
const RESET = "\x1b[0m";
const OMIT = new Set(["level", "time", "msg", "pid", "hostname"]);

/** `auto` → text on a terminal, JSON elsewhere. */
export function resolveLogFormat(format: string | undefined, out: Sink): LogFormat {
  const f = format ?? "auto";
  if (!(LOG_FORMATS as readonly string[]).includes(f)) {
    throw new SpindleError(`unknown --log-format "${f}" (one of ${LOG_FORMATS.join(", ")})`);
  }
  if (f === "auto") return out.isTTY ? "text" : "json";
  return f as LogFormat;
}

function value(v: unknown): string {
  if (typeof v === "string") return /^[^\s"=]+$/.test(v) ? v : JSON.stringify(v);
  return JSON.stringify(v) ?? String(v);
}

/** One pino JSON line as text; a line that is not JSON is passed through. */
export function formatLogLine(line: string, color: boolean): string {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line.endsWith("\n") ? line : `${line}\n`;
  }
  const d = new Date(typeof o.time === "number" ? o.time : Date.now());
  const pad = (n: number, w = 2) => String(n).padStart(w, "0");
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  const [name, code] = LEVELS[o.level as number] ?? [String(o.level).padEnd(5), ""];
  const fields = Object.entries(o)
    .filter(([k]) => !OMIT.has(k))
    .map(([k, v]) => (color ? `${DIM}${k}=${RESET}${value(v)}` : `${k}=${value(v)}`));
  const msg = typeof o.msg === "string" ? o.msg : "";
  const head = color ? `${DIM}${time}${RESET} ${code}${name}${RESET}` : `${time} ${name}`;
  return `${[head, msg, ...fields].filter((s) => s.length > 0).join(" ")}\n`;
}

/** A pino logger writing to `out` (default stdout) in the chosen format. */
export function createLogger(opts: { level: string; format?: string; out?: Sink }): Logger {
  const out = opts.out ?? process.stdout;
  const format = resolveLogFormat(opts.format, out);
  if (format === "json")
    return pino({ level: opts.level }, opts.out ? { write: (s: string) => out.write(s) } : undefined);
  const color = out.isTTY === true && process.env.NO_COLOR === undefined;
  return pino({ level: opts.level }, { write: (s: string) => out.write(formatLogLine(s, color)) });
}
