// Validate one .glb/.gltf file with the Khronos glTF validator (npm package gltf-validator) and print a
// one-line JSON summary: {"numErrors": N, "numWarnings": N, "errors": ["CODE pointer message", ...]}.
// Usage: NODE_PATH=<prefix>/node_modules node tests/gltf_validate.cjs FILE
"use strict";
const fs = require("fs");
const path = require("path");
const validator = require("gltf-validator");

const file = process.argv[2];
if (!file) {
  console.error("usage: node gltf_validate.cjs FILE");
  process.exit(2);
}
const bytes = new Uint8Array(fs.readFileSync(file));
validator
  .validateBytes(bytes, { uri: path.basename(file), maxIssues: 200 })
  .then((report) => {
    const errors = report.issues.messages
      .filter((message) => message.severity === 0)
      .map((message) => `${message.code} ${message.pointer || ""} ${message.message}`);
    console.log(JSON.stringify({ numErrors: report.issues.numErrors, numWarnings: report.issues.numWarnings, errors }));
  })
  .catch((error) => {
    console.error(`validation failed: ${error}`);
    process.exit(2);
  });
