/**
 * An error a user can act on: its message is one line that names the problem
 * (a bad file, a missing model, an unsupported type). The CLI prints it without a stack.
 */
export class SpindleError extends Error {
  constructor(
    message: string,
    readonly code = "spindle_error",
  ) {
    super(message);
    this.name = "SpindleError";
  }
}

/** Error in a model file: names the file and what is wrong with it. */
export class ModelFileError extends SpindleError {
  constructor(
    readonly file: string,
    problem: string,
  ) {
    super(`${file}: ${problem}`, "model_file_error");
    this.name = "ModelFileError";
  }
}

/** The first line of an error's message (its name when the message is empty). */
export function oneLine(err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err);
  return msg.split("\n", 1)[0]!.trim() || (err instanceof Error ? err.name : "unknown error");
}

/** What an AbortSignal's reason says, as the message of the request it aborted. */
export function abortMessage(reason: unknown): string {
  if (typeof reason === "string" && reason.length > 0) return reason;
  if (reason instanceof Error && reason.name !== "AbortError") return oneLine(reason);
  return "aborted";
}
