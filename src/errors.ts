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
