import { STORIES_260K, testModel } from "../helpers/models.js";
import { startTestServer } from "../helpers/server.js";
import { apiSuite, MODEL } from "./api-suite.js";

// llama.cpp computes; its greedy text must equal the local engine's token for token.
apiSuite({
  backend: "llamacpp",
  sameAsLocal: true,
  start: () =>
    startTestServer({ modelName: MODEL, backend: { kind: "llamacpp", modelPath: testModel(STORIES_260K) } }),
});
