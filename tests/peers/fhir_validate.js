#!/usr/bin/env node
// Validates FHIR R4 resources with FHIR.js (npm `fhir`), unexpected properties being
// errors. Reads one JSON value from stdin: a resource, or an array of them; prints
// {"checked": n, "invalid": [{"resource": "Type/id", "messages": [...]}]} and exits 0.
// The module is found under $STRATA_NPM (default /var/tmp/strata-npm).
const path = require("path");
const dir = process.env.STRATA_NPM || "/var/tmp/strata-npm";
const { Fhir } = require(path.join(dir, "node_modules", "fhir"));
const fhir = new Fhir();
let input = "";
process.stdin.on("data", (d) => (input += d));
process.stdin.on("end", () => {
  const value = JSON.parse(input);
  const resources = Array.isArray(value) ? value : [value];
  const invalid = [];
  for (const r of resources) {
    const result = fhir.validate(r, { errorOnUnexpected: true });
    const errors = result.messages.filter((m) => m.severity === "error");
    if (!result.valid || errors.length) {
      invalid.push({ resource: `${r.resourceType}/${r.id}`, messages: errors });
    }
  }
  console.log(JSON.stringify({ checked: resources.length, invalid }));
});
