/**
 * Progress lines for stderr, without dependencies (used by the CLI, by `ensureModel` in src/model and by
 * `spindle bench`), and a download progress bar:
 *
 *   smollm2.gguf  42% [########............]  58.3/138.1 MiB  12.4 MiB/s  ETA 0:06
 *
 * On a TTY it redraws in place with `\r` (at most every 100 ms); elsewhere (logs, CI)
 * it prints a line only when another 10% is done, or every 10 s when the size is unknown.
 */

export interface ProgressStream {
  write(s: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

export interface ProgressBarOptions {
  /** Shown before the bar, e.g. the file name. */
  label?: string;
  /** Default process.stderr. */
  stream?: ProgressStream;
  /** Clock in ms, for tests. */
  now?: () => number;
}

const MiB = 1024 * 1024;
const BAR_WIDTH = 20;
const TTY_INTERVAL_MS = 100;
const LOG_INTERVAL_MS = 10_000;

/** `m:ss`, or `h:mm:ss` from an hour. */
/** Writes a status line: redrawn in place (cut to the terminal width) on a TTY, one line per call otherwise. */
export function writeStatusLine(stream: ProgressStream, tty: boolean, text: string): void {
  if (tty) {
    const cols = stream.columns;
    stream.write(`\r${cols && text.length >= cols ? text.slice(0, cols - 1) : text}\x1b[K`);
  } else {
    stream.write(`${text}\n`);
  }
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "--:--";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

export function formatMiB(bytes: number): string {
  return (bytes / MiB).toFixed(1);
}

export class ProgressBar {
  private readonly stream: ProgressStream;
  private readonly tty: boolean;
  private readonly now: () => number;
  private readonly label: string;
  private startAt: number | undefined;
  private startBytes = 0;
  private received = 0;
  private total: number | undefined;
  private lastDrawAt = Number.NEGATIVE_INFINITY;
  private lastStep = -1;
  private printedBytes = -1;
  private drawn = false;
  private finished = false;

  constructor(opts: ProgressBarOptions = {}) {
    this.stream = opts.stream ?? process.stderr;
    this.tty = this.stream.isTTY === true;
    this.now = opts.now ?? (() => performance.now());
    this.label = opts.label ?? "";
  }

  /** Reports bytes done so far (a resumed download starts above zero) and the total when known. */
  update(received: number, total?: number): void {
    if (this.finished) return;
    const t = this.now();
    if (this.startAt === undefined) {
      this.startAt = t;
      this.startBytes = received;
    }
    this.received = received;
    if (total !== undefined) this.total = total;
    const complete = this.total !== undefined && received >= this.total;

    if (this.tty) {
      if (complete || t - this.lastDrawAt >= TTY_INTERVAL_MS) this.draw(t);
      return;
    }
    if (this.total !== undefined && this.total > 0) {
      const step = Math.floor((Math.min(received, this.total) / this.total) * 10);
      if (step > this.lastStep) {
        this.lastStep = step;
        this.draw(t);
      }
    } else if (t - this.lastDrawAt >= LOG_INTERVAL_MS) {
      this.draw(t);
    }
  }

  /** Ends the bar: the final state is shown and the line is closed. Nothing is printed if nothing was reported. */
  done(): void {
    if (this.finished) return;
    this.finished = true;
    if (this.startAt === undefined) return;
    if (this.tty) {
      this.draw(this.now());
      this.stream.write("\n");
    } else if (this.printedBytes !== this.received) {
      this.draw(this.now());
    }
  }

  /** The status line for the current state (without `\r` or newline). */
  line(t: number = this.now()): string {
    const elapsed = (t - (this.startAt ?? t)) / 1000;
    const speed = elapsed > 0 ? (this.received - this.startBytes) / elapsed : undefined;
    const parts: string[] = [];
    if (this.label) parts.push(this.label);
    const total = this.total;
    if (total !== undefined && total > 0) {
      const frac = Math.min(1, this.received / total);
      const filled = Math.round(frac * BAR_WIDTH);
      parts.push(
        `${String(Math.floor(frac * 100)).padStart(3)}% [${"#".repeat(filled)}${".".repeat(BAR_WIDTH - filled)}]`,
      );
      parts.push(`${formatMiB(this.received)}/${formatMiB(total)} MiB`);
    } else {
      parts.push(`${formatMiB(this.received)} MiB`);
    }
    parts.push(speed !== undefined ? `${formatMiB(speed)} MiB/s` : "-- MiB/s");
    if (total !== undefined && total > 0) {
      const left = Math.max(0, total - this.received);
      const eta = left === 0 ? 0 : speed ? left / speed : Number.NaN;
      parts.push(`ETA ${formatDuration(eta)}`);
    }
    return parts.join("  ");
  }

  private draw(t: number): void {
    this.lastDrawAt = t;
    this.printedBytes = this.received;
    writeStatusLine(this.stream, this.tty, this.line(t));
    this.drawn = true;
  }

  /** Whether anything has been written. */
  get started(): boolean {
    return this.drawn;
  }
}
