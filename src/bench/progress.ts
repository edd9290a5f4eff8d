import { formatDuration, type ProgressStream, writeStatusLine } from "../progress.js";
import type { DriveProgress } from "./load.js";

/**
 * The benchmark's progress line on stderr:
 *
 *   base  concurrency 4   37/100 [#######.............]  2 failed  3 in flight  4.1 req/s  0:09
 *
 * On a TTY it redraws in place (at most every 100 ms); elsewhere it prints a
 * line at each further 25% so logs stay short.
 */
export class BenchProgress {
  private readonly stream: ProgressStream;
  private readonly tty: boolean;
  private readonly t0: number;
  private last: DriveProgress | undefined;
  private lastDraw = Number.NEGATIVE_INFINITY;
  private lastStep = -1;
  private closed = false;

  constructor(
    private readonly label: string,
    stream: ProgressStream = process.stderr,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.stream = stream;
    this.tty = stream.isTTY === true;
    this.t0 = now();
  }

  update(p: DriveProgress): void {
    if (this.closed) return;
    this.last = p;
    const t = this.now();
    if (this.tty) {
      if (t - this.lastDraw >= 100 || p.done === p.total) this.draw(t);
      return;
    }
    const step = p.total > 0 ? Math.floor((p.done / p.total) * 4) : 0;
    if (step > this.lastStep) {
      this.lastStep = step;
      this.draw(t);
    }
  }

  done(): void {
    if (this.closed) return;
    if (this.tty && this.last) {
      this.draw(this.now());
      this.stream.write("\n");
    }
    this.closed = true;
  }

  line(t: number = this.now()): string {
    const p = this.last ?? { total: 0, sent: 0, done: 0, failed: 0, inFlight: 0 };
    const el = (t - this.t0) / 1000;
    const frac = p.total > 0 ? p.done / p.total : 0;
    const w = 20;
    const filled = Math.round(frac * w);
    const parts = [
      this.label,
      `${String(p.done).padStart(String(p.total).length)}/${p.total} [${"#".repeat(filled)}${".".repeat(w - filled)}]`,
    ];
    if (p.failed) parts.push(`${p.failed} failed`);
    parts.push(`${p.inFlight} in flight`);
    parts.push(`${el > 0 ? (p.done / el).toFixed(1) : "0.0"} req/s`);
    parts.push(formatDuration(el));
    return parts.join("  ");
  }

  private draw(t: number): void {
    this.lastDraw = t;
    writeStatusLine(this.stream, this.tty, this.line(t));
  }
}
