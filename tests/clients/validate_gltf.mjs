// The Khronos glTF validator on one file: prints its JSON report (issues.numErrors, messages) to stdout.
// Usage: node validate_gltf.mjs FILE.glb
import { readFileSync } from "node:fs";
import validator from "gltf-validator";

const path = process.argv[2];
const report = await validator.validateBytes(new Uint8Array(readFileSync(path)), { uri: path, maxIssues: 200 });
process.stdout.write(JSON.stringify(report));
