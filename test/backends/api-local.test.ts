import { STORIES_260K, testModel } from "../helpers/models.js";
import { startTestServer } from "../helpers/server.js";
import { apiSuite, MODEL } from "./api-suite.js";

apiSuite({
  backend: "local",
  sameAsLocal: false, // it is the local backend
  start: () =>
    startTestServer({ modelName: MODEL, backend: { kind: "local", modelPath: testModel(STORIES_260K) } }),
});
